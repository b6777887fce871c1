//! LMTP delivery (RFC 2033) to the real Dovecot: per-recipient results (quota
//! refusals bounce that recipient alone), Sieve filing, a stopped server deferring
//! the mail until it is back, per-domain methods, unix sockets and connection reuse.
//! Each test runs its own Dovecot from a private configuration in a temp dir.

mod common;

use common::outbound::wait_for;
use common::service::log_lines;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DOVECOT: &str = "/usr/sbin/dovecot";
const LMTP: &str = "/usr/lib/dovecot/lmtp";
const SIEVE_PLUGIN: &str = "/usr/lib/dovecot/modules/lib90_sieve_plugin.so";

/// How long Dovecot may take to listen, or to stop.
const DOVECOT_TIMEOUT: Duration = Duration::from_secs(20);

/// True when Dovecot's LMTP server (and Sieve, when `sieve`) is installed; says
/// SKIPPED otherwise.
fn have_dovecot(sieve: bool) -> bool {
    for (file, package) in [(DOVECOT, "dovecot-core"), (LMTP, "dovecot-lmtpd"), (SIEVE_PLUGIN, "dovecot-sieve")] {
        if (package != "dovecot-sieve" || sieve) && !Path::new(file).exists() {
            eprintln!("SKIPPED: {file} missing (package {package}); LMTP test not run");
            return false;
        }
    }
    true
}

/// A Dovecot serving LMTP on a loopback port and a unix socket, with Maildirs at
/// `<dir>/mail/<domain>/<user>/`, stopped on drop.
struct Dovecot {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// Connections made to see that the server listens.
    probes: usize,
}

