#!/bin/sh
# lab-ca.sh DIR HOST [IP...]: a throw-away CA in DIR (made once) issues HOST a certificate for
# its name (and the IP addresses given) with serverAuth and clientAuth, as pgBackRest's and
# etcd's TLS servers and clients need. For labs and tests only: real hosts get certificates
# from their own CA.
set -eu
dir=$1 host=$2
shift 2
san="DNS:$host"
for ip in "$@"; do san="$san,IP:$ip"; done
umask 077
mkdir -p "$dir"
cd "$dir"
if [ ! -f ca.crt ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.crt.tmp -days 3650 -subj "/CN=pgshift lab CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
    mv ca.crt.tmp ca.crt
fi
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$host.key" -out "$host.csr" -subj "/CN=$host" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' "$san" >"$host.ext"
openssl x509 -req -in "$host.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$host.ext" -out "$host.crt.tmp" 2>/dev/null
rm -f "$host.csr" "$host.ext"
mv "$host.crt.tmp" "$host.crt"
