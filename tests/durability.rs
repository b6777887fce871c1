//! Accepted mail survives restarts, SIGKILL and temporary delivery failures.

mod common;

#[cfg(feature = "fault-injection")]
use common::outbound::{wait_for, wait_queue_empty};
use common::*;
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

fn retry_fast() -> String {
    format!("{LOCAL_OPEN}\n[queue]\nretry = [\"1s\"]\n")
}

/// Makes alice's Maildir impossible to create: a regular file stands where
/// its directory should be (chmod would not stop root).
fn block_alice(t: &Tern) -> std::path::PathBuf {
    let domain_dir = t.mail_root().join("localhost");
    fs::create_dir_all(&domain_dir).unwrap();
    let obstacle = domain_dir.join("alice");
    fs::write(&obstacle, "not a maildir\n").unwrap();
    obstacle
}

/// Waits (bounded) until `tern queue list` shows a line with `id` and `state`.
#[track_caller]
fn wait_queue_state(t: &Tern, id: &str, state: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = t.queue_list();
        let text = out.all();
        if out.success() && text.contains(id) && text.contains(state) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("queue list never showed {id} as {state} within {timeout:?}:\n{text}\n{}", t.logs());
        }
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn deferred_mail_is_delivered_after_restart() {
    let mut t = Tern::new_stopped(&retry_fast(), &[]);
    let obstacle = block_alice(&t);
    t.start_again();

    let out = t.swaks(&["-f", "sender@example.org", "-t", "alice@localhost"]);
    out.assert_success("swaks");
    let id = queue_id(&out.stdout).expect("queue id");

    let listing = wait_queue_state(&t, &id, "deferred", Duration::from_secs(20));
    assert!(listing.contains("sender@example.org"), "{listing}");
    // The recipient's line gives its state and the last error.
    let line = listing
        .lines()
        .find(|l| l.contains("alice@localhost"))
        .unwrap_or_else(|| panic!("no line for alice@localhost:\n{listing}"));
    assert!(line.contains("deferred"), "{listing}");
    assert!(
        line.to_lowercase().contains("maildir") || line.to_lowercase().contains("directory"),
        "the deferral reason is not shown: {line}"
    );

    let status = t.sigterm().expect("tern did not stop on SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");

    // Still queued while the server is down.
    let listing = t.queue_list();
    listing.assert_success("queue list while stopped");
    assert!(listing.all().contains(&id), "{}", listing.all());

    fs::remove_file(&obstacle).unwrap();
    t.start_again();
    let stored = t.wait_mail_within("localhost", "alice", 1, Duration::from_secs(30));
    assert_eq!(stored.len(), 1);
    assert_eq!(received_id(&stored[0]).as_deref(), Some(id.as_str()));
    assert!(stored[0].starts_with(b"Return-Path: <sender@example.org>\r\n"));

    // Once delivered, it is no longer waiting in the queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = t.queue_list().all();
        let pending = text.lines().any(|l| l.contains("deferred") || l.contains("queued"));
        if !pending {
            break;
        }
        assert!(Instant::now() < deadline, "message still pending after delivery:\n{text}");
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn acknowledged_mail_survives_kill9_before_delivery() {
    let mut t = Tern::new_stopped(&retry_fast(), &[]);
    let obstacle = block_alice(&t);
    t.start_again();
    let out = t.py(r#"
s = connect()
for i in range(3):
    msg = ("Subject: survive %d\r\n\r\nbody %d\r\n" % (i, i)).encode()
    print(send(s, "sender@example.org", ["alice@localhost"], msg))
s.quit()
"#);
    out.assert_success("smtplib");
    let ids: Vec<String> = out.stdout.lines().filter_map(queue_id).collect();
    assert_eq!(ids.len(), 3, "{}", out.stdout);
    t.kill9();
    fs::remove_file(&obstacle).unwrap();
    t.start_again();
    let stored = t.wait_mail_within("localhost", "alice", 3, Duration::from_secs(30));
    let mut got: Vec<String> = stored.iter().filter_map(|m| received_id(m)).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "delivered ids differ from acknowledged ids");
}

const LOAD_SCRIPT: &str = r#"
import threading
DEADLINE = time.time() + 45
ACKS = os.path.join(DIR, "acks.txt")
lock = threading.Lock()
acks = open(ACKS, "a")
def worker(n):
    seq = 0
    while time.time() < DEADLINE:
        try:
            s = connect()
            s.sock.settimeout(10)
            while time.time() < DEADLINE:
                seq += 1
                tag = "w%d-%d" % (n, seq)
                msg = ("Subject: load %s\r\nX-Load-Tag: %s\r\n\r\n" % (tag, tag)).encode()
                msg += b"0123456789abcdef" * 60 + b"\r\n" + ("END-OF-MESSAGE %s\r\n" % tag).encode()
                resp = send(s, "sender@example.org", ["alice@localhost"], msg)
                qid = resp.split("queued as ")[1].split()[0]
                with lock:
                    acks.write("%s %s\n" % (qid, tag))
                    acks.flush()
        except (OSError, smtplib.SMTPException, SystemExit, IndexError):
            # The server went away (killed): stop this worker.
            return
threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print("done")
"#;

fn count_lines(p: &Path) -> usize {
    fs::read_to_string(p).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn kill9_under_load_loses_no_acknowledged_mail() {
    let mut t = Tern::start(&retry_fast());
    let acks_path = t.path().join("acks.txt");

    // Python clients that record every acknowledged queue id.
    let script = format!("{PY}\n{LOAD_SCRIPT}");
    let port = t.port;
    let dir = t.path().to_path_buf();
    let py = thread::spawn(move || {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-").env("TERN_PORT", port.to_string()).env("TERN_DIR", &dir);
        run_with_input(cmd, Some(script.as_bytes()), Duration::from_secs(90))
    });
    // Postfix's load generator alongside, to another mailbox.
    let source = have_program("/usr/sbin/smtp-source").then(|| {
        let target = format!("127.0.0.1:{port}");
        thread::spawn(move || {
            let mut cmd = std::process::Command::new("/usr/sbin/smtp-source");
            cmd.args(["-s", "4", "-m", "2000", "-l", "1024", "-f", "sender@localhost", "-t", "bob@localhost", &target]);
            run(cmd, Duration::from_secs(90))
        })
    });
    if source.is_none() {
        eprintln!("smtp-source not installed (package postfix): running without it");
    }

    // Kill once a good number of messages has been acknowledged.
    let deadline = Instant::now() + Duration::from_secs(40);
    while count_lines(&acks_path) < 400 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let before_kill = count_lines(&acks_path);
    assert!(before_kill > 0, "no message acknowledged under load\n{}", t.logs());
    t.kill9();
    let py_out = py.join().unwrap();
    assert!(!py_out.timed_out, "load script did not stop: {py_out:?}");
    if let Some(s) = source {
        let out = s.join().unwrap();
        assert!(!out.timed_out, "smtp-source did not stop");
    }

    let acks = fs::read_to_string(&acks_path).unwrap_or_default();
    let acked: Vec<(String, String)> = acks
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect();
    assert!(!acked.is_empty());
    for (id, _) in &acked {
        assert!(is_queue_id(id), "bad queue id {id:?} in 250 reply");
    }

    t.start_again();
    // Every acknowledged message must arrive.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (copies, incomplete) = loop {
        let mut copies: HashMap<String, usize> = HashMap::new();
        let mut incomplete = Vec::new();
        for p in t.new_files("localhost", "alice") {
            let Ok(m) = fs::read(&p) else { continue };
            if !contains(&m, b"END-OF-MESSAGE ") {
                incomplete.push(p.clone());
            }
            if let Some(id) = received_id(&m) {
                *copies.entry(id).or_default() += 1;
            }
        }
        let missing = acked.iter().filter(|(id, _)| !copies.contains_key(id)).count();
        if missing == 0 {
            break (copies, incomplete);
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = acked.iter().filter(|(id, _)| !copies.contains_key(id)).take(20).collect();
            panic!(
                "{} of {} acknowledged messages lost after kill -9, e.g. {missing:?}\n{}",
                acked.iter().filter(|(id, _)| !copies.contains_key(id)).count(),
                acked.len(),
                t.logs()
            );
        }
        thread::sleep(Duration::from_millis(250));
    };
    assert!(incomplete.is_empty(), "truncated deliveries: {incomplete:?}");
    for (id, tag) in &acked {
        let n = copies[id];
        assert!(n <= 2, "message {id} ({tag}) delivered {n} times");
    }
    eprintln!(
        "kill -9 under load: {} acknowledged, all delivered; {} distinct ids in the mailbox",
        acked.len(),
        copies.len()
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut t = Tern::start(LOCAL_OPEN);
    let status = t.sigterm_within(Duration::from_secs(10)).expect("tern did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigterm_with_an_idle_client_exits_zero() {
    let mut t = Tern::start(LOCAL_OPEN);
    let mut c = t.raw();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    let status = t
        .sigterm_within(Duration::from_secs(15))
        .expect("tern did not exit within 15 s of SIGTERM with a client connected");
    assert!(status.success(), "exit status {status}");
    assert!(c.wait_closed(Duration::from_secs(5)), "client connection left open");
}

#[test]
fn mail_accepted_before_sigterm_is_delivered() {
    let mut t = Tern::start(&retry_fast());
    let out = t.swaks(&["-f", "sender@example.org", "-t", "alice@localhost"]);
    out.assert_success("swaks");
    let id = queue_id(&out.stdout).expect("queue id");
    let status = t.sigterm().expect("no exit after SIGTERM");
    assert!(status.success());
    t.start_again();
    let stored = t.wait_one("localhost", "alice");
    assert_eq!(received_id(&stored).as_deref(), Some(id.as_str()));
}

/// A message whose data ends after SIGTERM is either accepted (and then
/// delivered after a restart) or refused with a temporary error: never
/// acknowledged and lost.
#[test]
fn message_in_flight_at_sigterm_is_not_lost() {
    let mut t = Tern::start(&retry_fast());
    let mut c = t.raw();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n").unwrap();
    t.send_sigterm();
    thread::sleep(Duration::from_millis(300));
    let sent_rest = c.send(b"second half\r\n.\r\n").is_ok();
    let reply = if sent_rest { c.try_reply(Duration::from_secs(15)) } else { None };
    let status = t.wait_exit(Duration::from_secs(20)).expect("tern did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
    let accepted = reply.as_ref().is_some_and(|r| r.code == 250);
    if let Some(r) = &reply {
        assert!(r.code == 250 || (400..500).contains(&r.code), "unexpected reply {r:?}");
    }
    t.start_again();
    if accepted {
        let stored = t.wait_one("localhost", "alice");
        assert!(contains(&stored, b"first half\r\nsecond half\r\n"), "{}", show(&stored));
    } else {
        assert_eq!(t.settled_count("localhost", "alice"), 0, "refused message delivered (reply {reply:?})");
    }
}

/// A full spool disk answers 452 4.3.1, the server keeps serving, nothing
/// half-written remains, and mail is accepted again once there is room.
#[test]
fn full_spool_refuses_with_452_and_recovers() {
    let mut t = Tern::new_stopped(LOCAL_OPEN, &[]);
    let Some(disk) = SmallDisk::mount(&t.data_dir.join("spool")) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    t.start_again();
    let send = |t: &Tern, subject: &str| {
        t.python(&format!(
            r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
try:
    s.sendmail("bob@localhost", ["alice@localhost"], "Subject: {subject}\r\n\r\n" + "x" * 4000 + "\r\n")
    print("accepted")
except smtplib.SMTPDataError as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
s.quit()
"#,
            port = t.port
        ))
    };
    assert!(send(&t, "first").all().contains("accepted"), "{}", t.logs());
    t.wait_mail("localhost", "alice", 1);

    let filler = disk.fill();
    let refused = send(&t, "second").all();
    assert!(refused.contains("refused 452") && refused.contains("4.3.1"), "{refused}\n{}", t.logs());
    assert!(t.is_running(), "the server must keep running");
    fs::remove_file(filler).unwrap();
    assert!(send(&t, "third").all().contains("accepted"), "{}", t.logs());
    let mail = t.wait_mail("localhost", "alice", 2);
    assert!(mail.iter().all(|m| !contains(m, b"Subject: second")));

    // Nothing of the refused message comes back after a crash and restart.
    t.kill9();
    t.start_again();
    thread::sleep(Duration::from_secs(2));
    assert_eq!(t.new_files("localhost", "alice").len(), 2, "{}", t.logs());
    assert!(t.queue_list().all().contains("queue is empty"));
    t.kill9();
}

/// Starts Tern with its first delivery attempt made to panic (`TERN_FAULTS`).
#[cfg(feature = "fault-injection")]
fn start_with_panicking_attempt(retry: &str) -> Tern {
    let mut t = Tern::new_stopped(&format!("{LOCAL_OPEN}\n[queue]\nretry = [\"{retry}\"]\n"), &[]);
    t.set_env("TERN_FAULTS", "attempt=panic*1");
    t.start_again();
    t
}

/// Waits (bounded) until the log reports the panicked attempt of `id`.
#[cfg(feature = "fault-injection")]
#[track_caller]
fn wait_panic_logged(t: &Tern, id: &str) {
    wait_for(
        Duration::from_secs(20),
        "the panicked attempt in the log",
        || {
            let logs = t.logs();
            logs.lines().any(|l| l.contains("delivery attempt failed") && l.contains(id)).then_some(())
        },
        || t.logs(),
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panicking_attempt_is_retried() {
    let t = start_with_panicking_attempt("1s");
    let out = t.swaks(&["-f", "sender@example.org", "-t", "alice@localhost"]);
    out.assert_success("swaks");
    let id = queue_id(&out.stdout).expect("queue id");
    wait_panic_logged(&t, &id);
    let logs = t.logs();
    assert!(logs.contains("fault injected at attempt"), "the log gives the panic's text:\n{logs}");
    let mail = t.wait_mail_within("localhost", "alice", 1, Duration::from_secs(20));
    assert_eq!(mail.len(), 1);
    wait_queue_empty(&t, Duration::from_secs(10));
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_message_whose_attempt_panicked_can_be_deleted() {
    // The retry is far off: after the panic the message waits in the queue.
    let t = start_with_panicking_attempt("1h");
    let out = t.swaks(&["-f", "sender@example.org", "-t", "alice@localhost"]);
    out.assert_success("swaks");
    let id = queue_id(&out.stdout).expect("queue id");
    wait_panic_logged(&t, &id);
    let delete = t.tern_cmd(&["queue", "delete", &id]);
    delete.assert_success("tern queue delete after a panicked attempt");
    wait_queue_empty(&t, Duration::from_secs(10));
    assert!(t.new_files("localhost", "alice").is_empty(), "a deleted message was delivered");
}
