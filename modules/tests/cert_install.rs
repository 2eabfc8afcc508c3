//! cert_install against a real PostgreSQL 15 with TLS on, certificates made at test time:
//! install + reload + served-certificate proof, idempotence, every bad input refused with the
//! old certificate still served, rollback when PostgreSQL cannot load the new files, configure,
//! and the deploy hook replaying a saved installation from RENEWED_LINEAGE.

mod common;

use common::owner;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::certs::{ca, chown_postgres, issue, Ca};
use pgshift_testkit::PgServer;
use serde_json::{json, Value};

const HOST: &str = "db1.example.test";

struct Setup {
    server: PgServer,
    _tls_root: tempfile::TempDir,
    src: tempfile::TempDir,
    tls: PathBuf,
    root: Ca,
}

/// A TLS server whose ssl_cert_file/ssl_key_file are <root>/tls/server.{crt,key}, starting with
/// a certificate from an "old" CA.
fn setup() -> Setup {
    let src = tempfile::tempdir().unwrap();
    let old = ca("Old CA");
    let (c, k) = issue(&old, src.path(), "old", HOST, (-1, 30));
    let tls_root = tempfile::Builder::new()
        .prefix("pgshift-tls-")
        .tempdir()
        .unwrap();
    fs::set_permissions(tls_root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let tls = tls_root.path().join("tls");
    fs::create_dir(&tls).unwrap();
    fs::copy(&c, tls.join("server.crt")).unwrap();
    fs::copy(&k, tls.join("server.key")).unwrap();
    for f in ["server.crt", "server.key"] {
        chown_postgres(&tls.join(f));
    }
    let conf = [
        "ssl = on".to_string(),
        format!("ssl_cert_file = '{}'", tls.join("server.crt").display()),
        format!("ssl_key_file = '{}'", tls.join("server.key").display()),
    ];
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let server = PgServer::start(&conf);
    Setup {
        server,
        _tls_root: tls_root,
        src,
        tls,
        root: ca("Test CA"),
    }
}

impl Setup {
    fn args(&self, cert: &Path, key: &Path) -> Value {
        json!({
            "cert": cert, "key": key, "ca_file": self.ca_file(), "hostname": HOST,
            "dest_dir": self.tls, "data_directory": self.server.data_dir,
            "owner": owner(), "login_unix_socket": self.server.socket_dir, "login_port": self.server.port,
        })
    }

    fn ca_file(&self) -> PathBuf {
        let p = self.src.path().join("ca.pem");
        fs::write(&p, self.root.cert.pem()).unwrap();
        p
    }

    fn served(&self) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -starttls postgres -connect 127.0.0.1:{} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
                self.server.port
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("sha256 Fingerprint=")
            .trim_start_matches("SHA256 Fingerprint=")
            .to_string()
    }
}

fn run(args: Value) -> Value {
    common::run_module("cert_install", args)
}

