//! sendmail(1) and mailq: `tern sendmail` and the binary called `sendmail` or `mailq`,
//! handing mail to a running server over its local submission socket; driven directly,
//! through symlinks, by s-nail and by a Python `-bs` client.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Local mailboxes for `localhost` and the server's own name, no checks on strangers.
fn config() -> String {
    format!("{NO_AUTH_CHECKS}\n[local]\ndomains = [\"localhost\", \"{HOSTNAME}\"]\naccept_unknown = true\n")
}

/// `tern sendmail --config FILE ARGS` with `input` on standard input.
fn sendmail(t: &Tern, args: &[&str], input: &str) -> Out {
    let mut cmd = Command::new(TERN_BIN);
    cmd.arg("sendmail").arg("--config").arg(&t.config_path).args(args).current_dir(t.path());
    run_with_input(cmd, Some(input.as_bytes()), CLIENT_TIMEOUT)
}

/// A symlink to the binary named `name` in the test directory.
fn link(t: &Tern, name: &str) -> PathBuf {
    let path = t.path().join("bin").join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    if !path.exists() {
        std::os::unix::fs::symlink(TERN_BIN, &path).unwrap();
    }
    path
}

/// Runs `program` with `$TERN_CONFIG` naming the test's configuration.
fn via_env(t: &Tern, program: &Path, args: &[&str], input: Option<&str>) -> Out {
    let mut cmd = Command::new(program);
    cmd.args(args).env("TERN_CONFIG", &t.config_path).current_dir(t.path());
    run_with_input(cmd, input.map(str::as_bytes), CLIENT_TIMEOUT)
}

fn text(mail: &[u8]) -> String {
    String::from_utf8_lossy(mail).into_owned()
}

fn header_block(mail: &[u8]) -> String {
    text(split_message(mail).0)
}

#[test]
fn t_i_f_and_f_name_deliver_with_bcc_removed() {
    let t = Tern::start(&config());
    let input = "To: Bob <bob@localhost>\nCc: carol@localhost\nBcc: dave@localhost\nSubject: hello\n\nfirst\n.\n..two dots\nlast\n";
    let out = sendmail(&t, &["-t", "-i", "-f", "sender@tern.test", "-F", "Sam Sender", "erin@localhost"], input);
    out.assert_success("sendmail -t -i");
    for user in ["bob", "carol", "dave", "erin"] {
        let mail = t.wait_one("localhost", user);
        let head = header_block(&mail);
        assert!(mail.starts_with(b"Return-Path: <sender@tern.test>\r\n"), "{user}: {}", show(&mail));
        assert!(!head.to_lowercase().contains("bcc"), "Bcc travelled to {user}:\n{head}");
        assert!(head.contains("From: Sam Sender <sender@tern.test>\r\n"), "no From added for {user}:\n{head}");
        assert!(head.contains("\r\nDate: ") && head.contains("\r\nMessage-ID: <"), "no Date/Message-ID:\n{head}");
        assert!(head.contains("Received: by tern.test (Tern, from userid 0 root)"), "{head}");
        // -i: the lone dot is content; the body is CRLF and arrives as written.
        assert!(text(&mail).ends_with("\r\n\r\nfirst\r\n.\r\n..two dots\r\nlast\r\n"), "{}", show(&mail));
    }
}

#[test]
fn a_lone_dot_ends_the_message_without_i_and_from_is_kept() {
    let t = Tern::start(&config());
    let input = "From: Someone <someone@tern.test>\nSubject: dot\n\nkept\n.\nnot sent\n";
    sendmail(&t, &["bob@localhost"], input).assert_success("sendmail");
    let mail = text(&t.wait_one("localhost", "bob"));
    assert!(mail.ends_with("\r\n\r\nkept\r\n"), "{mail}");
    assert!(mail.contains("From: Someone <someone@tern.test>\r\n") && !mail.contains("From: root"), "{mail}");
    // Without -f the envelope sender is the user at the server's hostname.
    assert!(mail.starts_with(&format!("Return-Path: <root@{HOSTNAME}>\r\n")), "{mail}");
}

