//! Milters (`[[milter]]`) end to end: the real `tern` with a milter scripted in
//! Python (pymilter, tests/support/test_milter.py), the real OpenDKIM in milter
//! mode, and milters that misbehave (tests/support/bad_milter.py). Everything on
//! loopback.

mod common;

use common::dkim::{Alg, dkimpy_verify, keygen, require_dkimpy};
use common::outbound::wait_for;
use common::security::{ALICE, ALICE_PW, LOCAL, Mta, Opts};
use common::*;
use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";
const PYMILTER: &str = "/usr/lib/python3/dist-packages/Milter/__init__.py";

/// A milter process on a loopback port, killed when dropped.
struct MilterProcess {
    child: Child,
    port: u16,
}

impl MilterProcess {
    /// Runs `program args…` (the port is the program's to bind) and waits until it
    /// accepts connections.
    fn start(program: &str, args: &[&str], port: u16, log: &Path) -> MilterProcess {
        let out = fs::File::create(log).expect("milter log");
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let mut m = MilterProcess { child, port };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(
            Duration::from_secs(20),
            "the milter to listen",
            || {
                if let Ok(Some(status)) = m.child.try_wait() {
                    panic!("{program} exited: {status}\n{}", fs::read_to_string(log).unwrap_or_default());
                }
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            },
            || fs::read_to_string(log).unwrap_or_default(),
        );
        m
    }
}

impl Drop for MilterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn support(script: &str) -> String {
    format!("{}/tests/support/{script}", env!("CARGO_MANIFEST_DIR"))
}

fn milter_config(name: &str, address: &str, on_error: &str, timeout: &str) -> String {
    format!(
        "\n[[milter]]\nname = \"{name}\"\naddress = \"{address}\"\non_error = \"{on_error}\"\ntimeout = \"{timeout}\"\n"
    )
}

/// The scripted milter on a free port, logging what it saw to `<dir>/seen.jsonl`.
fn scripted(dir: &Path) -> Option<(MilterProcess, std::path::PathBuf)> {
    if !Path::new(PYMILTER).exists() {
        println!("SKIPPED: python3-milter (pymilter) is not installed");
        return None;
    }
    let port = free_port();
    let seen = dir.join("seen.jsonl");
    let (port_arg, seen_arg) = (port.to_string(), seen.display().to_string());
    let script = support("test_milter.py");
    let m = MilterProcess::start(PYTHON, &[&script, &port_arg, &seen_arg], port, &dir.join("test-milter.log"));
    Some((m, seen))
}

/// One transaction on a raw connection: the replies to MAIL, each RCPT and the
/// end of the message (none when no recipient was accepted).
fn transaction(t: &Tern, from: &str, rcpts: &[&str], msg: &str) -> (Reply, Vec<Reply>, Option<Reply>) {
    let mut s = t.raw();
    s.ehlo();
    let mail = s.cmd(&format!("MAIL FROM:<{from}>"));
    if mail.code != 250 {
        return (mail, Vec::new(), None);
    }
    let replies: Vec<Reply> = rcpts.iter().map(|r| s.cmd(&format!("RCPT TO:<{r}>"))).collect();
    if replies.iter().all(|r| r.code != 250) {
        return (mail, replies, None);
    }
    let data = s.cmd("DATA");
    assert_eq!(data.code, 354, "DATA: {data:?}");
    let msg = msg.replace('\n', "\r\n");
    s.send(&tern::delivery::remote::dot_stuff(msg.as_bytes())).expect("send the message");
    let end = s.try_reply(Duration::from_secs(60)).unwrap_or_else(|| panic!("no reply to the dot\n{}", t.logs()));
    let _ = s.send(b"QUIT\r\n");
    (mail, replies, Some(end))
}

fn message(to: &str, actions: &str, subject: &str) -> String {
    format!(
        "From: Sender <sender@localhost>\nTo: <{to}>\nSubject: {subject}\nX-Test-Action: {actions}\n\
         X-Delete-Me: gone\nMessage-ID: <{subject}@localhost>\n\nHello from the milter test.\n"
    )
}

/// The end-of-message reply of a message to `to` with these actions.
fn send(t: &Tern, to: &str, actions: &str, subject: &str) -> Reply {
    let (mail, rcpts, end) = transaction(t, "sender@localhost", &[to], &message(to, actions, subject));
    assert_eq!(mail.code, 250, "{mail:?}");
    assert_eq!(rcpts[0].code, 250, "{:?}", rcpts[0]);
    end.expect("an end-of-data reply")
}

fn trace(t: &Tern, reply: &Reply) -> String {
    let id = queue_id(&reply.text()).unwrap_or_else(|| panic!("no queue id in {reply:?}"));
    let out = t.tern_cmd(&["queue", "trace", &id]);
    out.assert_success("tern queue trace");
    out.stdout
}

