//! `[local] delivery = "command"`: mail for a local domain piped to a delivery agent,
//! as Postfix's `mailbox_command`. The real `dovecot-lda` delivers; script agents show
//! what a program sees (arguments, environment, the message) and how its exit status,
//! a hang or a huge message are handled. `cmd.test` is delivered by the command, while
//! `local.test` (where the sender and its notices live) keeps its Maildirs.
//!
//! Started as root, Tern drops to `nobody` (as a real installation does), so that the
//! agents run unprivileged as they would in production.

mod common;

use common::outbound::*;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CMD_DOMAIN: &str = "cmd.test";
const DELIVERY: Duration = Duration::from_secs(30);
const DOVECOT_LDA: &str = "/usr/lib/dovecot/dovecot-lda";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A Tern whose `cmd.test` is delivered by `command` (a TOML array), with
/// `local_extra` added to `[local]`; a failed attempt waits an hour.
struct Setup {
    t: Tern,
    /// Where the agents write, writable by the user they run as.
    out: PathBuf,
}

fn start(command: impl Fn(&Path) -> String, local_extra: &str) -> Setup {
    start_with(command, local_extra, "")
}

/// Like [`start`], with `tail` at the end of the configuration.
fn start_with(command: impl Fn(&Path) -> String, local_extra: &str, tail: &str) -> Setup {
    let server = if is_root() { "\n[server]\nuser = \"nobody\"\n" } else { "" };
    let extra = format!(
        "\n[local]\ndomains = [\"{LOCAL_DOMAIN}\", \"{CMD_DOMAIN}\"]\naccept_unknown = true\n{local_extra}\n\
         [local.domain_delivery]\n\"{CMD_DOMAIN}\" = {{ delivery = \"command\", command = {} }}\n\n\
         [queue]\nretry = [\"1h\"]\n{NO_AUTH_CHECKS}{server}{tail}",
        command(Path::new("@OUT@"))
    );
    let mut t = Tern::new_stopped(&extra, &[]);
    let out = t.path().join("out");
    let config = fs::read_to_string(&t.config_path).unwrap();
    fs::write(&t.config_path, config.replace("@OUT@", &out.display().to_string())).unwrap();
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    // The user Tern becomes must reach its data directory, the config and the scripts.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    t.start_again();
    Setup { t, out }
}

/// Writes an executable shell script `name` into the test's directory.
fn script(t: &Tern, name: &str, body: &str) -> PathBuf {
    let path = t.path().join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Sends a small message from SENDER to `to`; returns its queue id.
fn send(t: &Tern, sender: &str, to: &str, subject: &str) -> String {
    send_message(t, sender, &[to], &test_message(subject, to), &[])
}

fn wait_file(path: &Path, t: &Tern) -> Vec<u8> {
    wait_for(DELIVERY, &format!("{}", path.display()), || fs::read(path).ok().filter(|b| !b.is_empty()), || t.logs())
}

#[test]
fn dovecot_lda_delivers_into_its_maildir() {
    if !Path::new(DOVECOT_LDA).exists() {
        eprintln!("SKIPPED: {DOVECOT_LDA} not installed (package dovecot-core)");
        return;
    }
    let s = start(
        |out| {
            format!(
                "[\"{DOVECOT_LDA}\", \"-c\", \"{}\", \"-f\", \"{{sender}}\", \"-a\", \"{{recipient}}\"]",
                out.join("dovecot.conf").display()
            )
        },
        "",
    );
    // Dovecot's own configuration: USER (set by Tern as Postfix's local(8) does)
    // names the mailbox.
    fs::write(
        s.out.join("dovecot.conf"),
        format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nssl = no\nprotocols =\n\
             mail_location = maildir:{d}/mail/%u\n",
            d = s.out.display()
        ),
    )
    .unwrap();
    send(&s.t, SENDER, "alice@cmd.test", "for dovecot");
    wait_queue_empty(&s.t, DELIVERY);
    let got = s.t.wait_files_within(&s.out.join("mail/alice/new"), 1, DELIVERY);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.starts_with(&format!("Return-Path: <{SENDER}>\n")), "{text}");
    assert!(text.contains("Delivered-To: alice@cmd.test\n"), "{text}");
    assert!(text.contains("Subject: for dovecot\n") && text.contains("Hello from Tern"), "{text}");
    let log = fs::read_to_string(s.out.join("dovecot.log")).unwrap();
    assert!(log.contains("lda(alice)") && log.contains("saved mail to INBOX"), "{log}");
    let line = s.t.logs();
    assert!(line.contains("relay=command") && line.contains("status=sent"), "{line}");
    assert!(s.t.new_files(CMD_DOMAIN, "alice").is_empty(), "a Maildir of Tern's own was written");
}

