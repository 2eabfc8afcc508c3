//! pgshift-core: the Ansible-free library that the pgshift modules and the agent share.
//!
//! Everything that touches PostgreSQL's files, processes or protocol lives here once, so a
//! module binary stays a thin shell (parse params, call `core`, report) and the agent reuses the
//! same code paths (e.g. fencing edits pg_hba.conf through [`hba`]).

pub mod atomic;
pub mod cert;
pub mod datadir;
pub mod hba;
pub mod hba_reload;
pub mod ini;
pub mod pg;
pub mod pgbackrest;
pub mod pgconf;
pub mod process;
pub mod scram;
pub mod standby;
pub mod userfile;