#[test]
fn scripted_milter_verdicts_and_edits_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let Some((m, seen)) = scripted(dir.path()) else { return };
    let milter = milter_config("script", &format!("127.0.0.1:{}", m.port), "tempfail", "10s");
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}{milter}"));

    // Header edits, with libmilter's indices: an insert at 0 goes on top of Tern's
    // own Received field, which milters see (as Postfix's milters do).
    let r = send(&t, "hdr@localhost", "add-header, change-header, delete-header, insert-header", "edits");
    assert_eq!(r.code, 250, "{r:?}");
    let got = String::from_utf8_lossy(&t.wait_one("localhost", "hdr")).into_owned();
    assert!(got.contains("X-Milter-Added: yes\r\n"), "{got}");
    assert!(got.contains("Subject: changed by milter\r\n") && !got.contains("Subject: edits"), "{got}");
    assert!(!got.contains("X-Delete-Me"), "{got}");
    let top = got.find("X-Milter-Top: first\r\n").expect("inserted field");
    assert!(top < got.find("Received: from").expect("Received"), "{got}");
    let traced = trace(&t, &r);
    assert!(traced.contains("milter script at eom: header X-Milter-Added added"), "{traced}");

    // A new body.
    assert_eq!(send(&t, "body@localhost", "replace-body", "body").code, 250);
    let got = t.wait_one("localhost", "body");
    assert_eq!(split_message(&got).1, b"replaced body\r\n", "{}", show(&got));

    // Refusals: the milter's own reply code, a tempfail, a discard.
    let r = send(&t, "x@localhost", "reject-custom", "reject");
    assert_eq!((r.code, r.has("5.7.9 custom")), (554, true), "{r:?}");
    let r = send(&t, "x@localhost", "tempfail", "tempfail");
    assert_eq!((r.code, r.has("4.7.1")), (451, true), "{r:?}");
    let r = send(&t, "gone@localhost", "discard", "discard");
    assert_eq!(r.code, 250, "a discarded message is accepted: {r:?}");

    // Quarantine: delivered to the Junk folder, as DMARC quarantine is.
    assert_eq!(send(&t, "junk@localhost", "quarantine", "quarantine").code, 250);
    let junk = t.maildir("localhost", "junk").join(".Junk").join("new");
    let in_junk = t.wait_files_within(&junk, 1, Duration::from_secs(15));
    assert!(contains(&in_junk[0], b"Subject: quarantine"));

    // Recipients and sender.
    let msg = message(
        "kept@localhost",
        "add-rcpt:added@localhost, del-rcpt:removed@localhost, chg-from:new@localhost",
        "envelope",
    );
    let (_, rcpts, end) = transaction(&t, "sender@localhost", &["kept@localhost", "removed@localhost"], &msg);
    assert!(rcpts.iter().all(|r| r.code == 250), "{rcpts:?}");
    assert_eq!(end.as_ref().map(|r| r.code), Some(250), "{end:?}");
    for user in ["kept", "added"] {
        let got = String::from_utf8_lossy(&t.wait_one("localhost", user)).into_owned();
        assert!(got.starts_with("Return-Path: <new@localhost>"), "{user}: {got}");
    }

    // One recipient refused at RCPT, the others kept; a sender refused at MAIL.
    let msg = message("ok@localhost", "", "one-rcpt");
    let (_, rcpts, end) = transaction(&t, "sender@localhost", &["milter-reject@localhost", "ok@localhost"], &msg);
    assert_eq!(rcpts[0].code, 550, "{rcpts:?}");
    assert!(rcpts[0].has("5.7.1 recipient refused by milter"), "{rcpts:?}");
    assert_eq!((rcpts[1].code, end.map(|r| r.code)), (250, Some(250)));
    t.wait_one("localhost", "ok");
    let (mail, _, _) = transaction(&t, "milter-reject@localhost", &["ok@localhost"], &msg);
    assert_eq!(mail.code, 550, "{mail:?}");
    assert!(mail.has("sender refused by milter"), "{mail:?}");

    // Nothing of the removed recipient or the discarded message was delivered.
    assert!(t.new_files("localhost", "removed").is_empty() && t.new_files("localhost", "gone").is_empty());
    let list = t.queue_list();
    assert!(!list.stdout.contains("gone@localhost"), "{}", list.stdout);

    // What the milter was told: macros, Tern's Received field, the whole body.
    let lines: Vec<serde_json::Value> =
        fs::read_to_string(&seen).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = &lines[0];
    assert_eq!(first["client"]["j"], HOSTNAME);
    assert_eq!(first["client"]["client_addr"], "127.0.0.1");
    assert_eq!(first["client"]["if_addr"], "127.0.0.1");
    assert_eq!(first["client"]["daemon_name"], "smtp");
    assert_eq!(first["from"], "<sender@localhost>");
    assert!(first["queue_id"].as_str().is_some_and(is_queue_id), "{first}");
    assert_eq!(first["headers"][0][0], "Received");
    assert_eq!(first["body"], "Hello from the milter test.\r\n".len());
}

