//! Started as root with `[server] user`, Tern drops to that user once its listeners
//! are bound, and still receives, delivers and reloads; started as root without it,
//! it keeps running and warns once. These tests need root (as CI has).

mod common;

use common::service::*;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of `name`, from `id`.
fn ids_of(name: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let mut cmd = std::process::Command::new("id");
        cmd.args([flag, name]);
        let out = run(cmd, CLIENT_TIMEOUT);
        out.assert_success("id");
        out.stdout.trim().parse::<u32>().unwrap()
    };
    (id("-u"), id("-g"))
}

/// The `Uid:` or `Gid:` line of /proc/PID/status as numbers (real, effective, saved, fs).
fn status_ids(pid: u32, key: &str) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
    line[key.len()..].split_whitespace().map(|n| n.parse().unwrap()).collect()
}

/// A port below 1024 that nothing listens on now.
fn privileged_port() -> u16 {
    (600..1024).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port below 1024")
}

#[test]
fn root_drops_to_the_configured_user_and_still_delivers_and_reloads() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (uid, gid) = ids_of("nobody");
    let mut t = Tern::new_stopped(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}\n[server]\nuser = \"nobody\"\n"), &[]);
    // The user must reach the data directory and read the configuration file.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    t.start_again();
    let pid = t.pid().unwrap();
    assert_eq!(status_ids(pid, "Uid:"), [uid; 4], "{}", t.logs());
    assert_eq!(status_ids(pid, "Gid:"), [gid; 4], "{}", t.logs());
    assert_eq!(log_lines(&t, "dropped root privileges").len(), 1, "{}", t.logs());
    assert!(log_lines(&t, "running as root").is_empty(), "no warning when privileges are dropped");

    t.swaks(&["-f", "sender@localhost", "-t", "alice@localhost"]).assert_success("swaks");
    t.wait_mail("localhost", "alice", 1);
    let mut files = Vec::new();
    walk(&t.data_dir, &mut files, 0);
    assert!(files.len() > 3, "{files:?}");
    for path in files.iter().chain([&t.data_dir]) {
        let owner = fs::symlink_metadata(path).unwrap().uid();
        assert_eq!(owner, uid, "{} is owned by {owner}", path.display());
    }

    // A reload reads the file as that user.
    edit_config(&t, "domains = [\"localhost\"]", "domains = [\"localhost\", \"b.test\"]");
    assert!(sighup(&t, true).contains("changed local"));
    t.swaks(&["-f", "sender@localhost", "-t", "bob@b.test"]).assert_success("swaks after the reload");
    t.wait_mail("b.test", "bob", 1);

    // A new port below 1024 cannot be bound any more: the reload says so and changes nothing.
    let port = privileged_port();
    append_config(&t, &format!("[[listen]]\naddr = \"127.0.0.1:{port}\"\n"));
    let line = sighup(&t, false);
    assert!(line.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{line}");
    assert!(line.contains("ports below 1024"), "{line}");
    assert_eq!(status_ids(pid, "Uid:"), [uid; 4]);
}

#[test]
fn root_without_a_user_keeps_running_and_warns_once() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let t = Tern::start(LOCAL_OPEN);
    let warnings = log_lines(&t, "running as root: set [server] user");
    assert_eq!(warnings.len(), 1, "{}", t.logs());
    assert_eq!(status_ids(t.pid().unwrap(), "Uid:"), [0; 4]);
    t.swaks(&["-f", "sender@localhost", "-t", "alice@localhost"]).assert_success("swaks");
    t.wait_mail("localhost", "alice", 1);
}
