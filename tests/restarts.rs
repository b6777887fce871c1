//! A finished message stays finished across restarts: delivered, deleted or bounced
//! mail never comes back while an older message stays deferred beside it.
//!
//! The scenario of the first report: `m@up.test` and `n@down.test` wait while both
//! next hops are down; then `up.test` comes up and M is finished (delivered, deleted
//! or bounced) while N stays deferred, and Tern is restarted five times.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// How M ends.
#[derive(Clone, Copy, PartialEq)]
enum Finish {
    Delivered,
    Deleted,
    Bounced,
}

fn sender_config(up: u16, down: u16, segment_size: Option<u64>) -> String {
    let spool = segment_size.map(|s| format!("\n[spool]\nsegment_size = {s}\n")).unwrap_or_default();
    format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"1s\"]\n\n[relay]\nnetworks = [\"127.0.0.0/8\"]\n\n[relay.routes]\n\
         \"up.test\" = \"127.0.0.1:{up}\"\n\"down.test\" = \"127.0.0.1:{down}\"\n{spool}"
    )
}

/// The server for `up.test`: it accepts `m@up.test` only.
fn start_up(port: u16) -> Tern {
    Tern::start(&format!(
        "\n[local]\ndomains = [\"up.test\"]\naccept_unknown = false\nusers = [\"m@up.test\"]\n\n\
         [[listen]]\naddr = \"127.0.0.1:{port}\"\nmode = \"smtp\"\n"
    ))
}

