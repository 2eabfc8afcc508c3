//! The module's side of proving that PostgreSQL loaded the new pg_hba.conf: the proof itself
//! (and the restore) lives in `pgshift_core::hba_reload`, shared with the agent; here the
//! server is reached with the task's login options and warnings go to Ansible.

use pgshift_core::datadir::{DataDir, PostmasterPid};
use pgshift_core::hba::HbaFile;
use pgshift_core::hba_reload::HbaServer;
use pgshift_core::pg::{Client, PgError};
use pgshift_core::userfile::UserFile;

use crate::login::LoginParams;
use crate::protocol::{Context, Failure};

pub use pgshift_core::hba_reload::in_data_directory;

pub struct Server<'a> {
    pub dd: &'a DataDir,
    inner: HbaServer<'a>,
}

impl<'a> Server<'a> {
    pub fn connect(
        dd: &'a DataDir,
        connect: &'a dyn Fn() -> Result<Client, PgError>,
        target: &UserFile,
    ) -> Result<Server<'a>, String> {
        Ok(Server {
            dd,
            inner: HbaServer::connect(dd, connect, target)?,
        })
    }

    /// Checks the file the server would load, reloads, and proves the load.
    pub fn verify_and_reload(&mut self, ctx: &mut Context, file: &HbaFile) -> Result<(), String> {
        let warnings = self.inner.verify_and_reload(file)?;
        warnings.into_iter().for_each(|w| ctx.warn(w));
        Ok(())
    }
}

/// New sessions with the task's login options to the server of `pm`.
pub fn connector(
    login: &LoginParams,
    pm: &PostmasterPid,
) -> Result<impl Fn() -> Result<Client, PgError>, String> {
    login.connector(Some(pm))
}

pub fn restore(
    target: &UserFile,
    original: Option<&[u8]>,
    written: &[u8; 32],
    dd: Option<&DataDir>,
    reason: String,
) -> Failure {
    Failure::from(pgshift_core::hba_reload::restore(
        target, original, written, dd, reason,
    ))
}