#[test]
fn installs_reloads_and_proves_the_served_certificate() {
    let s = setup();
    let before = s.served();
    assert!(!before.is_empty());
    let (c, k) = issue(&s.root, s.src.path(), "new", HOST, (-1, 90));
    let out = run(s.args(&c, &k));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(out["reloaded"], true, "{out}");
    assert_eq!(out["served_sha256"], out["cert_sha256"]);
    assert_eq!(s.served(), out["cert_sha256"].as_str().unwrap());
    assert_ne!(s.served(), before);
    let mode = fs::metadata(s.tls.join("server.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!out.to_string().contains("PRIVATE KEY"), "{out}");
    let again = run(s.args(&c, &k));
    assert_eq!(again["changed"], false, "{again}");
}

#[test]
fn bad_inputs_leave_the_old_certificate_in_service() {
    let s = setup();
    let before = s.served();
    let crt_before = fs::read(s.tls.join("server.crt")).unwrap();
    let dir = s.src.path();
    let (good_c, _) = issue(&s.root, dir, "good", HOST, (-1, 90));
    let (_, other_k) = issue(&s.root, dir, "other", HOST, (-1, 90));
    let (exp_c, exp_k) = issue(&s.root, dir, "expired", HOST, (-60, -1));
    let (name_c, name_k) = issue(&s.root, dir, "wrongname", "db9.example.test", (-1, 90));
    let foreign = ca("Foreign CA");
    let (for_c, for_k) = issue(&foreign, dir, "foreign", HOST, (-1, 90));
    let cases = [
        (
            s.args(&good_c, &other_k),
            "does not belong to the certificate",
        ),
        (s.args(&exp_c, &exp_k), "expired"),
        (s.args(&name_c, &name_k), "not valid for db1.example.test"),
        (s.args(&for_c, &for_k), "does not verify to the CA"),
        (s.args(&dir.join("missing.crt"), &exp_k), "cert /tmp"),
        (
            {
                let mut a = s.args(&good_c, &other_k);
                a["key"] = json!(dir.join("good.key"));
                a["dest_dir"] = json!(dir.join("no-such-dir"));
                a
            },
            "dest_dir",
        ),
    ];
    for (args, want) in cases {
        let out = run(args.clone());
        assert_eq!(out["failed"], true, "{args}: {out}");
        assert!(
            out["msg"].as_str().unwrap().contains(want),
            "{want}: {}",
            out["msg"]
        );
        assert_eq!(s.served(), before, "{want}");
        assert_eq!(
            fs::read(s.tls.join("server.crt")).unwrap(),
            crt_before,
            "{want}"
        );
    }
}

#[test]
fn files_postgres_cannot_load_are_rolled_back() {
    if !nix::unistd::Uid::effective().is_root() {
        return; // needs root-owned files the server cannot read
    }
    let s = setup();
    let before = s.served();
    let crt_before = fs::read(s.tls.join("server.crt")).unwrap();
    let (c, k) = issue(&s.root, s.src.path(), "new", HOST, (-1, 90));
    // Valid pair, but root:root 0640 is unreadable for postgres: the reload keeps the old one.
    let mut args = s.args(&c, &k);
    args["owner"] = json!("root");
    args["group"] = json!("root");
    let out = run(args);
    assert_eq!(out["failed"], true, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(
        msg.contains("still serves") && msg.contains("put back"),
        "{msg}"
    );
    assert_eq!(fs::read(s.tls.join("server.crt")).unwrap(), crt_before);
    assert_eq!(s.served(), before);
}

#[test]
fn settings_must_point_at_the_files_or_be_configured() {
    let s = setup();
    let other = s.server.root.join("elsewhere");
    fs::create_dir(&other).unwrap();
    let (c, k) = issue(&s.root, s.src.path(), "new", HOST, (-1, 90));
    let mut args = s.args(&c, &k);
    args["dest_dir"] = json!(other);
    let out = run(args.clone());
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("configure: true"),
        "{out}"
    );
    assert!(!other.join("server.crt").exists(), "nothing installed");
    fs::set_permissions(&other, fs::Permissions::from_mode(0o755)).unwrap();
    args["configure"] = json!(true);
    let out = run(args);
    assert_eq!(out["reloaded"], true, "{out}");
    assert_eq!(s.served(), out["cert_sha256"].as_str().unwrap());
    assert_eq!(
        s.server.psql("SHOW ssl_cert_file"),
        other.join("server.crt").display().to_string()
    );
}

#[test]
fn the_deploy_hook_replays_a_saved_installation() {
    let s = setup();
    let certbot = s.src.path().join("letsencrypt");
    let lineage = certbot.join("live").join(HOST);
    fs::create_dir_all(&lineage).unwrap();
    let (c, k) = issue(&s.root, s.src.path(), "first", HOST, (-1, 90));
    fs::copy(&c, lineage.join("fullchain.pem")).unwrap();
    fs::copy(&k, lineage.join("privkey.pem")).unwrap();
    let mut args = s.args(&c, &k);
    let o = args.as_object_mut().unwrap();
    o.remove("cert");
    o.remove("key");
    o.insert("lineage".into(), json!(lineage));
    o.insert("certbot_dir".into(), json!(certbot));
    o.insert("deploy_hook".into(), json!("present"));
    let out = run(args.clone());
    assert_eq!(out["reloaded"], true, "{out}");
    let hook = PathBuf::from(out["hook"].as_str().unwrap());
    let saved = PathBuf::from(out["saved"].as_str().unwrap());
    assert_eq!(
        hook,
        certbot.join("renewal-hooks/deploy/pgshift-cert-install")
    );
    assert_eq!(
        fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(run(args.clone())["changed"], false);

    // "Renewal": new files in the lineage, then certbot's call of the hook.
    let (c2, k2) = issue(&s.root, s.src.path(), "second", HOST, (-1, 90));
    fs::copy(&c2, lineage.join("fullchain.pem")).unwrap();
    fs::copy(&k2, lineage.join("privkey.pem")).unwrap();
    let hook_run = Command::new(&hook)
        .env("RENEWED_LINEAGE", &lineage)
        .env("RENEWED_DOMAINS", HOST)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&hook_run.stdout);
    assert!(
        hook_run.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&hook_run.stderr)
    );
    assert!(stdout.contains(": installed "), "{stdout}");
    let new_sha = stdout.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(s.served(), new_sha);

    // A bad renewal (key of another certificate): the hook fails loudly, service unchanged.
    let (_, k3) = issue(&s.root, s.src.path(), "third", HOST, (-1, 90));
    fs::copy(&k3, lineage.join("privkey.pem")).unwrap();
    let bad = Command::new(&hook)
        .env("RENEWED_LINEAGE", &lineage)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("FAILED"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    assert_eq!(s.served(), new_sha);

    // deploy_hook: absent removes the saved installation and the hook.
    args["deploy_hook"] = json!("absent");
    fs::copy(&k2, lineage.join("privkey.pem")).unwrap();
    let out = run(args);
    assert_eq!(out["changed"], true, "{out}");
    assert!(!saved.exists() && !hook.exists());
}

/// Hostile input: every case refused naming its option, the old certificate still served,
/// the TLS directory and the data directory's files unchanged.
#[test]
fn hostile_inputs_are_refused_naming_the_option() {
    use common::hostile::{assert_refused, mkfifo, snapshot, snapshot_datadir};
    let s = setup();
    let served = s.served();
    let dir = s.src.path();
    let (c, k) = issue(&s.root, dir, "good", HOST, (-1, 90));
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let enc = dir.join("encrypted.key");
    let status = Command::new("openssl")
        .args([
            "pkey",
            "-aes256",
            "-passout",
            "pass:Hidden-Passphrase",
            "-in",
        ])
        .arg(&k)
        .arg("-out")
        .arg(&enc)
        .status()
        .unwrap();
    assert!(status.success());
    let not_pem = dir.join("not.pem");
    fs::write(&not_pem, "hello\n").unwrap();
    let huge = dir.join("huge.pem");
    fs::File::create(&huge).unwrap().set_len(2 << 20).unwrap();
    let a_file = dir.join("a-file");
    fs::write(&a_file, "x").unwrap();
    mkfifo(&s.tls.join("fifo.crt"));
    let base = s.args(&c, &k);
    let with = |extra: Value| {
        let mut a = base.clone();
        for (key, v) in extra.as_object().unwrap() {
            if v.is_null() {
                a.as_object_mut().unwrap().remove(key);
            } else {
                a[key] = v.clone();
            }
        }
        a
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("cert is a FIFO", with(json!({"cert": fifo})), "cert"),
        ("key is a FIFO", with(json!({"key": fifo})), "key"),
        (
            "ca_file is a FIFO",
            with(json!({"ca_file": fifo})),
            "ca_file",
        ),
        ("cert is a directory", with(json!({"cert": dir})), "cert"),
        (
            "cert is a device",
            with(json!({"cert": "/dev/zero"})),
            "cert",
        ),
        ("cert is not PEM", with(json!({"cert": not_pem})), "cert"),
        ("cert is huge", with(json!({"cert": huge})), "cert"),
        ("key is encrypted", with(json!({"key": enc})), "key"),
        (
            "hostname with a newline",
            with(json!({"hostname": "db1.example.test\nx"})),
            "hostname",
        ),
        (
            "hostname not in the certificate",
            with(json!({"hostname": "db9.example.test"})),
            "hostname",
        ),
        (
            "cert_name climbs out",
            with(json!({"cert_name": "../x"})),
            "cert_name",
        ),
        (
            "cert_name is a path",
            with(json!({"cert_name": "a/b"})),
            "cert_name",
        ),
        (
            "key_name is empty",
            with(json!({"key_name": ""})),
            "key_name",
        ),
        (
            "key_name with a newline",
            with(json!({"key_name": "k\ney"})),
            "key_name",
        ),
        (
            "key_name equals cert_name",
            with(json!({"key_name": "server.crt"})),
            "key_name",
        ),
        (
            "destination is a FIFO",
            with(json!({"cert_name": "fifo.crt"})),
            "cert_name",
        ),
        (
            "dest_dir is a file",
            with(json!({"dest_dir": a_file})),
            "dest_dir",
        ),
        (
            "dest_dir is missing",
            with(json!({"dest_dir": dir.join("none")})),
            "dest_dir",
        ),
        (
            "data_directory is missing",
            with(json!({"data_directory": dir.join("none")})),
            "data_directory",
        ),
        (
            "data_directory not given",
            with(json!({"data_directory": null})),
            "data_directory",
        ),
        (
            "owner unknown",
            with(json!({"owner": "no-such-user-x"})),
            "owner",
        ),
        (
            "group unknown",
            with(json!({"group": "no-such-group-x"})),
            "group",
        ),
        (
            "lineage with cert",
            with(json!({"lineage": dir})),
            "lineage",
        ),
        ("cert without key", with(json!({"key": null})), "key"),
        (
            "deploy_hook without lineage",
            with(json!({"deploy_hook": "present"})),
            "lineage",
        ),
        (
            "service not a choice",
            with(json!({"service": "nginx"})),
            "service",
        ),
        (
            "wrong login password",
            with(
                json!({"login_host": "127.0.0.1", "login_password": "Hidden-Login-pw", "ssl_mode": "disable", "login_unix_socket": null}),
            ),
            "password authentication failed",
        ),
    ];
    assert!(cases.len() >= 15);
    let tls_before = snapshot(&s.tls);
    let dd_before = snapshot_datadir(&s.server.data_dir);
    for (case, args, option) in cases {
        let out = run(args);
        assert_refused(
            case,
            &out,
            option,
            &["Hidden-Passphrase", "Hidden-Login-pw", "PRIVATE KEY"],
        );
        tls_before.assert_same(&snapshot(&s.tls), case);
        dd_before.assert_same(&snapshot_datadir(&s.server.data_dir), case);
    }
    assert_eq!(s.served(), served);
}