impl Dovecot {
    /// Starts Dovecot for `users` (`alice@a.test`, quota in bytes); a Sieve script
    /// runs before each user's own when `sieve_before` is given.
    fn start(users: &[(&str, u64)], sieve_before: Option<&str>) -> Dovecot {
        let dir = tempfile::Builder::new().prefix("tern-dovecot-").tempdir().expect("tempdir");
        let d = Dovecot { port: free_port(), dir, child: None, probes: 0 };
        let root = d.path();
        for sub in ["mail", "home", "sieve"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let passwd: String =
            users.iter().map(|(user, quota)| format!("{user}:::::::userdb_quota_rule=*:storage={quota}B\n")).collect();
        fs::write(root.join("passwd"), passwd).unwrap();
        let (mail_plugins, sieve) = match sieve_before {
            Some(script) => {
                fs::write(root.join("sieve/before.sieve"), script).unwrap();
                ("$mail_plugins sieve", format!("  sieve_before = {}/sieve/before.sieve\n", root.display()))
            }
            None => ("$mail_plugins", String::new()),
        };
        let (user, group, uid, gid) = mail_user(root);
        let conf = format!(
            "base_dir = {dir}/run\n\
             state_dir = {dir}/state\n\
             log_path = {dir}/dovecot.log\n\
             info_log_path = {dir}/dovecot.log\n\
             ssl = no\n\
             protocols = lmtp\n\
             listen = 127.0.0.1\n\
             default_internal_user = {user}\n\
             default_internal_group = {group}\n\
             default_login_user = {user}\n\
             mail_uid = {uid}\n\
             mail_gid = {gid}\n\
             first_valid_uid = {uid}\n\
             mail_location = maildir:{dir}/mail/%d/%n\n\
             lda_mailbox_autocreate = yes\n\
             mail_plugins = quota\n\
             plugin {{\n  quota = maildir:User quota\n{sieve}}}\n\
             passdb {{\n  driver = passwd-file\n  args = {dir}/passwd\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {dir}/passwd\n  default_fields = home={dir}/home/%d/%n\n}}\n\
             service lmtp {{\n\
               inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
               unix_listener lmtp {{\n    path = {dir}/lmtp.sock\n    mode = 0666\n  }}\n\
             }}\n\
             protocol lmtp {{\n  mail_plugins = {mail_plugins}\n}}\n",
            dir = root.display(),
            port = d.port,
        );
        fs::write(root.join("dovecot.conf"), conf).unwrap();
        let mut d = d;
        d.run();
        d
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `doveadm` on this Dovecot's configuration: its standard output.
    fn doveadm(&self, args: &[&str]) -> String {
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(self.path().join("dovecot.conf"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run doveadm");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "doveadm {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
        text
    }

    fn socket(&self) -> PathBuf {
        self.path().join("lmtp.sock")
    }

    /// Starts the server (again) and waits until it takes connections.
    fn run(&mut self) {
        let out = fs::File::create(self.path().join("dovecot.out")).unwrap();
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(self.path().join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start dovecot");
        self.child = Some(child);
        let (port, socket, mut probes) = (self.port, self.socket(), 0);
        wait_for(
            DOVECOT_TIMEOUT,
            "Dovecot's LMTP listeners",
            || {
                let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                probes += usize::from(tcp);
                (tcp && socket.exists()).then_some(())
            },
            || self.logs(),
        );
        self.probes += probes;
    }

    /// Stops the server (SIGTERM: the master stops its processes too) and waits.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + DOVECOT_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    fn logs(&self) -> String {
        let read = |name| fs::read_to_string(self.path().join(name)).unwrap_or_default();
        format!("--- dovecot.log ---\n{}--- dovecot.out ---\n{}", read("dovecot.log"), read("dovecot.out"))
    }

    /// The messages in a user's folder (`""` for INBOX), waiting for `n`.
    #[track_caller]
    fn wait_mail(&self, user: &str, folder: &str, n: usize) -> Vec<String> {
        let (local, domain) = user.split_once('@').unwrap();
        let mut dir = self.path().join("mail").join(domain).join(local);
        if !folder.is_empty() {
            dir = dir.join(format!(".{folder}"));
        }
        let new = dir.join("new");
        wait_for(
            Duration::from_secs(30),
            &format!("{n} message(s) in {}", new.display()),
            || {
                let files = list_files(&new);
                (files.len() >= n).then(|| files.iter().map(|f| fs::read_to_string(f).unwrap()).collect())
            },
            || self.logs(),
        )
    }

    /// How many connections the LMTP server accepted from Tern (over TCP).
    fn connections(&self) -> usize {
        let log = fs::read_to_string(self.path().join("dovecot.log")).unwrap_or_default();
        log.matches(": Connect from 127.0.0.1").count() - self.probes
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The user and group Dovecot runs as, and the owner of the mail: the current
/// ones, or `nobody` when the tests run as root (Dovecot refuses root for mail).
/// The temp dir is then opened to that user.
fn mail_user(root: &Path) -> (String, String, u32, u32) {
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid != 0 {
        let id = |flag| {
            let mut c = Command::new("id");
            c.arg(flag);
            let out = run(c, CLIENT_TIMEOUT);
            out.assert_success("id");
            out.stdout.trim().to_string()
        };
        return (id("-un"), id("-gn"), uid, gid);
    }
    let nobody = 65534;
    let mut chmod = Command::new("chmod");
    chmod.arg("755").arg(root);
    run(chmod, CLIENT_TIMEOUT).assert_success("chmod");
    let mut chown = Command::new("chown");
    chown.arg("-R").arg(format!("{nobody}:{nobody}"));
    for sub in ["mail", "home", "sieve"] {
        chown.arg(root.join(sub));
    }
    run(chown, CLIENT_TIMEOUT).assert_success("chown");
    ("nobody".into(), "nogroup".into(), nobody, nobody)
}

/// Tern with `a.test` delivered over LMTP to `lmtp`, and `b.test` (senders, whose
/// notices land there) in its own Maildirs.
fn tern(lmtp: &str, extra: &str) -> Tern {
    Tern::start(&format!(
        "[local]\ndomains = [\"a.test\", \"b.test\"]\naccept_unknown = true\ndelivery = \"lmtp\"\nlmtp = \"{lmtp}\"\n\
         [local.domain_delivery]\n\"b.test\" = {{ delivery = \"maildir\" }}\n{extra}"
    ))
}

/// The value of `name=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split(' ').next()
}

/// Waits for the delivery line of `to` with `status=<status>`.
#[track_caller]
fn delivery_line(t: &Tern, to: &str, status: &str) -> String {
    wait_for(
        Duration::from_secs(30),
        &format!("a delivery line for {to} with status={status}"),
        || {
            log_lines(t, " delivery ")
                .into_iter()
                .find(|l| field(l, "to") == Some(to) && field(l, "status") == Some(status))
        },
        || t.logs(),
    )
}

#[test]
fn one_transaction_two_users_one_over_quota() {
    if !have_dovecot(false) {
        return;
    }
    let dovecot = Dovecot::start(&[("alice@a.test", 1 << 20), ("bob@a.test", 1024)], None);
    let t = tern(&dovecot.target(), "");
    let body = "a line of text that makes the message larger than a kilobyte\n".repeat(40);
    t.swaks(&[
        "-f",
        "sender@b.test",
        "-t",
        "alice@a.test,bob@a.test",
        "--header",
        "Subject: quota check",
        "--body",
        &body,
    ])
    .assert_success("swaks");
    let alice = dovecot.wait_mail("alice@a.test", "", 1);
    assert!(alice[0].contains("Subject: quota check") && alice[0].contains("a line of text"), "{}", alice[0]);
    assert!(alice[0].contains("Return-Path: <sender@b.test>"), "{}", alice[0]);
    // Dovecot's own tool reads it from the mailbox (and its index).
    let fetched = dovecot.doveadm(&["fetch", "-u", "alice@a.test", "hdr.subject body", "mailbox", "INBOX"]);
    assert!(fetched.contains("quota check") && fetched.contains("a line of text"), "{fetched}");
    let sent = delivery_line(&t, "alice@a.test", "sent");
    assert_eq!(field(&sent, "relay"), Some(format!("lmtp:{}", dovecot.target()).as_str()), "{sent}");
    let bounced = delivery_line(&t, "bob@a.test", "bounced");
    assert_eq!(field(&bounced, "dsn"), Some("5.2.2"), "{bounced}");
    // The sender's notice names bob, Dovecot's words and 5.2.2; alice is not in it.
    let dsn = String::from_utf8(t.wait_one("b.test", "sender")).unwrap();
    assert!(dsn.contains("Final-Recipient: rfc822; bob@a.test"), "{dsn}");
    assert!(dsn.contains("Status: 5.2.2"), "{dsn}");
    assert!(dsn.contains("552 5.2.2"), "{dsn}");
    assert!(!dsn.contains("Final-Recipient: rfc822; alice@a.test"), "{dsn}");
    assert!(list_files(&dovecot.path().join("mail/a.test/bob/new")).is_empty());
    let auth = format!("Authorization: Bearer {}", t.admin_token());
    let metrics = t.curl(&["-s", "-H", &auth, &format!("{}/metrics", t.admin_url())]);
    for want in [
        "tern_deliveries_total{transport=\"lmtp\",result=\"delivered\"} 1",
        "tern_deliveries_total{transport=\"lmtp\",result=\"bounced\"} 1",
    ] {
        assert!(metrics.stdout.contains(want), "{want} missing:\n{}", metrics.stdout);
    }
}

#[test]
fn sieve_files_into_a_folder() {
    if !have_dovecot(true) {
        return;
    }
    let script = "require [\"fileinto\"];\nif header :contains \"subject\" \"[lists]\" { fileinto \"Lists\"; }\n";
    let dovecot = Dovecot::start(&[("alice@a.test", 1 << 20)], Some(script));
    let t = tern(&dovecot.target(), "");
    for subject in ["[lists] weekly digest", "hello alice"] {
        t.swaks(&["-f", "sender@b.test", "-t", "alice@a.test", "--header", &format!("Subject: {subject}")])
            .assert_success("swaks");
    }
    let filed = dovecot.wait_mail("alice@a.test", "Lists", 1);
    assert!(filed[0].contains("Subject: [lists] weekly digest"), "{}", filed[0]);
    let inbox = dovecot.wait_mail("alice@a.test", "", 1);
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].contains("Subject: hello alice"), "{}", inbox[0]);
}

#[test]
fn stopped_server_defers_then_delivers_when_back() {
    if !have_dovecot(false) {
        return;
    }
    let mut dovecot = Dovecot::start(&[("alice@a.test", 1 << 20)], None);
    dovecot.stop();
    let t = tern(&dovecot.target(), "");
    t.swaks(&["-f", "sender@b.test", "-t", "alice@a.test", "--header", "Subject: while down"]).assert_success("swaks");
    let line = delivery_line(&t, "alice@a.test", "deferred");
    assert_eq!(field(&line, "dsn"), Some("4.4.1"), "{line}");
    assert!(line.contains(&format!("LMTP server {}: cannot connect", dovecot.target())), "{line}");
    let list = t.queue_list();
    assert!(list.stdout.contains("alice@a.test") && list.stdout.contains("deferred"), "{}", list.all());

    dovecot.run();
    t.tern_cmd(&["queue", "flush"]).assert_success("tern queue flush");
    let mail = dovecot.wait_mail("alice@a.test", "", 1);
    assert!(mail[0].contains("Subject: while down"), "{}", mail[0]);
    delivery_line(&t, "alice@a.test", "sent");
    wait_for(
        Duration::from_secs(15),
        "an empty queue",
        || (!t.queue_list().stdout.contains("alice@a.test")).then_some(()),
        || t.queue_list().all(),
    );
}

#[test]
fn per_domain_methods_in_one_message() {
    if !have_dovecot(false) {
        return;
    }
    let dovecot = Dovecot::start(&[("alice@a.test", 1 << 20)], None);
    let t = tern(&dovecot.target(), "");
    t.swaks(&["-f", "sender@b.test", "-t", "alice@a.test,carol@b.test", "--header", "Subject: two ways"])
        .assert_success("swaks");
    let lmtp = dovecot.wait_mail("alice@a.test", "", 1);
    assert!(lmtp[0].contains("Subject: two ways"), "{}", lmtp[0]);
    let maildir = String::from_utf8(t.wait_one("b.test", "carol")).unwrap();
    assert!(maildir.contains("Subject: two ways"), "{maildir}");
    assert_eq!(field(&delivery_line(&t, "carol@b.test", "sent"), "relay"), Some("local"));
    assert!(!t.maildir("a.test", "alice").exists(), "alice's mail went to Tern's own Maildir");
}

#[test]
fn unix_socket_server() {
    if !have_dovecot(false) {
        return;
    }
    let dovecot = Dovecot::start(&[("alice@a.test", 1 << 20)], None);
    let socket = format!("unix:{}", dovecot.socket().display());
    let t = tern(&socket, "");
    t.swaks(&["-f", "sender@b.test", "-t", "alice@a.test", "--header", "Subject: by socket"]).assert_success("swaks");
    let mail = dovecot.wait_mail("alice@a.test", "", 1);
    assert!(mail[0].contains("Subject: by socket"), "{}", mail[0]);
    let line = delivery_line(&t, "alice@a.test", "sent");
    assert_eq!(field(&line, "relay"), Some(format!("lmtp:{}", dovecot.socket().display()).as_str()), "{line}");
    assert!(dovecot.logs().contains("Connect from local"), "{}", dovecot.logs());
}

#[test]
fn two_messages_share_one_connection() {
    if !have_dovecot(false) {
        return;
    }
    let dovecot = Dovecot::start(&[("alice@a.test", 1 << 20)], None);
    let t = tern(&dovecot.target(), "");
    for n in 1..=2 {
        t.swaks(&["-f", "sender@b.test", "-t", "alice@a.test", "--header", &format!("Subject: number {n}")])
            .assert_success("swaks");
        dovecot.wait_mail("alice@a.test", "", n);
    }
    assert_eq!(dovecot.connections(), 1, "{}", dovecot.logs());
}
