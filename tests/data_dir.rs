//! The data directory: one server owns it at a time.

mod common;

use common::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A copy of `t`'s configuration (same data directory) listening on another port.
fn second_config(t: &Tern) -> PathBuf {
    let text = fs::read_to_string(&t.config_path).expect("read config");
    let listen = format!("\"127.0.0.1:{}\"", t.port);
    assert!(text.contains(&listen), "no listen address in {text}");
    let path = t.path().join("second.toml");
    fs::write(&path, text.replace(&listen, &format!("\"127.0.0.1:{}\"", free_port()))).expect("write config");
    path
}

/// A second `tern serve` on the same data directory is refused and names the first
/// server's PID; the first keeps its control socket, its queue and its mail.
#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    // Attempts for the remote recipient hang on the silent DNS: stopping need not wait.
    let mut t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\nshutdown_grace = \"1s\"\n"));
    let pid = t.pid().expect("pid");
    // A message that stays queued: nothing answers for its remote recipient.
    let out = t.swaks(&["-f", "sender@localhost", "-t", "bob@remote.test", "--header", "Subject: waiting"]);
    out.assert_success("swaks to a remote recipient");
    let waiting = queue_id(&out.stdout).expect("queue id");
    // `queue list` reads the spool while the server holds the lock.
    let list = t.queue_list();
    list.assert_success("tern queue list (server running)");
    assert!(list.stdout.contains(&waiting), "{}", list.all());

    let mut second = Command::new(TERN_BIN);
    second.arg("serve").arg("--config").arg(second_config(&t)).current_dir(t.path());
    let second = run(second, Duration::from_secs(20));
    assert!(!second.timed_out, "the second server kept running:\n{}", second.all());
    assert!(!second.success(), "the second server succeeded:\n{}", second.all());
    assert!(second.stderr.contains(&format!("pid {pid}")), "the first server's pid {pid} not named:\n{}", second.all());
    assert!(second.stderr.contains("in use"), "{}", second.stderr);

    assert!(t.is_running(), "the first server stopped");
    assert!(t.data_dir.join("control.sock").exists(), "the control socket is gone");
    t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush after the second start");
    let out = t.swaks(&["-f", "sender@localhost", "-t", "alice@localhost", "--header", "Subject: after"]);
    out.assert_success("swaks to a local recipient");
    assert!(contains(&t.wait_one("localhost", "alice"), b"Subject: after"));

    t.restart();
    let list = t.queue_list();
    assert!(list.stdout.contains(&waiting), "the queued message was lost:\n{}\n{}", list.all(), t.logs());
    assert_eq!(t.new_files("localhost", "alice").len(), 1);
    t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush after the restart");

    assert!(t.sigterm().is_some_and(|s| s.success()), "{}", t.logs());
    let flush = t.tern_cmd(&["queue", "flush"]);
    assert!(!flush.success(), "flush without a server succeeded: {}", flush.all());
    assert!(flush.stderr.contains("no tern server is running"), "{}", flush.stderr);
    t.queue_list().assert_success("tern queue list (no server)");
}

/// A server killed without warning releases its lock with its life: the control
/// socket it leaves is seen as no server, and the next start takes the lock.
#[test]
fn a_killed_server_leaves_no_lock_in_the_way() {
    let mut t = Tern::start(LOCAL_OPEN);
    t.kill9();
    assert!(t.data_dir.join("control.sock").exists(), "a killed server cannot remove its socket");
    let flush = t.tern_cmd(&["queue", "flush"]);
    assert!(flush.stderr.contains("no tern server is running"), "{}", flush.all());
    t.start_again();
    let lock = fs::read_to_string(t.data_dir.join("lock")).expect("read lock file");
    assert_eq!(lock.trim(), t.pid().expect("pid").to_string());
    t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush");
}