#[test]
fn terns_own_signature_covers_what_milters_changed() {
    let dir = tempfile::tempdir().unwrap();
    let Some((m, _)) = scripted(dir.path()) else { return };
    require_dkimpy();
    let key = keygen("a.test", "s1", Alg::Rsa);
    let milter = milter_config("script", &format!("127.0.0.1:{}", m.port), "tempfail", "10s");
    // Loopback may relay: its mail is Tern's to sign.
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}{milter}{}", key.config()));
    let msg = "From: Alice <alice@a.test>\nTo: <signed@localhost>\nSubject: to be changed\n\
               X-Test-Action: change-header, replace-body, add-header\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\
               Message-ID: <signed@a.test>\n\nthe original body\n";
    let (_, _, end) = transaction(&t, "alice@a.test", &["signed@localhost"], msg);
    assert_eq!(end.map(|r| r.code), Some(250));
    let got = t.wait_one("localhost", "signed");
    assert!(contains(&got, b"Subject: changed by milter") && split_message(&got).1 == b"replaced body\r\n");
    assert_eq!(count(&got, b"DKIM-Signature:"), 1, "one signature, made again: {}", show(&got));
    assert_eq!(dkimpy_verify(dir.path(), &got, &key), "pass", "{}", show(&got));
}

#[test]
fn opendkim_signs_submitted_mail_through_the_milter() {
    if !Path::new("/usr/sbin/opendkim").exists() {
        println!("SKIPPED: opendkim is not installed");
        return;
    }
    require_dkimpy();
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(LOCAL, "milter", Alg::Rsa);
    let port = free_port();
    let conf = dir.path().join("opendkim.conf");
    // Loopback is not an internal host here: OpenDKIM signs because Tern tells it
    // the client authenticated ({auth_authen}).
    fs::write(
        &conf,
        format!(
            "Mode s\nSyslog no\nSocket inet:{port}@127.0.0.1\nDomain {LOCAL}\nSelector milter\nKeyFile {}\n\
             InternalHosts 192.0.2.1\nRequireSafeKeys false\nCanonicalization simple/simple\n",
            key.path.display()
        ),
    )
    .unwrap();
    let conf_arg = conf.display().to_string();
    let _opendkim =
        MilterProcess::start("/usr/sbin/opendkim", &["-f", "-x", &conf_arg], port, &dir.path().join("opendkim.log"));
    let extra = format!(
        "[auth]\nallow_plaintext_loopback = true\n{}",
        milter_config("opendkim", &format!("inet:{port}@127.0.0.1"), "tempfail", "10s")
    );
    let m = Mta::start(Opts { peer: false, extra: &extra, ..Opts::default() });
    let to = format!("bob@{LOCAL}");
    // A folded field and a field without space after its colon: simple/simple
    // signing needs them sent to the milter and stored exactly as they came.
    let data = dir.path().join("message.eml").display().to_string();
    let msg = format!(
        "From: Alice <{ALICE}>\r\nTo: <{to}>\r\nSubject: signed by OpenDKIM,\r\n\tfolded\r\n\
         X-Tight:no space\r\n\r\nHello,\r\n\r\nsigned through the milter.\r\n"
    );
    fs::write(&data, msg).unwrap();
    let out = m.t.swaks(&[
        "--port",
        &m.submission.to_string(),
        "--auth",
        "PLAIN",
        "--auth-user",
        ALICE,
        "--auth-password",
        ALICE_PW,
        "-f",
        ALICE,
        "-t",
        &to,
        "--data",
        &data,
    ]);
    out.assert_success("swaks through the submission listener");
    let got = m.t.wait_one(LOCAL, "bob");
    assert!(contains(&got, b"OpenDKIM,\r\n\tfolded\r\nX-Tight:no space\r\n"), "{}", show(&got));
    assert_eq!(count(&got, b"DKIM-Signature:"), 1, "{}", show(&got));
    assert!(contains(&got, format!("d={LOCAL}").as_bytes()), "{}", show(&got));
    assert_eq!(dkimpy_verify(dir.path(), &got, &key), "pass", "{}", show(&got));

    // Mail from a stranger on port 25 is not signed.
    let (_, _, end) =
        transaction(&m.t, "someone@elsewhere.test", &[&to], "From: <someone@elsewhere.test>\nSubject: x\n\nx\n");
    assert_eq!(end.map(|r| r.code), Some(250));
    let both = m.t.wait_mail(LOCAL, "bob", 2);
    assert_eq!(both.iter().filter(|m| contains(m, b"DKIM-Signature:")).count(), 1);
}

