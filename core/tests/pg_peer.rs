//! Peer authentication over the Unix socket: a root process connects as `postgres` with the
//! postgres user's effective ids and gets its root ids back afterwards. Its own test binary,
//! because switching effective ids applies to every thread of the process.

use pgshift_core::datadir::DataDir;
use pgshift_core::pg::{Client, ConnectOptions};
use pgshift_testkit::PgServer;

#[test]
fn unix_socket_peer_login_and_data_directory_facts() {
    let s = PgServer::start(&[]);
    let dd = DataDir::new(&s.data_dir);
    assert_eq!(dd.major_version(), Some(15));
    let pm = dd.postmaster().unwrap().expect("running");
    assert_eq!(pm.port, s.port);
    assert_eq!(pm.socket_dir.as_deref(), Some(s.socket_dir.as_path()));
    assert_eq!(pm.status.as_deref(), Some("ready"));

    let euid_before = nix::unistd::Uid::effective();
    let opts = ConnectOptions {
        unix_socket: pm.socket_dir.clone(),
        port: pm.port,
        ..ConnectOptions::default()
    };
    let mut c = Client::connect(&opts).expect("peer login over the socket");
    let user: String = c
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(user, "postgres");
    assert_eq!(
        nix::unistd::Uid::effective(),
        euid_before,
        "effective uid restored"
    );

    let before: String = c
        .query_one("SELECT pg_conf_load_time()::text", &[])
        .unwrap()
        .get(0);
    dd.reload().unwrap();
    let mut reloaded = false;
    for _ in 0..500 {
        let now: String = c
            .query_one("SELECT pg_conf_load_time()::text", &[])
            .unwrap()
            .get(0);
        if now != before {
            reloaded = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        reloaded,
        "SIGHUP through postmaster.pid reloaded the server"
    );

    s.stop();
    assert_eq!(
        dd.postmaster().unwrap(),
        None,
        "a stopped server is not running"
    );
}
