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