#[test]
fn dsn_flags_reach_the_queue() {
    let dead = free_port();
    let t = Tern::start(&format!("{}\n[relay.routes]\n\"remote.test\" = \"127.0.0.1:{dead}\"\n", config()));
    let out = sendmail(
        &t,
        &["-v", "-N", "success,delay", "-R", "hdrs", "-V", "env+id=1", "-odi", "-oem", "-L", "tag", "x@remote.test"],
        "Subject: dsn\n\nbody\n",
    );
    out.assert_success("sendmail -N -R -V");
    let id = queue_id(&out.stderr).unwrap_or_else(|| panic!("-v says no queue id: {}", out.all()));
    let shown = t.tern_cmd(&["queue", "show", &id]);
    shown.assert_success("tern queue show");
    let s = shown.stdout.to_lowercase();
    // Kept as sent: xtext (RFC 3461 §4), which is also how a notice shows it.
    assert!(s.contains("envid:    env+2bid+3d1"), "{}", shown.stdout);
    assert!(s.contains("ret:      hdrs"), "{}", shown.stdout);
    assert!(s.contains("notify:") && s.contains("success") && s.contains("delay"), "{}", shown.stdout);
}

#[test]
fn mail_from_a_signing_domain_is_dkim_signed() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("example.test.pem");
    let extra = format!(
        "{}\n[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n",
        config(),
        key.display()
    );
    let mut t = Tern::new_stopped(&extra, &[]);
    let made = t.tern_cmd(&[
        "dkim",
        "keygen",
        "example.test",
        "--selector",
        "s1",
        "--algorithm",
        "ed25519",
        "--out",
        key.to_str().unwrap(),
    ]);
    made.assert_success("tern dkim keygen");
    t.start_again();
    sendmail(&t, &["-f", "alice@example.test", "-F", "Alice", "bob@localhost"], "Subject: signed\n\nsigned body\n")
        .assert_success("sendmail");
    let head = header_block(&t.wait_one("localhost", "bob"));
    assert!(head.contains("DKIM-Signature:") && head.contains("d=example.test") && head.contains("s=s1"), "{head}");
    // The signature covers the From added by sendmail and the Date and Message-ID added by the server.
    assert!(head.contains("From: Alice <alice@example.test>"), "{head}");
}

#[test]
fn without_a_server_the_status_is_75_and_nothing_is_queued() {
    let mut t = Tern::start(&config());
    t.sigterm();
    let out = sendmail(&t, &["bob@localhost"], "Subject: lost?\n\nbody\n");
    assert_eq!(out.code(), Some(75), "{}", out.all());
    assert!(out.stderr.contains("not running") && out.stderr.contains("nothing was sent"), "{}", out.all());
    t.start_again();
    let list = t.queue_list();
    assert!(list.stdout.contains("queue is empty"), "{}", list.all());
    assert_eq!(t.settled_count("localhost", "bob"), 0, "a message sent while the server was down arrived");
    // A server that never ran: no data directory at all.
    let never = Tern::new_stopped(&config(), &[]);
    let out = sendmail(&never, &["bob@localhost"], "Subject: x\n\nbody\n");
    assert_eq!(out.code(), Some(75), "{}", out.all());
    assert!(!never.data_dir.exists(), "sendmail made the data directory");
}

#[test]
fn bad_flags_exit_64() {
    let t = Tern::start(&config());
    for args in [
        &["-k", "bob@localhost"][..],
        &["-bv", "bob@localhost"],
        &["-N", "sometimes", "bob@localhost"],
        &["-R", "all", "bob@localhost"],
        &[],
    ] {
        let out = sendmail(&t, args, "Subject: x\n\nbody\n");
        assert_eq!(out.code(), Some(64), "{args:?}: {}", out.all());
        assert!(out.stderr.starts_with("sendmail: "), "{args:?}: {}", out.all());
    }
    assert_eq!(t.settled_count("localhost", "bob"), 0);
    // Harmless Sendmail flags are accepted.
    sendmail(
        &t,
        &["-oem", "-odb", "-oee", "-odi", "-v", "-B", "8BITMIME", "-L", "cron", "-U", "bob@localhost"],
        "Subject: ok\n\nx\n",
    )
    .assert_success("sendmail with ignored flags");
    t.wait_one("localhost", "bob");
}