#[test]
fn an_unreachable_milter_follows_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone.sock");
    for (on_error, address, want) in [
        ("tempfail", format!("unix:{}", gone.display()), 451),
        ("reject", format!("127.0.0.1:{}", free_port()), 550),
        ("accept", format!("127.0.0.1:{}", free_port()), 250),
    ] {
        let t =
            Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}{}", milter_config("dead", &address, on_error, "2s")));
        let (mail, _, end) =
            transaction(&t, "sender@localhost", &["rcpt@localhost"], &message("rcpt@localhost", "", "dead"));
        assert_eq!(mail.code, want, "{on_error}: {mail:?}");
        if want == 250 {
            assert_eq!(end.map(|r| r.code), Some(250));
            t.wait_one("localhost", "rcpt");
        } else {
            assert!(mail.has(if want == 451 { "4.7.1" } else { "5.7.1" }), "{mail:?}");
        }
        let logs = t.logs();
        assert_eq!(logs.matches("milter failed").count(), 1, "logged once\n{logs}");
        assert!(logs.contains("milter=dead") && logs.contains("cannot connect"), "{logs}");
    }
    // A milter for submission only is not asked about mail on port 25.
    let milter = milter_config("dead", &format!("127.0.0.1:{}", free_port()), "reject", "2s");
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}{milter}applies_to = [\"submission\"]\n"));
    let (mail, _, end) = transaction(&t, "sender@localhost", &["rcpt@localhost"], &message("rcpt@localhost", "", "x"));
    assert_eq!((mail.code, end.map(|r| r.code)), (250, Some(250)));
    assert!(!t.logs().contains("milter failed"), "{}", t.logs());
}

#[test]
fn misbehaving_milters_never_hang_crash_or_lose_mail() {
    let dir = tempfile::tempdir().unwrap();
    // (mode, on_error, where the refusal comes, its code, what the log and trace say)
    for (mode, on_error, at_mail, code, why) in [
        ("garbage", "tempfail", true, 451, "protocol error: packet length"),
        ("slow", "accept", false, 250, "timed out at eom"),
        ("close", "reject", false, 550, "closed the connection at body"),
        ("bigbody", "tempfail", false, 451, "replaced the body with more than 10000000 bytes"),
    ] {
        let port = free_port();
        let (port_arg, script) = (port.to_string(), support("bad_milter.py"));
        let _m =
            MilterProcess::start(PYTHON, &[&script, &port_arg, mode], port, &dir.path().join(format!("{mode}.log")));
        let milter = milter_config(mode, &format!("127.0.0.1:{port}"), on_error, "2s");
        let mut t =
            Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}\n[limits]\nmax_message_size = 10000000\n{milter}"));
        let started = Instant::now();
        let (mail, _, end) =
            transaction(&t, "sender@localhost", &["rcpt@localhost"], &message("rcpt@localhost", "", mode));
        let took = started.elapsed();
        // One timeout for the slow milter; a progress-free failure otherwise.
        assert!(took < Duration::from_secs(15), "{mode}: the client waited {took:?}");
        let reply = if at_mail { mail } else { end.unwrap_or_else(|| panic!("{mode}: no end of data reply")) };
        assert_eq!(reply.code, code, "{mode}: {reply:?}\n{}", t.logs());
        assert!(t.is_running(), "{mode}: tern is gone\n{}", t.logs());
        let logs = t.logs();
        let failed: Vec<&str> = logs.lines().filter(|l| l.contains("milter failed")).collect();
        assert_eq!(failed.len(), 1, "{mode}: logged once\n{logs}");
        assert!(failed[0].contains(&format!("milter={mode}")) && failed[0].contains(why), "{mode}: {}", failed[0]);
        if code == 250 {
            // Accepted despite the milter: delivered.
            t.wait_one("localhost", "rcpt");
        }
        if !at_mail {
            // The message's trace says what happened, stored or not.
            let id = failed[0].split("id=\"").nth(1).and_then(|rest| rest.get(..16)).expect("the queue id in the log");
            let out = t.tern_cmd(&["queue", "trace", id]);
            let want = format!("milter {mode} at ");
            assert!(out.stdout.contains(&want) && out.stdout.contains(why), "{mode}: {}{}", out.stdout, out.stderr);
        }
        let auth = format!("Authorization: Bearer {}", t.admin_token());
        let metrics = t.curl(&["-H", &auth, &format!("{}/metrics", t.admin_url())]);
        let series = format!("tern_milter_results_total{{milter=\"{mode}\",result=\"error\"}} 1");
        assert!(metrics.stdout.contains(&series), "{mode}: {}", metrics.stdout);
    }
}
