//! Message content streams to disk as it arrives: a session holds a bounded amount of
//! memory whatever the message size, the content of a message being received lives in a
//! file without a name that goes with the message (refused, dropped, killed), and the
//! in-flight budget answers 452 4.3.1 instead of growing.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SENDER: &str = "sender@example.org";
const MIB: usize = 1 << 20;

/// A message of about `size` bytes (CRLF lines, some starting with a dot) as it must be
/// stored, and its DATA form: dot-stuffed, without the terminator.
fn message(size: usize, from: &str) -> (Vec<u8>, Vec<u8>) {
    let mut content = format!("From: {from}\r\nTo: alice@localhost\r\nSubject: big\r\n\r\n").into_bytes();
    let mut i = 0u64;
    while content.len() < size {
        let dot = if i.is_multiple_of(97) { "." } else { "" };
        content
            .extend_from_slice(format!("{dot}line {i:08} {}\r\n", "abcdefghijklmnopqrstuvwxyz".repeat(3)).as_bytes());
        i += 1;
    }
    let mut wire = Vec::with_capacity(content.len() + content.len() / 50);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    (content, wire)
}

/// Files (named ones) in `dir`.
fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[track_caller]
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a transaction from `SENDER` to alice@localhost.
fn transaction(t: &Tern) -> Raw {
    let mut c = t.raw();
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    c
}

/// Waits until nearly all of `size` bytes of content are in the spill file (what the
/// session keeps in memory is the header block and two buffers), then returns how much
/// the peak RSS grew since `before`.
fn peak_growth_once_spilled(t: &Tern, size: usize, before: usize) -> usize {
    wait_until("the content in the spill file", Duration::from_secs(60), || {
        t.spill_files().iter().any(|&len| len as usize + 512 * 1024 >= size)
    });
    let growth = proc_status(t.pid().unwrap(), "VmHWM").saturating_sub(before);
    eprintln!("peak RSS growth while receiving {size} bytes: {} KiB", growth / 1024);
    growth
}

#[test]
fn twenty_mib_by_data_streams_in_bounded_memory() {
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}"));
    let (content, wire) = message(20 * MIB, SENDER);
    let mut c = transaction(&t);
    let before = proc_status(t.pid().unwrap(), "VmHWM");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&wire).expect("send the content");
    let growth = peak_growth_once_spilled(&t, content.len(), before);
    assert!(growth < 8 * MIB, "peak RSS grew by {} KiB while receiving 20 MiB", growth / 1024);
    c.send(b".\r\n").expect("send the terminator");
    let reply = c.reply();
    assert_eq!(reply.code, 250, "{reply:?}");
    wait_until("the spill file emptied", Duration::from_secs(10), || t.spilled() == 0);
    let stored = t.wait_mail_within("localhost", "alice", 1, Duration::from_secs(60)).pop().unwrap();
    assert_delivered(&stored, SENDER, &content);
    assert_eq!(names_in(&t.data_dir.join("tmp")), Vec::<String>::new());
}

#[test]
fn twenty_mib_by_bdat_streams_in_bounded_memory() {
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}"));
    let (content, _) = message(20 * MIB, SENDER);
    let mut c = transaction(&t);
    let before = proc_status(t.pid().unwrap(), "VmHWM");
    for chunk in content.chunks(MIB + 7) {
        c.send(format!("BDAT {}\r\n", chunk.len()).as_bytes()).expect("send BDAT");
        c.send(chunk).expect("send a chunk");
        let reply = c.reply();
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    let growth = peak_growth_once_spilled(&t, content.len(), before);
    assert!(growth < 8 * MIB, "peak RSS grew by {} KiB while receiving 20 MiB", growth / 1024);
    let reply = c.cmd("BDAT 0 LAST");
    assert_eq!(reply.code, 250, "{reply:?}");
    wait_until("the spill file emptied", Duration::from_secs(10), || t.spilled() == 0);
    let stored = t.wait_mail_within("localhost", "alice", 1, Duration::from_secs(60)).pop().unwrap();
    assert_delivered(&stored, SENDER, &content);
}