#[test]
fn an_unknown_local_recipient_exits_67_and_sends_nothing() {
    let t =
        Tern::start(&format!("{NO_AUTH_CHECKS}\n[local]\ndomains = [\"localhost\"]\nusers = [\"bob@localhost\"]\n"));
    let out = sendmail(&t, &["bob@localhost", "nobody-here@localhost"], "Subject: x\n\nbody\n");
    assert_eq!(out.code(), Some(67), "{}", out.all());
    assert_eq!(t.settled_count("localhost", "bob"), 0, "half of the recipients got it");
}

#[test]
fn bs_speaks_smtp_on_standard_input_and_output() {
    let t = Tern::start(&config());
    let script = format!(
        r#"
import subprocess, sys
p = subprocess.Popen([{bin:?}, "sendmail", "--config", {cfg:?}, "-bs"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def reply():
    lines = []
    while True:
        line = p.stdout.readline()
        if not line:
            raise SystemExit("connection closed; got %r" % lines)
        lines.append(line)
        if line[3:4] == b" ":
            return b"".join(lines).decode()
def cmd(line):
    p.stdin.write(line.encode() + b"\r\n"); p.stdin.flush()
    return reply()
assert reply().startswith("220 "), "greeting"
assert cmd("EHLO client.test").startswith("250"), "ehlo"
assert cmd("MAIL FROM:<root@tern.test>").startswith("250"), "mail"
assert cmd("RCPT TO:<bob@localhost>").startswith("250"), "rcpt"
assert cmd("DATA").startswith("354"), "data"
p.stdin.write(b"Subject: via -bs\r\n\r\nhello over stdin\r\n.\r\n"); p.stdin.flush()
r = reply()
assert r.startswith("250 ") and "queued as" in r, r
assert cmd("QUIT").startswith("221"), "quit"
p.stdin.close()
sys.exit(p.wait(timeout=20))
"#,
        bin = TERN_BIN,
        cfg = t.config_path.display().to_string()
    );
    t.python(&script).assert_success("python -bs client");
    let mail = text(&t.wait_one("localhost", "bob"));
    assert!(mail.contains("Subject: via -bs\r\n") && mail.contains("Message-ID: <"), "{mail}");
}

/// Waits until `tern queue list` shows a deferred recipient.
fn wait_deferred(t: &Tern) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.queue_list().stdout.contains("deferred") {
        assert!(Instant::now() < deadline, "nothing deferred: {}", t.queue_list().all());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn symlinks_named_sendmail_and_mailq() {
    let dead = free_port();
    let t = Tern::start(&format!("{}\n[relay.routes]\n\"remote.test\" = \"127.0.0.1:{dead}\"\n", config()));
    let mailq = link(&t, "mailq");
    let sendmail_link = link(&t, "sendmail");
    let empty = via_env(&t, &mailq, &[], None);
    empty.assert_success("mailq (empty)");
    assert_eq!(empty.stdout, "Mail queue is empty\n");
    via_env(&t, &sendmail_link, &["-oi", "bob@localhost"], Some("Subject: link\n\nvia a symlink\n"))
        .assert_success("sendmail symlink");
    assert!(text(&t.wait_one("localhost", "bob")).contains("via a symlink"));
    via_env(
        &t,
        &sendmail_link,
        &["-f", "alice@tern.test", "far@remote.test", "near@remote.test"],
        Some("Subject: far\n\nx\n"),
    )
    .assert_success("sendmail to a remote domain");
    wait_deferred(&t);
    for out in [via_env(&t, &mailq, &[], None), via_env(&t, &sendmail_link, &["-bp"], None), sendmail(&t, &["-bp"], "")]
    {
        out.assert_success("mailq");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines[0], "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------", "{}", out.stdout);
        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert!(is_queue_id(first[0]) && first[1].parse::<u64>().is_ok(), "{}", out.stdout);
        assert_eq!(first.last(), Some(&"alice@tern.test"), "{}", out.stdout);
        assert!(lines[2].starts_with('(') && lines[2].ends_with(')'), "no reason line: {}", out.stdout);
        let indent = " ".repeat(41);
        assert!(lines.contains(&format!("{indent}far@remote.test").as_str()), "{}", out.stdout);
        assert!(lines.contains(&format!("{indent}near@remote.test").as_str()), "{}", out.stdout);
        assert_eq!(lines.last(), Some(&"-- 1 Kbytes in 1 Request."), "{}", out.stdout);
    }
}

#[test]
fn s_nail_sends_through_the_sendmail_symlink() {
    if !have_program("s-nail") {
        eprintln!("SKIPPED: s-nail is not installed (Debian package s-nail)");
        return;
    }
    let t = Tern::start(&config());
    let mta = link(&t, "sendmail");
    let mut cmd = Command::new("s-nail");
    cmd.args([
        "-n",
        "-#",
        "-S",
        &format!("mta={}", mta.display()),
        "-S",
        "v15-compat=no",
        "-s",
        "Greetings from s-nail",
    ])
    .args(["-r", "Alice Example <alice@tern.test>", "-b", "carol@localhost", "bob@localhost"])
    .env("TERN_CONFIG", &t.config_path)
    .env("HOME", t.path())
    .current_dir(t.path());
    run_with_input(cmd, Some(b"Hello from mailx.\n"), CLIENT_TIMEOUT).assert_success("s-nail");
    let mail = t.wait_one("localhost", "bob");
    let head = header_block(&mail);
    assert!(
        head.contains("Subject: Greetings from s-nail") && head.contains("From: Alice Example <alice@tern.test>"),
        "{head}"
    );
    assert!(mail.starts_with(b"Return-Path: <alice@tern.test>\r\n"), "{}", show(&mail));
    assert!(text(&mail).contains("Hello from mailx."));
    let copy = header_block(&t.wait_one("localhost", "carol"));
    assert!(!copy.to_lowercase().contains("bcc"), "{copy}");
}

/// Another user than root or the server's: allowed only when the socket is where it
/// can reach it, and then only as itself.
#[test]
fn other_users_send_only_as_themselves() {
    if !have_program("setpriv") {
        eprintln!("SKIPPED: setpriv (util-linux) is not installed");
        return;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("SKIPPED: needs root to run a command as nobody");
        return;
    }
    let run = tempfile::Builder::new().prefix("tern-run-").tempdir().unwrap();
    let open = |p: &Path| fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    open(run.path());
    let socket = run.path().join("submit.sock");
    let limits = "\n[limits]\nmax_messages_per_window = 1\n";
    let t = Tern::start(&format!("{}{limits}\n[sendmail]\nsocket = \"{}\"\n", config(), socket.display()));
    open(t.path());
    // Root is exempt from the rate limits, as [relay] networks are.
    for _ in 0..2 {
        sendmail(&t, &["carol@localhost"], "Subject: from root\n\nx\n").assert_success("sendmail as root");
    }
    let as_nobody = |config: &Path, args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", TERN_BIN, "sendmail", "--config"])
            .arg(config)
            .args(args)
            .current_dir("/");
        run_with_input(cmd, Some(b"Subject: from nobody\n\nhi\n"), CLIENT_TIMEOUT)
    };
    as_nobody(&t.config_path, &["bob@localhost"]).assert_success("sendmail as nobody");
    let mail = t.wait_one("localhost", "bob");
    assert!(mail.starts_with(format!("Return-Path: <nobody@{HOSTNAME}>\r\n").as_bytes()), "{}", show(&mail));
    let forged = as_nobody(&t.config_path, &["-f", "alice@localhost", "bob@localhost"]);
    assert_eq!(forged.code(), Some(77), "{}", forged.all());
    assert!(forged.stderr.contains(&format!("may send only as nobody@{HOSTNAME}")), "{}", forged.all());
    // Other users are held to them like authenticated users.
    let limited = as_nobody(&t.config_path, &["bob@localhost"]);
    assert_eq!(limited.code(), Some(75), "{}", limited.all());
    assert!(limited.stderr.contains("Rate limit"), "{}", limited.all());
    // The default socket is in the private data directory, out of other users' reach.
    let private = t.path().join("private.toml");
    let text = fs::read_to_string(&t.config_path).unwrap();
    fs::write(&private, &text[..text.find("[sendmail]").unwrap()]).unwrap();
    let refused = as_nobody(&private, &["bob@localhost"]);
    assert_eq!(refused.code(), Some(77), "{}", refused.all());
    assert!(refused.stderr.contains("permission denied"), "{}", refused.all());
    assert_eq!(t.settled_count("localhost", "bob"), 1);
    assert_eq!(t.settled_count("localhost", "carol"), 2);
}

/// `git send-email` with `--sendmail-cmd` naming the `sendmail` link, as a developer
/// mails a patch from a machine whose MTA is Tern.
#[test]
fn git_send_email_sends_a_patch_through_the_sendmail_link() {
    if !have_program("git") || !Path::new("/usr/lib/git-core/git-send-email").exists() {
        eprintln!("SKIPPED: git send-email is not installed (Debian package git-email)");
        return;
    }
    let t = Tern::start(&config());
    let mta = link(&t, "sendmail");
    let repo = t.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(&repo)
            .env("HOME", t.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Alice Example")
            .env("GIT_AUTHOR_EMAIL", "alice@tern.test")
            .env("GIT_COMMITTER_NAME", "Alice Example")
            .env("GIT_COMMITTER_EMAIL", "alice@tern.test")
            .env("TERN_CONFIG", &t.config_path);
        let out = run(cmd, CLIENT_TIMEOUT);
        out.assert_success(&format!("git {}", args.join(" ")));
        out
    };
    git(&["init", "-q", "-b", "main"]);
    fs::write(repo.join("README"), "A project.\n").unwrap();
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "Start"]);
    fs::write(repo.join("hello.txt"), "hello, world\n.\nafter a lone dot\n").unwrap();
    git(&["add", "hello.txt"]);
    git(&["commit", "-q", "-m", "Add hello.txt", "-m", "Say hello to the world."]);
    let sendmail_cmd = format!("--sendmail-cmd={} -i", mta.display());
    // (git send-email wants a dot in a domain: not bob@localhost.)
    let sent = git(&[
        "send-email",
        &sendmail_cmd,
        "--to=bob@tern.test",
        "--from=Alice Example <alice@tern.test>",
        "--envelope-sender=alice@tern.test",
        "--confirm=never",
        "--suppress-cc=all",
        "--no-annotate",
        "-1",
    ]);
    // It says what it ran, and exits 0 even when it sent nothing.
    let said = sent.all();
    assert!(said.contains("Result: OK") && said.contains(" -f alice@tern.test -i bob@tern.test"), "{said}");
    let mail = t.wait_one(HOSTNAME, "bob");
    let head = header_block(&mail);
    assert!(mail.starts_with(b"Return-Path: <alice@tern.test>\r\n"), "{}", show(&mail));
    for want in [
        "From: Alice Example <alice@tern.test>\r\n",
        "To: bob@tern.test\r\n",
        "Subject: [PATCH] Add hello.txt\r\n",
        "X-Mailer: git-send-email ",
        "MIME-Version: 1.0\r\n",
        "Received: by tern.test (Tern, from userid 0 root)",
    ] {
        assert!(head.contains(want), "no {want:?} in:\n{head}");
    }
    assert!(head.contains("\r\nMessage-ID: <") && head.contains("\r\nDate: "), "{head}");
    // The patch arrives whole, its lone dot included (-i).
    let body = text(split_message(&mail).1);
    for want in ["Say hello to the world.\r\n", "\r\n+hello, world\r\n+.\r\n+after a lone dot\r\n", "hello.txt | 3 +++"]
    {
        assert!(body.contains(want), "no {want:?} in:\n{body}");
    }
}
