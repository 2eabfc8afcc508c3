//! The ADDRESS column of host-type rules: keywords, networks (CIDR or address + netmask) and
//! host names (or `.domain` suffixes).

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone)]
pub enum Address {
    All,
    SameHost,
    SameNet,
    /// `addr/prefix`, or the two-column `addr netmask` form (kept so it renders as written).
    Net {
        addr: IpAddr,
        prefix: u8,
        netmask_form: bool,
    },
    /// A host name, or a `.suffix` matching every name under a domain.
    Host(String),
}

impl Address {
    /// Parses a user-supplied address: a keyword, a CIDR network, a bare IP (= a single host,
    /// /32 or /128), or a host name. It is one token: text after a blank is refused, never
    /// dropped (`0.0.0.0/0 trust` is not an address).
    pub fn parse_user(s: &str) -> Result<Address, String> {
        if s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if s.contains(|c: char| c.is_whitespace() || c.is_control()) {
            let hint = match s.split_whitespace().collect::<Vec<_>>()[..] {
                [ip, mask] if ip.parse::<IpAddr>().is_ok() && mask.parse::<IpAddr>().is_ok() => {
                    format!(
                        "; write the network in CIDR form ({ip}/{})",
                        netmask_prefix(mask, &ip.parse().expect("checked"))
                            .map(|p| p.to_string())
                            .unwrap_or_else(|_| "prefix".into())
                    )
                }
                _ => String::new(),
            };
            return Err(format!(
                "an address is one token without blanks (a CIDR network, an IP address, a host name, a .domain suffix, all, samehost or samenet){hint}"
            ));
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            let prefix = max_prefix(&addr);
            return Ok(Address::Net {
                addr,
                prefix,
                netmask_form: false,
            });
        }
        match Address::parse_file(s, false, None)? {
            (Address::Host(h), _) if !valid_hostname(&h) => Err(
                "expected a CIDR network (10.0.0.0/8), an IP address, a host name, \
                 a .domain suffix, all, samehost or samenet"
                    .into(),
            ),
            (a, _) => Ok(a),
        }
    }

    /// Parses the file's ADDRESS field (and the netmask field when the address is a bare IP).
    /// Returns the address and whether a netmask field was consumed.
    pub(crate) fn parse_file(
        value: &str,
        quoted: bool,
        next: Option<&str>,
    ) -> Result<(Address, bool), String> {
        if !quoted {
            match value {
                "all" => return Ok((Address::All, false)),
                "samehost" => return Ok((Address::SameHost, false)),
                "samenet" => return Ok((Address::SameNet, false)),
                _ => {}
            }
        }
        if let Some((ip, len)) = value.split_once('/') {
            let addr: IpAddr = ip
                .parse()
                .map_err(|_| format!("invalid IP address \"{ip}\""))?;
            let prefix = parse_prefix(len, &addr)?;
            return Ok((
                Address::Net {
                    addr,
                    prefix,
                    netmask_form: false,
                },
                false,
            ));
        }
        if let Ok(addr) = value.parse::<IpAddr>() {
            let mask = next.ok_or("end-of-line before netmask specification")?;
            let prefix = netmask_prefix(mask, &addr)?;
            return Ok((
                Address::Net {
                    addr,
                    prefix,
                    netmask_form: true,
                },
                true,
            ));
        }
        Ok((Address::Host(value.to_string()), false))
    }

    /// Text for the file (one or two columns).
    pub fn render(&self) -> String {
        match self {
            Address::All => "all".into(),
            Address::SameHost => "samehost".into(),
            Address::SameNet => "samenet".into(),
            Address::Net {
                addr,
                prefix,
                netmask_form: false,
            } => format!("{addr}/{prefix}"),
            Address::Net {
                addr,
                prefix,
                netmask_form: true,
            } => {
                format!("{addr}  {}", prefix_to_netmask(addr, *prefix))
            }
            Address::Host(h) => h.clone(),
        }
    }

    /// The masked network, so `10.0.0.1/8` and `10.0.0.0 255.0.0.0` are the same address.
    fn network(&self) -> Option<(IpAddr, u8)> {
        match self {
            Address::Net { addr, prefix, .. } => Some((mask(addr, *prefix), *prefix)),
            _ => None,
        }
    }

