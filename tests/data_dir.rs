//! The data directory: one server owns it at a time, and what Tern creates there (and
//! in the Maildirs) is private whatever the umask.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// (path, is a directory, mode, gid) of everything below `dir`, `dir` included.
fn modes(dir: &Path) -> Vec<(PathBuf, bool, u32, u32)> {
    let meta = fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut out = vec![(dir.to_path_buf(), meta.is_dir(), meta.mode() & 0o7777, meta.gid())];
    if meta.is_dir() {
        for entry in fs::read_dir(dir).expect("read_dir") {
            out.extend(modes(&entry.expect("entry").path()));
        }
    }
    out
}

/// Each entry whose mode is not `dir_mode` (directories) or `file_mode` (the rest).
fn offenders(entries: &[(PathBuf, bool, u32, u32)], dir_mode: u32, file_mode: u32) -> Vec<String> {
    entries
        .iter()
        .filter(|(_, is_dir, mode, _)| *mode != if *is_dir { dir_mode } else { file_mode })
        .map(|(path, _, mode, _)| format!("{} is {mode:04o}", path.display()))
        .collect()
}

/// Under `umask`, a user added and a DKIM key made before the first start, then the
/// server's own files, a delivered message and its Maildir: all owner-only.
fn everything_is_private_under(umask: u32) {
    let mut t = Tern::new_stopped(LOCAL_OPEN, &[]);
    t.umask = Some(umask);
    t.tern_cmd_with_input(&["user", "add", "carol@localhost", "--password-stdin"], Some(b"s3cret\n"))
        .assert_success("tern user add");
    t.tern_cmd(&["dkim", "keygen", "localhost", "--selector", "s1", "--algorithm", "ed25519"])
        .assert_success("tern dkim keygen");
    t.start_again();
    t.swaks(&["-f", "sender@localhost", "-t", "alice@localhost"]).assert_success("swaks");
    t.wait_one("localhost", "alice");

    let entries = modes(&t.data_dir);
    for made in [
        "lock",
        "control.sock",
        "submit.sock",
        "spool",
        "tls/self-signed.key",
        "tls/self-signed.crt",
        "users.toml",
        "dkim/localhost.s1.pem",
        "mail/localhost/alice/cur",
    ] {
        assert!(entries.iter().any(|(p, ..)| *p == t.data_dir.join(made)), "{made} not found in {entries:#?}");
    }
    assert!(entries.iter().any(|(p, ..)| p.parent() == Some(&t.maildir("localhost", "alice").join("new"))));
    let wrong = offenders(&entries, 0o700, 0o600);
    assert!(wrong.is_empty(), "under umask {umask:03o}, not owner-only:\n{}", wrong.join("\n"));
    t.sigterm();
}

#[test]
fn private_under_umask_000() {
    everything_is_private_under(0o000);
}

#[test]
fn private_under_umask_022() {
    everything_is_private_under(0o022);
}

/// The gid of the first of `names` in /etc/group.
fn existing_group(names: &[&str]) -> Option<(String, u32)> {
    let groups = fs::read_to_string("/etc/group").ok()?;
    names.iter().find_map(|name| {
        groups.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 2 && fields[0] == *name).then(|| Some((name.to_string(), fields[2].parse().ok()?)))?
        })
    })
}

/// With `[local] mailbox_group`, the Maildirs are readable by that group (even under
/// umask 077), the group may pass through the data directory to reach them, and the
/// rest stays owner-only.
#[test]
fn the_mailbox_group_may_read_the_maildirs() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root may give files to another group");
        return;
    }
    let Some((group, gid)) = existing_group(&["mail", "nogroup"]) else {
        eprintln!("skipped: neither group mail nor nogroup exists");
        return;
    };
    let mut t = Tern::new_stopped(&format!("{LOCAL_OPEN}mailbox_group = \"{group}\"\n"), &[]);
    t.umask = Some(0o077);
    t.tern_cmd(&["config", "check"]).assert_success("tern config check");
    t.start_again();
    t.swaks(&["-f", "sender@localhost", "-t", "alice@localhost"]).assert_success("swaks");
    t.wait_one("localhost", "alice");

    let mail = modes(&t.mail_root());
    assert!(mail.len() >= 7, "{mail:#?}");
    let wrong = offenders(&mail, 0o750, 0o640);
    assert!(wrong.is_empty(), "Maildir modes:\n{}", wrong.join("\n"));
    let strangers: Vec<_> = mail.iter().filter(|(.., g)| *g != gid).collect();
    assert!(strangers.is_empty(), "not of group {group} ({gid}): {strangers:#?}");
    let data = fs::metadata(&t.data_dir).expect("data dir");
    assert_eq!((data.mode() & 0o7777, data.gid()), (0o710, gid), "the data directory");
    let rest: Vec<_> = modes(&t.data_dir).into_iter().skip(1).filter(|(p, ..)| !p.starts_with(t.mail_root())).collect();
    let wrong = offenders(&rest, 0o700, 0o600);
    assert!(wrong.is_empty(), "outside the Maildirs, not owner-only:\n{}", wrong.join("\n"));
    t.sigterm();
}

#[test]
fn an_unknown_mailbox_group_is_a_config_error() {
    let t = Tern::new_stopped(&format!("{LOCAL_OPEN}mailbox_group = \"no-such-group-for-tern\"\n"), &[]);
    let check = t.tern_cmd(&["config", "check"]);
    assert!(!check.success(), "accepted: {}", check.all());
    assert!(
        check.stderr.contains("local.mailbox_group: no group \"no-such-group-for-tern\""),
        "unclear error: {}",
        check.stderr
    );
    let numeric = Tern::new_stopped(&format!("{LOCAL_OPEN}mailbox_group = \"4242\"\n"), &[]);
    numeric.tern_cmd(&["config", "check"]).assert_success("a numeric gid");
}