#[test]
fn placeholders_and_environment_are_what_the_program_sees() {
    let s = start(
        |out| {
            format!(
                "[\"{}\", \"-f\", \"{{sender}}\", \"{{recipient}}\", \"{{user}}\", \"{{domain}}\", \"x={{extension}}\", \"{{original}}\", \"{{id}}\", \"{{other}}\"]",
                out.join("mda").display()
            )
        },
        "",
    );
    script(
        &s.t,
        "out/mda",
        &format!(
            "d={}/$4-$(date +%s%N)\nmkdir $d\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > $d/args\nenv > $d/env\ncat > $d/msg\n",
            s.out.display()
        ),
    );
    let mut t = s.t;
    t.set_env("TERN_TEST_SECRET", "leaked");
    t.restart();
    let id = send(&t, SENDER, "Alice+news@cmd.test", "placeholders");
    let null = send(&t, "", "bob@cmd.test", "from nobody");
    wait_queue_empty(&t, DELIVERY);
    let dir = |user: &str| {
        let entries: Vec<PathBuf> = fs::read_dir(&s.out).unwrap().map(|e| e.unwrap().path()).collect();
        let found = entries.iter().find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{user}-")));
        found.cloned().unwrap_or_else(|| panic!("no delivery for {user}: {entries:?}\n{}", t.logs()))
    };
    let alice = dir("alice");
    let args = fs::read_to_string(alice.join("args")).unwrap();
    let want = format!("-f\n{SENDER}\nalice@cmd.test\nalice\ncmd.test\nx=news\nAlice+news@cmd.test\n{id}\n{{other}}\n");
    assert_eq!(args, want);
    let env = fs::read_to_string(alice.join("env")).unwrap();
    let mut vars: Vec<&str> =
        env.lines().filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_=")).collect();
    vars.sort();
    assert_eq!(
        vars,
        [
            "DOMAIN=cmd.test",
            "EXTENSION=news",
            "ORIGINAL_RECIPIENT=Alice+news@cmd.test",
            "PATH=/usr/bin:/bin",
            "RECIPIENT=alice@cmd.test",
            &format!("SENDER={SENDER}"),
            "USER=alice",
        ]
    );
    let msg = fs::read(alice.join("msg")).unwrap();
    let text = String::from_utf8_lossy(&msg);
    assert!(text.starts_with(&format!("Return-Path: <{SENDER}>\nDelivered-To: alice@cmd.test\nReceived: ")), "{text}");
    assert!(!text.contains('\r'), "lines end in LF for a local program: {text:?}");
    assert!(text.ends_with("Subject: placeholders\nMessage-ID: <placeholders@local.test>\n\nHello from Tern's outbound tests.\n.leading dot line\nLast line.\n"), "{text}");

    let bob = dir("bob");
    let args = fs::read_to_string(bob.join("args")).unwrap();
    assert_eq!(args, format!("-f\n\nbob@cmd.test\nbob\ncmd.test\nx=\nbob@cmd.test\n{null}\n{{other}}\n"));
    assert!(fs::read_to_string(bob.join("msg")).unwrap().starts_with("Return-Path: <>\n"));
    let logs = t.logs();
    let line = logs.lines().find(|l| l.contains(&id) && l.contains("status=sent")).unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("relay=command") && line.contains("to=alice@cmd.test"), "{line}");
}

#[test]
fn exit_75_defers_and_a_flush_after_the_fix_delivers() {
    let s = start(|out| format!("[\"{}\"]", out.join("mda").display()), "");
    let out = s.out.display();
    script(
        &s.t,
        "out/mda",
        &format!("if [ -e {out}/broken ]; then echo mailbox locked >&2; exit 75; fi\ncat > {out}/got\n"),
    );
    fs::write(s.out.join("broken"), "").unwrap();
    send(&s.t, SENDER, "carol@cmd.test", "later");
    let q = wait_queue(&s.t, DELIVERY, "a deferred recipient", |q| q.contains("deferred (attempts: 1"));
    assert!(q.contains("4.3.0") || s.t.logs().contains("dsn=4.3.0"), "{q}\n{}", s.t.logs());
    assert!(s.t.logs().contains("mailbox locked"), "{}", s.t.logs());
    fs::remove_file(s.out.join("broken")).unwrap();
    s.t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush");
    wait_queue_empty(&s.t, DELIVERY);
    let got = wait_file(&s.out.join("got"), &s.t);
    assert!(String::from_utf8_lossy(&got).contains("Subject: later\n"));
    assert!(s.t.new_files(LOCAL_DOMAIN, "sender").is_empty(), "no notice for a delivered message");
}