    /// Same set of clients, as PostgreSQL would match them.
    pub fn same_as(&self, other: &Address) -> bool {
        match (self, other) {
            (Address::All, Address::All)
            | (Address::SameHost, Address::SameHost)
            | (Address::SameNet, Address::SameNet) => true,
            (Address::Host(a), Address::Host(b)) => a.eq_ignore_ascii_case(b),
            (a @ Address::Net { .. }, b @ Address::Net { .. }) => a.network() == b.network(),
            _ => false,
        }
    }

    /// True when every client matched by `other` is matched by `self`.
    pub fn covers(&self, other: &Address) -> bool {
        if self.same_as(other) {
            return true;
        }
        match (self, other) {
            (Address::All, _) => true,
            (Address::Net { .. }, Address::Net { .. }) => {
                let (na, pa) = self.network().expect("net");
                let (nb, pb) = other.network().expect("net");
                pa <= pb && mask(&nb, pa) == na
            }
            (Address::Host(a), Address::Host(b)) if a.starts_with('.') => {
                b.to_ascii_lowercase().ends_with(&a.to_ascii_lowercase())
            }
            _ => false,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

fn max_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn parse_prefix(len: &str, addr: &IpAddr) -> Result<u8, String> {
    match len.parse::<u8>() {
        Ok(p) if p <= max_prefix(addr) && !len.starts_with('+') => Ok(p),
        _ => Err(format!(
            "invalid CIDR mask in address \"{addr}/{len}\" (expected 0 to {})",
            max_prefix(addr)
        )),
    }
}

fn netmask_prefix(mask_text: &str, addr: &IpAddr) -> Result<u8, String> {
    let m: IpAddr = mask_text
        .parse()
        .map_err(|_| format!("invalid IP mask \"{mask_text}\""))?;
    if m.is_ipv4() != addr.is_ipv4() {
        return Err("IP address and mask do not match".into());
    }
    let bits = bits(&m);
    let ones = bits.leading_ones();
    if bits.count_ones() != ones {
        return Err(format!("netmask \"{mask_text}\" is not contiguous"));
    }
    // IPv4 masks sit in the top 32 bits, so the count of leading ones is the prefix length.
    Ok(ones as u8)
}

/// Address bits left-aligned in a u128 (IPv4 in the top 32 bits).
fn bits(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)) << 96,
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

fn from_bits(template: &IpAddr, b: u128) -> IpAddr {
    match template {
        IpAddr::V4(_) => IpAddr::V4(((b >> 96) as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(b.into()),
    }
}

fn mask(a: &IpAddr, prefix: u8) -> IpAddr {
    let m = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    };
    from_bits(a, bits(a) & m)
}

fn prefix_to_netmask(addr: &IpAddr, prefix: u8) -> IpAddr {
    let m = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    };
    from_bits(addr, m)
}

/// Host names as PostgreSQL resolves them: DNS labels, optionally starting with a dot.
fn valid_hostname(s: &str) -> bool {
    let name = s.strip_prefix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse_user(s).unwrap()
    }

    #[test]
    fn bare_ip_is_a_single_host() {
        assert_eq!(a("10.1.2.3").render(), "10.1.2.3/32");
        assert_eq!(a("::1").render(), "::1/128");
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "300.1.1.1/8",
            "bad host",
            "-x.com",
            "",
            "0.0.0.0/0 trust",
            "10.0.0.0/8\tmd5",
            "10.0.0.1 255.255.0.0",
            " 10.0.0.1",
            "\"db.example.com\"",
        ] {
            assert!(Address::parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netmask_form_equals_cidr() {
        let (nm, used) = Address::parse_file("10.0.0.1", false, Some("255.255.0.0")).unwrap();
        assert!(used);
        assert!(nm.same_as(&a("10.0.0.0/16")));
        assert_eq!(nm.render(), "10.0.0.1  255.255.0.0");
        assert!(Address::parse_file("10.0.0.1", false, Some("255.0.255.0")).is_err());
        assert!(Address::parse_file("10.0.0.1", false, None).is_err());
    }

    #[test]
    fn coverage() {
        assert!(a("10.0.0.0/8").covers(&a("10.1.2.3")));
        assert!(!a("10.1.2.3").covers(&a("10.0.0.0/8")));
        assert!(a("0.0.0.0/0").covers(&a("192.168.1.0/24")));
        assert!(!a("0.0.0.0/0").covers(&a("::1")));
        assert!(a("all").covers(&a("db.example.com")));
        assert!(a(".example.com").covers(&a("db.example.com")));
        assert!(!a("samenet").covers(&a("10.0.0.1")));
    }
}