#[test]
fn refused_messages_leave_no_file_behind() {
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}\n[limits]\nmax_message_size = 1048576\n"));
    let (content, wire) = message(3 * MIB, SENDER);
    // DATA past the size limit: 552 at the end, on a connection that stays open.
    let mut c = transaction(&t);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&wire).expect("send the content");
    wait_until("a spill file while the message arrives", Duration::from_secs(30), || t.spilled() > 0);
    c.send(b".\r\n").unwrap();
    let reply = c.reply();
    assert_eq!((reply.code, reply.text().contains("5.3.4")), (552, true), "{reply:?}");
    assert_eq!(t.spilled(), 0, "a refused message kept its content");
    // BDAT past the limit fails its transaction at the chunk that overflows.
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    let mut codes = Vec::new();
    for chunk in content.chunks(MIB / 2) {
        c.send(format!("BDAT {}\r\n", chunk.len()).as_bytes()).unwrap();
        c.send(chunk).unwrap();
        codes.push(c.reply().code);
        if codes.last() != Some(&250) {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&552), "{codes:?}");
    assert_eq!(t.spilled(), 0, "a refused message kept its content");
    // The transaction after them is whole.
    let (small, small_wire) = message(100 * 1024, SENDER);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&small_wire).unwrap();
    assert_eq!(c.cmd(".").code, 250);
    let stored = t.wait_one("localhost", "alice");
    assert_delivered(&stored, SENDER, &small);
    assert_eq!(c.cmd("QUIT").code, 221);
    assert_eq!(t.spilled(), 0);
    assert_eq!(names_in(&t.data_dir.join("tmp")), Vec::<String>::new());
}

/// Only the header block must be held in memory: a message whose header block does
/// not fit in what is left of the budget is refused; a large body alone never is (it
/// goes to the spill file).
#[test]
fn a_spent_in_flight_budget_answers_452() {
    let t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}\n[limits]\nmax_inflight_bytes = 100000\n"));
    let (small, small_wire) = message(1024, SENDER);
    let (large, large_wire) = message(MIB, SENDER);
    let mut c = transaction(&t);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&large_wire).unwrap();
    assert_eq!(c.cmd(".").code, 250, "a large body goes to the spill file, whatever the budget");
    assert_delivered(&t.wait_one("localhost", "alice"), SENDER, &large);
    let filler: String = (0..2000).map(|i| format!("X-Filler-{i:04}: {}\r\n", "f".repeat(60))).collect();
    let big_wire = [filler.as_bytes(), &small_wire].concat();
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&big_wire).unwrap();
    let reply = c.cmd(".");
    assert_eq!(reply.code, 452, "{reply:?}");
    assert!(reply.text().contains("4.3.1"), "{reply:?}");
    assert_eq!(t.spilled(), 0);
    // The budget was given back: a message within it goes through.
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&small_wire).unwrap();
    assert_eq!(c.cmd(".").code, 250);
    let mail = t.wait_mail("localhost", "alice", 2);
    assert!(mail.iter().any(|m| m.ends_with(&small)), "the small message was not delivered");
}

/// A `[[dkim]]` table for example.org with a fresh Ed25519 key in `dir`.
fn dkim_key(dir: &Path) -> String {
    let key = dir.join("s1.example.org.pem");
    let mut cmd = Command::new("openssl");
    cmd.args(["genpkey", "-algorithm", "ED25519", "-out"]).arg(&key);
    run(cmd, CLIENT_TIMEOUT).assert_success("openssl genpkey");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "\n[[dkim]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n",
        key.display()
    )
}

#[test]
fn signed_mail_streams_too() {
    let home = tempfile::tempdir().unwrap();
    // Far less than the message: it is signed as it arrives, never read back whole.
    let t = Tern::start(&format!(
        "{LOCAL_OPEN}{NO_AUTH_CHECKS}{}\n[limits]\nmax_inflight_bytes = 450000\n",
        dkim_key(home.path())
    ));
    let (content, wire) = message(20 * MIB, SENDER);
    let mut c = transaction(&t);
    let before = proc_status(t.pid().unwrap(), "VmHWM");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&wire).unwrap();
    let growth = peak_growth_once_spilled(&t, content.len(), before);
    assert!(growth < 8 * MIB, "peak RSS grew by {} KiB while receiving 20 MiB", growth / 1024);
    let reply = c.cmd(".");
    assert_eq!(reply.code, 250, "{reply:?}");
    let stored = t.wait_mail_within("localhost", "alice", 1, Duration::from_secs(60)).pop().unwrap();
    let added = assert_delivered(&stored, SENDER, &content);
    assert!(added.contains("DKIM-Signature: ") && added.contains("d=example.org"), "{added}");
}