#[test]
fn exit_67_bounces_with_the_programs_words() {
    let s = start(|out| format!("[\"{}\", \"{{user}}\"]", out.join("mda").display()), "");
    script(&s.t, "out/mda", "echo \"maildrop: no mailbox for $1\" >&2\nexit 67\n");
    send(&s.t, SENDER, "dave@cmd.test", "nowhere");
    let dsn = s.t.wait_one(LOCAL_DOMAIN, "sender");
    let text = String::from_utf8_lossy(&dsn);
    assert!(fields(&text, "Status").contains(&"5.1.1".to_string()), "{text}");
    assert!(fields(&text, "Action").contains(&"failed".to_string()), "{text}");
    assert!(text.contains("maildrop: no mailbox for dave"), "{text}");
    assert!(text.contains("exited with 67 (user unknown)"), "{text}");
    wait_queue_empty(&s.t, DELIVERY);
    assert!(s.t.logs().contains("status=bounced"), "{}", s.t.logs());
}

#[test]
fn a_hanging_program_is_killed_at_the_time_limit_and_deferred() {
    let s = start(|out| format!("[\"{}\"]", out.join("mda").display()), "command_timeout = \"1s\"\n");
    let out = s.out.display();
    script(&s.t, "out/mda", &format!("sleep 300 &\necho $! > {out}/child\necho $$ > {out}/pid\nwait\n"));
    send(&s.t, SENDER, "erin@cmd.test", "hangs");
    let q = wait_queue(&s.t, DELIVERY, "a deferred recipient", |q| q.contains("deferred (attempts: 1"));
    assert!(q.contains("time limit") || s.t.logs().contains("time limit of 1s"), "{q}\n{}", s.t.logs());
    // The program and what it started are gone.
    for file in ["pid", "child"] {
        let pid = String::from_utf8(wait_file(&s.out.join(file), &s.t)).unwrap();
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        wait_for(DELIVERY, &format!("{file} {} killed", pid.trim()), || (!proc.exists()).then_some(()), || s.t.logs());
    }
    assert!(s.t.new_files(LOCAL_DOMAIN, "sender").is_empty(), "a timeout is not a bounce");
}

#[test]
fn a_program_that_cannot_start_defers() {
    let s = start(|out| format!("[\"{}\"]", out.join("missing-mda").display()), "");
    send(&s.t, SENDER, "frank@cmd.test", "no program");
    wait_queue(&s.t, DELIVERY, "a deferred recipient", |q| q.contains("deferred (attempts: 1"));
    let logs = s.t.logs();
    assert!(logs.contains("cannot start the delivery command"), "{logs}");
    assert!(logs.contains("configuration error") && logs.contains("dsn=4.3.0"), "{logs}");
    // Local.test keeps its Maildirs.
    send(&s.t, SENDER, "grace@local.test", "maildir still");
    s.t.wait_one(LOCAL_DOMAIN, "grace");
}

/// A 48 MiB message reaches the program a piece at a time: the server's peak RSS
/// grows by far less than the message while it is piped.
#[test]
fn a_huge_message_is_streamed_to_the_program() {
    const MIB: usize = 1 << 20;
    let limits = "\n[limits]\nmax_message_size = 67108864\n";
    let s = start_with(|out| format!("[\"{}\"]", out.join("mda").display()), "", limits);
    let out = s.out.display();
    script(
        &s.t,
        "out/mda",
        &format!("if [ -e {out}/broken ]; then exit 75; fi\ncat > {out}/got.tmp\nmv {out}/got.tmp {out}/got\n"),
    );
    fs::write(s.out.join("broken"), "").unwrap();
    let mut body = format!("From: <{SENDER}>\r\nTo: <hank@cmd.test>\r\nSubject: huge\r\n\r\n").into_bytes();
    let mut i = 0u64;
    while body.len() < 48 * MIB {
        body.extend_from_slice(format!("line {i:010} {}\r\n", "abcdefghij".repeat(6)).as_bytes());
        i += 1;
    }
    let mut c = s.t.raw();
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).code, 250);
    assert_eq!(c.cmd("RCPT TO:<hank@cmd.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&body).unwrap();
    c.send(b".\r\n").unwrap();
    assert_eq!(c.reply().code, 250);
    wait_queue(&s.t, DELIVERY, "the first attempt deferred", |q| q.contains("deferred (attempts: 1"));

    let pid = s.t.pid().unwrap();
    let before = reset_peak(pid);
    fs::remove_file(s.out.join("broken")).unwrap();
    s.t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush");
    wait_queue_empty(&s.t, Duration::from_secs(120));
    let growth = proc_status(pid, "VmHWM").saturating_sub(before);
    eprintln!("peak RSS growth while piping 48 MiB: {} KiB", growth / 1024);
    let got = fs::read(s.out.join("got")).unwrap();
    let lf: Vec<u8> = body.iter().copied().filter(|&b| b != b'\r').collect();
    assert!(got.starts_with(format!("Return-Path: <{SENDER}>\n").as_bytes()));
    assert!(got.ends_with(&lf), "the message changed on its way to the program");
    assert!(growth < 16 * MIB, "peak RSS grew by {} KiB piping 48 MiB", growth / 1024);
}
