//! Running under systemd: the unit file passes `systemd-analyze verify`, the
//! packaged sysusers file and configuration are valid, and the server tells the
//! service manager (sd_notify, `Type=notify`) when it is ready, reloading and stopping.

mod common;

use common::service::edit_config;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/tern.service");
const SYSUSERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/tern.sysusers");
const PACKAGED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/tern.toml");

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    if !have_program("systemd-analyze") {
        panic!("systemd-analyze is missing (Debian package systemd; scripts/test installs it)");
    }
    // The unit names the installed binary; here the one under test stands in for it,
    // so that verify can check that the command exists.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(UNIT).unwrap().replace("/usr/sbin/tern", TERN_BIN);
    let path = dir.path().join("tern.service");
    std::fs::write(&path, unit).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(&path);
    let out = run(cmd, CLIENT_TIMEOUT);
    out.assert_success("systemd-analyze verify");
    assert!(out.all().trim().is_empty(), "verify had remarks:\n{}", out.all());
}

#[test]
fn the_sysusers_file_makes_the_user_tern() {
    if !have_program("systemd-sysusers") {
        panic!("systemd-sysusers is missing (Debian package systemd; scripts/test installs it)");
    }
    let mut cmd = Command::new("systemd-sysusers");
    cmd.args(["--dry-run", SYSUSERS]);
    let out = run(cmd, CLIENT_TIMEOUT);
    out.assert_success("systemd-sysusers --dry-run");
    // Nothing to create where the user already exists.
    let mut getent = Command::new("getent");
    getent.args(["passwd", "tern"]);
    let exists = run(getent, CLIENT_TIMEOUT).success();
    assert!(exists || out.all().contains("Creating user 'tern'"), "{}", out.all());
}

#[test]
fn the_packaged_configuration_is_valid() {
    let mut cmd = Command::new(TERN_BIN);
    cmd.args(["config", "check", "--config", PACKAGED_CONFIG]);
    let out = run(cmd, CLIENT_TIMEOUT);
    out.assert_success("tern config check contrib/tern.toml");
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

/// `tern serve` started by the test itself (not waiting for a greeting), killed when
/// dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kill(pid: u32, signal: &str) {
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{signal}")).arg(pid.to_string());
    run(cmd, CLIENT_TIMEOUT).assert_success("kill");
}

/// The next notification, within 20 s.
#[track_caller]
fn next(socket: &UnixDatagram, t: &Tern) -> String {
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!("no notification: {e}\n{}", t.logs()),
    }
}

fn notify_socket(dir: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(dir.join("notify.sock")).expect("bind the notify socket");
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    socket
}

#[test]
fn ready_reloading_and_stopping_are_notified() {
    let t = Tern::new_stopped(LOCAL_OPEN, &[]);
    let socket = notify_socket(t.path());
    let log = |p: std::path::PathBuf| std::fs::File::create(p).unwrap();
    let mut server = Server(
        Command::new(TERN_BIN)
            .args(["serve", "--config"])
            .arg(&t.config_path)
            .env("NOTIFY_SOCKET", t.path().join("notify.sock"))
            .current_dir(t.path())
            .stdin(Stdio::null())
            .stdout(log(t.stdout_log()))
            .stderr(log(t.stderr_log()))
            .spawn()
            .expect("spawn tern serve"),
    );
    let ready = next(&socket, &t);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains(&format!("STATUS=listening on 127.0.0.1:{}", t.port)), "{ready:?}");
    // Ready means accepting: the greeting comes at once.
    let mut r = Raw::connect(t.port);
    assert_eq!(r.reply().code, 220);
    let _ = r.cmd("QUIT");

    let pid = server.0.id();
    edit_config(&t, "domains = [\"localhost\"]", "domains = [\"localhost\", \"b.test\"]");
    kill(pid, "HUP");
    let reloading = next(&socket, &t);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading:?}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let again = next(&socket, &t);
    assert!(again.lines().any(|l| l == "READY=1"), "READY=1 ends the reload: {again:?}");
    assert!(std::fs::read_to_string(t.stderr_log()).unwrap().contains("changed local"), "{}", t.logs());

    kill(pid, "TERM");
    let stopping = next(&socket, &t);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.0.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "tern did not stop\n{}", t.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.0.wait().unwrap().success());
}
