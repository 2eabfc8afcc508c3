//! The TLS block both roles share: one certificate per host serves as pgBackRest's TLS server
//! AND as its client certificate towards the other side, so it needs both usages; peers find
//! it by host name; the key must be readable by the pgBackRest user and by nobody else.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use pgshift_core::cert::{self, Requirements};
use pgshift_core::process::Owner;
use pgshift_core::userfile::UserFile;

use super::Tls;
use crate::protocol::{Context, Failure};

/// The checked TLS block: the port as a port and this host's name in the certificate.
pub struct CheckedTls<'a> {
    pub tls: &'a Tls,
    pub port: u16,
}

/// Checks the block; warns when the certificate's common name is not the host name, since
/// the other side's `tls-server-auth` accepts clients by common name and defaults to it.
pub fn check<'a>(
    ctx: &mut Context,
    tls: &'a Tls,
    owner: &Owner,
) -> Result<CheckedTls<'a>, Failure> {
    let port = u16::try_from(tls.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("tls.port {} is not a TCP port", tls.port))?;
    // Regular files only, bounded: a FIFO must not hang the task.
    let read = |option: &'static str, path: &Path| -> Result<Vec<u8>, Failure> {
        Ok(UserFile::existing(option, path)?
            .read(1024 * 1024)?
            .unwrap_or_default())
    };
    let origin = |option: &str, path: &Path| format!("{option} {}", path.display());
    let chain = cert::load_certs(
        &read("tls.cert", &tls.cert)?,
        &origin("tls.cert", &tls.cert),
    )?;
    let key = cert::load_key(&read("tls.key", &tls.key)?, &origin("tls.key", &tls.key))?;
    let ca = cert::load_certs(&read("tls.ca", &tls.ca)?, &origin("tls.ca", &tls.ca))?;
    let name = match &tls.name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .map_err(|e| format!("cannot read this host's name (set tls.name): {e}"))?
            .to_string_lossy()
            .into_owned(),
    };
    super::require_host_name("tls.name", &name)?;
    let info = cert::check_now(
        &chain,
        &key,
        &Requirements {
            hostname: Some(&name),
            ca: Some(&ca),
            server_auth: true,
            client_auth: true,
        },
    )
    .map_err(|e| format!("tls.cert {}: {e}", tls.cert.display()))?;
    key_is_private(&tls.key, owner)?;
    for (what, path) in [("cert", &tls.cert), ("ca", &tls.ca)] {
        readable_by(what, path, owner)?;
    }
    // pgBackRest's tls-server-auth matches the client certificate's common name.
    let cn = common_name(&info.subject).unwrap_or_else(|| name.clone());
    if cn != name {
        ctx.warn(format!(
            "the certificate's common name is {cn:?}, not this host's name {name:?}: pgBackRest accepts TLS clients by common name, so the other side must list {cn:?} (stanza clients on the repository)"
        ));
    }
    Ok(CheckedTls { tls, port })
}

fn common_name(subject: &str) -> Option<String> {
    subject
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("CN="))
        .next()
        .map(str::to_string)
}

/// pgBackRest refuses a key file that others can read, and must be able to read it itself.
fn key_is_private(path: &Path, owner: &Owner) -> Result<(), Failure> {
    let m = fs::metadata(path).map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    let mode = m.mode() & 0o777;
    if mode & 0o077 != 0 && !(m.uid() == 0 && mode & 0o037 == 0 && m.gid() == owner.gid) {
        return Err(format!(
            "tls.key {} has mode {mode:04o}: pgBackRest refuses a key others can read; make it 0600 owned by {}",
            path.display(),
            owner.name
        )
        .into());
    }
    readable_by("key", path, owner)
}

fn readable_by(what: &str, path: &Path, owner: &Owner) -> Result<(), Failure> {
    let m = fs::metadata(path).map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    let mode = m.mode();
    let ok = (m.uid() == owner.uid && mode & 0o400 != 0)
        || (m.gid() == owner.gid && mode & 0o040 != 0)
        || mode & 0o004 != 0;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tls.{what} {} is not readable by {}, who runs pgBackRest; chown it to {}",
            path.display(),
            owner.name,
            owner.name
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn common_name_from_subject() {
        assert_eq!(super::common_name("O=Lab, CN=db1").as_deref(), Some("db1"));
        assert_eq!(super::common_name("O=Lab"), None);
    }
}
