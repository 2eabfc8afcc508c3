//! A throw-away single-member etcd on loopback for tests: fresh data directory, free ports,
//! killed and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct EtcdServer {
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        EtcdServer::start_with(None)
    }

    /// With `tls` (certificate, key, client CA): an https client URL that requires client
    /// certificates signed by that CA.
    pub fn start_with(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("pgshift-etcd-")
            .tempdir()
            .unwrap();
        let (port, peer) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        if let Some((cert, key, ca)) = &tls {
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("cannot run etcd (Debian package etcd-server)");
        let server = EtcdServer {
            url,
            port,
            dir,
            child,
        };
        // The client port is bound before etcd serves it: a TLS client that connects in
        // between can be reset. Ready is when etcd logs that it serves client requests
        // ("serving [insecure ]client requests on 127.0.0.1:<port>").
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.log().contains("client requests on") {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