#[test]
fn kill_9_during_a_transfer_leaves_no_file() {
    let mut t = Tern::start(&format!("{LOCAL_OPEN}{NO_AUTH_CHECKS}"));
    let (_, wire) = message(4 * MIB, SENDER);
    let mut c = transaction(&t);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&wire).unwrap();
    wait_until("a spill file while the message arrives", Duration::from_secs(30), || t.spilled() > 0);
    t.kill9();
    drop(c);
    // A named file as a filesystem without O_TMPFILE would leave after a crash.
    let tmp = t.data_dir.join("tmp");
    fs::write(tmp.join("spill-1-1"), b"left by a crash").unwrap();
    t.start_again();
    assert_eq!(names_in(&tmp), Vec::<String>::new());
    let mode = fs::metadata(&tmp).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let list = t.queue_list();
    list.assert_success("queue list");
    assert!(!list.all().contains(SENDER), "a message half received was queued:\n{}", list.all());
}

/// The client of `thousand_slow_sessions_stay_in_bounded_memory`: N sessions, each
/// sending SIZE bytes of content in 64 KiB pieces a fifth of a second apart. Once every
/// session has sent its content it writes `half` and waits for `go` before the final
/// dots; then prints how many got 250.
const SLOW_SESSIONS: &str = r#"
import asyncio, os, sys
PORT = int(os.environ["TERN_PORT"]); DIR = os.environ["TERN_DIR"]
N, SIZE = int(sys.argv[1]), int(sys.argv[2])
PIECE = (b"x" * 78 + b"\r\n") * 820
sent = 0

async def reply(r):
    line = await r.readline()
    while line[3:4] == b"-":
        line = await r.readline()
    return line

async def session(i, go):
    global sent
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    await reply(r)
    for cmd in (b"EHLO c.test", b"MAIL FROM:<s@localhost>", b"RCPT TO:<alice@localhost>", b"DATA"):
        w.write(cmd + b"\r\n")
        await w.drain()
        code = await reply(r)
        assert code[:1] in b"23", (cmd, code)
    w.write(b"Subject: slow %d\r\n\r\n" % i)
    n = 0
    while n < SIZE:
        w.write(PIECE)
        await w.drain()
        n += len(PIECE)
        await asyncio.sleep(0.2)
    sent += 1
    if sent == N:
        open(os.path.join(DIR, "half"), "w").close()
    await go.wait()
    w.write(b".\r\n")
    await w.drain()
    code = await reply(r)
    w.close()
    return code[:3] == b"250"

async def main():
    go = asyncio.Event()
    async def watch():
        while not os.path.exists(os.path.join(DIR, "go")):
            await asyncio.sleep(0.05)
        go.set()
    watcher = asyncio.create_task(watch())
    tasks = []
    for i in range(N):
        tasks.append(asyncio.create_task(session(i, go)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    results = await asyncio.gather(*tasks)
    watcher.cancel()
    print("accepted", sum(results))

asyncio.run(main())
"#;

/// A thousand sessions each streaming 1 MiB slowly at the same time: the server's peak
/// RSS grows by less than 128 MiB while all of them hold an open message.
#[test]
fn thousand_slow_sessions_stay_in_bounded_memory() {
    const SESSIONS: usize = 1000;
    let t = Tern::start(&format!(
        "{LOCAL_OPEN}{NO_AUTH_CHECKS}\n[limits]\nmax_connections = 2000\n\n[queue]\nconcurrency = 1\n"
    ));
    let pid = t.pid().unwrap();
    let before = proc_status(pid, "VmHWM");
    let script = format!("import sys\nsys.argv = ['-', '{SESSIONS}', '{MIB}']\n{SLOW_SESSIONS}");
    let out = std::thread::scope(|scope| {
        let client = scope.spawn(|| t.python_within(&script, Duration::from_secs(300)));
        let half = t.path().join("half");
        wait_until("every session to send its content", Duration::from_secs(240), || {
            half.exists() || client.is_finished()
        });
        let growth = proc_status(pid, "VmHWM").saturating_sub(before);
        eprintln!("peak RSS growth with {SESSIONS} sessions holding 1 MiB each: {} MiB", growth >> 20);
        fs::write(t.path().join("go"), "").unwrap();
        let out = client.join().unwrap();
        assert!(half.exists(), "the client failed: {}", out.all());
        assert!(growth < 128 * MIB, "peak RSS grew by {} MiB", growth >> 20);
        out
    });
    out.assert_success("the slow sessions");
    assert!(out.stdout.contains(&format!("accepted {SESSIONS}")), "{}", out.all());
}
