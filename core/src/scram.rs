//! SCRAM-SHA-256 password verifiers, as PostgreSQL stores them in `pg_authid.rolpassword`:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802/7677).
//!
//! Verifiers are made on the managed host (postgres-protocol: random salt, 4096 iterations), so
//! the plaintext never reaches the server, its logs or pg_stat_activity. Checking a plaintext
//! against a stored verifier makes "password unchanged" detectable without rewriting it (a new
//! salt every run would never be idempotent).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "SCRAM-SHA-256$";

/// A new verifier for `password` with a random salt.
pub fn make_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// True when `s` has the shape of a SCRAM-SHA-256 verifier (so it is stored as given).
pub fn is_verifier(s: &str) -> bool {
    Verifier::parse(s).is_some()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Verifier {
    pub fn parse(s: &str) -> Option<Verifier> {
        let rest = s.strip_prefix(PREFIX)?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let v = Verifier {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored).ok()?,
            server_key: STANDARD.decode(server).ok()?,
        };
        (v.stored_key.len() == 32 && v.server_key.len() == 32 && !v.salt.is_empty()).then_some(v)
    }

    /// Whether `password` is the one this verifier was made from (constant-time compare).
    pub fn verifies(&self, password: &str) -> bool {
        let salted = hi(&normalize(password), &self.salt, self.iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let server_key = hmac(&salted, b"Server Key");
        bool::from(
            stored_key.as_slice().ct_eq(&self.stored_key) & server_key.ct_eq(&self.server_key),
        )
    }
}

/// SASLprep when the password allows it, else the raw bytes: what PostgreSQL and libpq do.
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: RFC 5802's Hi(). The keyed HMAC state is made
/// once and cloned for each of the (4,096) rounds: keying hashes the key's two pads, which
/// would double the work of every round.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let keyed = Hmac::<Sha256>::new_from_slice(password).expect("HMAC takes any key length");
    let round = |msg: &[u8]| -> [u8; 32] {
        let mut m = keyed.clone();
        m.update(msg);
        m.finalize().into_bytes().into()
    };
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = round(&block);
    let mut out = u;
    for _ in 1..iterations {
        u = round(&u);
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by PostgreSQL 15: SET password_encryption = 'scram-sha-256';
    // CREATE ROLE t PASSWORD 'correct horse'; SELECT rolpassword FROM pg_authid WHERE rolname='t';
    const FROM_POSTGRES: &str = "SCRAM-SHA-256$4096:tAWbWynUw9IYhNPw9YikgA==$ojKD2sVvJmBvGQ1YL5MplMD/xu9uJvI4etXW3g22Ogc=:RCDNG4hsGueOsVNRnInxUJG35TWeGb1adJSXYN39Lu0=";

    #[test]
    fn verifies_our_own_verifiers() {
        let v = make_verifier("s3cret pw");
        assert!(is_verifier(&v));
        let parsed = Verifier::parse(&v).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert!(parsed.verifies("s3cret pw"));
        assert!(!parsed.verifies("s3cret pW"));
        assert_ne!(make_verifier("s3cret pw"), v, "random salt");
    }

    #[test]
    fn saslprep_applies() {
        // U+00A0 (no-break space) maps to a plain space under SASLprep.
        let v = Verifier::parse(&make_verifier("a\u{a0}b")).unwrap();
        assert!(v.verifies("a b"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$4096:c2FsdA==$YQ==:Yg==",
            "SCRAM-SHA-256$x:c2FsdA==$a:b",
            "SCRAM-SHA-256$0:c2FsdA==$a:b",
        ] {
            assert!(!is_verifier(bad), "{bad}");
        }
    }

    #[test]
    fn postgres_made_vector() {
        let v = Verifier::parse(FROM_POSTGRES).expect("PostgreSQL's verifier parses");
        assert_eq!(v.iterations, 4096);
        assert!(v.verifies("correct horse"));
        assert!(!v.verifies("correct horse "));
    }
}