/// Attempts so far for the deferred recipient `n@down.test`, from `tern queue list`.
fn attempts_of_n(t: &Tern) -> Option<u32> {
    let text = t.queue_list().all();
    let line = text.lines().find(|l| l.contains("n@down.test:"))?;
    let rest = line.split("attempts: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Waits until N has been tried at least `n` times in all.
#[track_caller]
fn wait_attempts(t: &Tern, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while attempts_of_n(t).is_none_or(|a| a < n) {
        assert!(
            Instant::now() < deadline,
            "n@down.test never reached {n} attempts:\n{}\n{}",
            t.queue_list().all(),
            t.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send(t: &Tern, to: &str) -> String {
    let out = t.swaks(&["-f", "sender@localhost", "-t", to]);
    out.assert_success("swaks");
    queue_id(&out.stdout).expect("queue id")
}

fn scenario(finish: Finish, segment_size: Option<u64>) {
    let (up, down) = (free_port(), free_port());
    let mut t = Tern::start(&sender_config(up, down, segment_size));
    let to = if finish == Finish::Bounced { "nobody@up.test" } else { "m@up.test" };
    let m = send(&t, to);
    let n = send(&t, "n@down.test");
    wait_attempts(&t, 1);
    if finish == Finish::Deleted {
        t.tern_cmd(&["queue", "delete", &m]).assert_success("queue delete");
    }
    assert!(t.sigterm().is_some_and(|s| s.success()), "tern did not stop cleanly\n{}", t.logs());

    let receiver = start_up(up);
    t.start_again();
    match finish {
        Finish::Delivered => drop(receiver.wait_mail_within("up.test", "m", 1, Duration::from_secs(30))),
        Finish::Bounced => drop(t.wait_mail_within("localhost", "sender", 1, Duration::from_secs(30))),
        Finish::Deleted => {}
    }
    let mut tries = attempts_of_n(&t).unwrap_or(0);
    for _ in 0..5 {
        // M is finished; only N waits.
        let listing = t.queue_list().all();
        assert!(!listing.contains(&m), "{m} is back in the queue:\n{listing}");
        assert!(listing.contains(&n), "{n} is gone:\n{listing}");
        assert!(t.sigterm().is_some_and(|s| s.success()), "tern did not stop cleanly\n{}", t.logs());
        t.start_again();
        // A resurrected M would be tried at start, together with N.
        tries += 1;
        wait_attempts(&t, tries);
        tries = attempts_of_n(&t).unwrap_or(tries);
    }
    let copies = receiver.all_delivered().len();
    let notices = t.all_delivered().len();
    match finish {
        Finish::Delivered => assert_eq!((copies, notices), (1, 0), "M delivered {copies} times"),
        Finish::Deleted => assert_eq!((copies, notices), (0, 0), "deleted M delivered {copies} times"),
        Finish::Bounced => assert_eq!((copies, notices), (0, 1), "M bounced {notices} times"),
    }
}

#[test]
fn delivered_mail_stays_delivered() {
    scenario(Finish::Delivered, None);
}

#[test]
fn delivered_mail_stays_delivered_with_small_segments() {
    scenario(Finish::Delivered, Some(4096));
}

#[test]
fn deleted_mail_stays_deleted() {
    scenario(Finish::Deleted, None);
}

#[test]
fn bounced_mail_stays_bounced() {
    scenario(Finish::Bounced, Some(4096));
}

/// Postfix's smtp-sink on 127.0.0.1:`port`, slow to answer DATA (`-w 1`), writing every
/// message it receives into its own directory.
struct SlowSink {
    _sink: common::outbound::SmtpSink,
    dumps: tempfile::TempDir,
}

impl SlowSink {
    fn start(port: u16) -> SlowSink {
        let dumps = tempfile::Builder::new().prefix("tern-dumps-").tempdir().unwrap();
        // smtp-sink drops its privileges to nobody when started as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dumps.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let template = format!("{}/%H%M%S.", dumps.path().display());
        let sink = common::outbound::SmtpSink::start("127.0.0.1", port, &["-w", "1", "-d", &template]);
        SlowSink { _sink: sink, dumps }
    }

    /// The queue id of every message received so far (from Tern's Received header).
    fn ids(&self) -> Vec<String> {
        let mut files = Vec::new();
        walk(self.dumps.path(), &mut files, 4);
        files.iter().filter_map(|f| std::fs::read(f).ok()).filter_map(|m| dumped_id(&m)).collect()
    }
}

/// The queue ids named in a message's Received headers (`id <ID>`), newest first.
fn ids_in(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    text.match_indices("id ")
        .map(|(i, _)| text[i + 3..].chars().take(16).collect::<String>())
        .filter(|cand| is_queue_id(cand))
        .collect()
}

/// The queue id of the sending Tern in a dumped message (the only Received header).
fn dumped_id(dump: &[u8]) -> Option<String> {
    ids_in(dump).into_iter().next()
}

/// Sends `n` messages of about `size` bytes to `to` in one session; returns their ids.
fn send_many(t: &Tern, to: &str, n: usize, size: usize) -> Vec<String> {
    let out = t.py_within(
        &format!(
            "s = connect()\nfor i in range({n}):\n    body = ('line %d ' % i + 'x' * 70 + '\\r\\n') * ({size} // 80)\n    \
             print(send(s, 'sender@localhost', [{to:?}], ('Subject: load %d\\r\\n\\r\\n' % i + body).encode()))\ns.quit()\n"
        ),
        Duration::from_secs(120),
    );
    out.assert_success("smtplib");
    let ids: Vec<String> = out.stdout.lines().filter_map(queue_id).collect();
    assert_eq!(ids.len(), n, "{}", out.all());
    ids
}

/// Asserts every id in `sent` arrived exactly once.
#[track_caller]
fn assert_once(sent: &[String], got: &[String]) {
    let mut counts = std::collections::HashMap::new();
    for id in got {
        *counts.entry(id.as_str()).or_insert(0) += 1;
    }
    let missing: Vec<&String> = sent.iter().filter(|id| !counts.contains_key(id.as_str())).collect();
    let repeated: Vec<(&&str, &i32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty() && repeated.is_empty(), "missing {missing:?}, delivered more than once {repeated:?}");
    assert_eq!(got.len(), sent.len());
}

/// A long queue drains to a slow peer through small segments while Tern is stopped
/// with SIGTERM every few deliveries: every message arrives once, and the deferred
/// message beside them stays queued exactly as it was.
#[test]
fn long_queue_drains_once_across_sigterms() {
    let (up, down) = (free_port(), free_port());
    let extra = format!("{}\n[queue]\nconcurrency = 8\n", sender_config(up, down, Some(65536)))
        .replacen("[queue]\nretry = [\"1s\"]\n", "", 1)
        .replacen("[queue]\n", "[queue]\nretry = [\"1s\"]\n", 1);
    let mut t = Tern::start(&extra);
    let n = send(&t, "n@down.test");
    let sent = send_many(&t, "m@up.test", 120, 20_000);
    let sink = SlowSink::start(up);
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = sink.ids().len();
        if got >= sent.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {got} of {} delivered\n{}", sent.len(), t.logs());
        // Stop once a few more have arrived since the last start.
        let target = got + 15;
        while sink.ids().len() < target.min(sent.len()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(t.sigterm().is_some_and(|s| s.success()), "tern did not stop cleanly\n{}", t.logs());
        restarts += 1;
        t.start_again();
    }
    assert!(restarts >= 3, "only {restarts} restarts");
    wait_attempts(&t, 1);
    for _ in 0..3 {
        assert!(t.sigterm().is_some_and(|s| s.success()));
        t.start_again();
    }
    let tries = attempts_of_n(&t).unwrap_or(0);
    wait_attempts(&t, tries + 1);
    assert_once(&sent, &sink.ids());
    let listing = t.queue_list().all();
    assert!(listing.contains(&n) && listing.contains("1 message(s) in queue"), "{listing}");
}

/// SIGKILL while messages are stored, delivered and compacted through small
/// segments, again and again: no acknowledged message is lost, and once the queue
/// has drained, restarts bring nothing back.
#[test]
fn kill9_during_compaction_loses_and_resurrects_nothing() {
    let (up, down) = (free_port(), free_port());
    let mut t = Tern::start(&sender_config(up, down, Some(8192)));
    let receiver = start_up(up);
    let n = send(&t, "n@down.test");
    let mut sent = Vec::new();
    for round in 0..6 {
        sent.extend(send_many(&t, "m@up.test", 15, 3000 + round * 500));
        t.kill9();
        t.start_again();
    }
    let delivered = |r: &Tern| -> Vec<String> {
        // The receiver's own Received header comes first; the sender's id is the second.
        r.all_delivered()
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|m| ids_in(&m).get(1).cloned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = delivered(&receiver);
        let all = sent.iter().all(|id| got.contains(id));
        if all && t.queue_list().all().contains("1 message(s) in queue") {
            break;
        }
        assert!(Instant::now() < deadline, "not all delivered:\n{}\n{}", t.queue_list().all(), t.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    // A kill between a remote 250 and its record may repeat a delivery; what was
    // recorded never comes back.
    let settled = delivered(&receiver).len();
    for _ in 0..4 {
        t.kill9();
        t.start_again();
        let tries = attempts_of_n(&t).unwrap_or(0);
        wait_attempts(&t, tries + 1);
    }
    assert_eq!(delivered(&receiver).len(), settled, "mail came back after restarts");
    assert!(t.queue_list().all().contains(&n));
    let spool: u64 =
        std::fs::read_dir(t.data_dir.join("spool")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(spool < 64 * 1024, "{spool} bytes left in the spool for one waiting message");
    // N's first copy was in the first segment: compaction moved it forward.
    assert!(!t.data_dir.join("spool/seg-0000000001.log").exists(), "the first segment was never compacted");
}

/// Sends one message with smtplib; `Ok(id)` when accepted, `Err(reply)` when refused.
fn try_send(t: &Tern, to: &str) -> Result<String, String> {
    let out = t.py(&format!(
        "s = connect()\ntry:\n    print(send(s, 'sender@localhost', [{to:?}], b'Subject: disk\\r\\n\\n' + b'y' * 3000 + b'\\r\\n'))\n\
         except SystemExit as e:\n    print('refused', e)\ns.quit()\n"
    ));
    let text = out.all();
    queue_id(&out.stdout).filter(|_| !text.contains("refused")).ok_or(text)
}

/// A full spool disk: new mail is refused with 452 and results that cannot be written
/// pause deliveries instead of being kept only in memory. Once space is freed,
/// service resumes for good, every acknowledged message arrives once, and the space
/// comes back.
#[test]
fn full_disk_freed_again_resumes_and_reclaims() {
    let (up, down) = (free_port(), free_port());
    let mut t = Tern::new_stopped(&sender_config(up, down, Some(65536)), &[]);
    let Some(disk) = SmallDisk::mount(&t.data_dir.join("spool")) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    t.start_again();
    let sink = SlowSink::start(up);
    let n = send(&t, "n@down.test");
    let mut sent = send_many(&t, "m@up.test", 10, 3000);
    let filler = disk.fill();
    let refused = try_send(&t, "m@up.test").expect_err("accepted on a full disk");
    assert!(refused.contains("DATA 452") && refused.contains("4.3.1"), "{refused}");
    // Results of N's attempts cannot be written: deliveries pause, the server lives.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(t.stderr_log()).unwrap_or_default().contains("deliveries paused") {
        assert!(Instant::now() < deadline, "no pause on a full disk\n{}", t.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(t.is_running());
    std::fs::remove_file(filler).unwrap();
    for _ in 0..5 {
        sent.push(
            try_send(&t, "m@up.test").unwrap_or_else(|e| panic!("refused after space was freed: {e}\n{}", t.logs())),
        );
    }
    sent.extend(send_many(&t, "m@up.test", 10, 3000));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.ids().len() < sent.len() {
        assert!(Instant::now() < deadline, "{} of {} delivered\n{}", sink.ids().len(), sent.len(), t.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(t.sigterm().is_some_and(|s| s.success()));
    t.start_again();
    let tries = attempts_of_n(&t).unwrap_or(0);
    wait_attempts(&t, tries + 1);
    assert_once(&sent, &sink.ids());
    let listing = t.queue_list().all();
    assert!(listing.contains(&n) && listing.contains("1 message(s) in queue"), "{listing}");
    let spool: u64 =
        std::fs::read_dir(t.data_dir.join("spool")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(spool < 200 * 1024, "{spool} bytes left in the spool for one waiting message");
    drop(disk);
}
