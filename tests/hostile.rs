//! Hostile clients: random bytes, 64 KiB lines, NULs, invalid UTF-8,
//! half-open connections and thousands of idle connections. After each, Tern
//! must still be running, still answer a normal client, and keep its memory
//! bounded. Every loop here is bounded in count and in time.

mod common;

use common::security::*;
use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

const CAROL: &str = "carol@local.test";

/// Options for these tests: strangers on loopback, no peer.
fn opts(extra: &'static str) -> Opts<'static> {
    Opts { peer: false, extra, ..Opts::default() }
}

/// Tern is alive and delivers a normal message sent with swaks.
#[track_caller]
fn assert_healthy(m: &mut Mta, user: &str) {
    assert!(m.t.is_running(), "tern is no longer running\n{}", m.t.logs());
    let token = format!("healthy-{}", fastrand::u64(..));
    let out = m.swaks(
        Port::Smtp,
        &["-f", "someone@elsewhere.test", "-t", &format!("{user}@{LOCAL}"), "--header", &format!("Subject: {token}")],
    );
    out.assert_success("swaks after hostile input");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = find_token(&m.t.maildir(LOCAL, user), &token);
        if !found.is_empty() {
            assert_eq!(found.len(), 1, "{found:?}");
            break;
        }
        assert!(Instant::now() < deadline, "swaks's message was not delivered\n{}", m.t.logs());
        thread::sleep(Duration::from_millis(50));
    }
}

/// A reply line looks like `ddd text` or `ddd-text`.
fn well_formed(r: &Reply) -> bool {
    r.lines.iter().all(|l| {
        let b = l.as_bytes();
        b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-')
    })
}

/// The server's resident memory in KiB (VmRSS of /proc/PID/status).
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Raises this process's open-file limit to at least `want` (up to the hard limit).
fn raise_nofile(want: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

#[test]
fn random_bytes_are_survived() {
    let mut m = Mta::start(opts("[limits]\nmax_bad_commands = 10\n"));
    let seed = fastrand::u64(..);
    eprintln!("random bytes seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + Duration::from_secs(20);
    for round in 0..12 {
        assert!(Instant::now() < deadline, "random rounds took too long");
        let port = match round % 3 {
            0 => Port::Smtp,
            1 => Port::Submission,
            _ => Port::Submissions,
        };
        let mut tcp = TcpStream::connect(("127.0.0.1", m.port(port))).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        tcp.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let len = 1 + rng.usize(..64 * 1024);
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk);
        // Some rounds after a proper EHLO, to reach the command parser in state.
        if port == Port::Smtp && round % 2 == 0 {
            let _ = tcp.write_all(b"EHLO fuzzer.test\r\n");
            thread::sleep(Duration::from_millis(50));
        }
        let _ = tcp.write_all(&junk);
        // Read what comes back until the server closes or goes quiet.
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 8192];
        while Instant::now() < until {
            match tcp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    break;
                }
                Err(_) => break,
            }
        }
        if port != Port::Submissions {
            // Plain text replies only, each well formed.
            let text = String::from_utf8_lossy(&got);
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                let b = line.as_bytes();
                assert!(
                    b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-'),
                    "round {round} (seed {seed}): malformed reply line {line:?}"
                );
            }
        }
    }
    assert_eq!(m.t.all_delivered().len(), 0, "random bytes produced a message: {:?}", m.t.all_delivered());
    assert_healthy(&mut m, "carol");
}

#[test]
fn long_lines_are_refused_once_each() {
    let mut m = Mta::start(opts("[limits]\nmax_bad_commands = 5\n"));
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    // One 64 KiB line: one refusal, not one per 1000 bytes.
    let mut line = vec![b'A'; 64 * 1024];
    line.extend_from_slice(b"\r\nNOOP\r\n");
    s.send(&line).expect("send");
    let r = s.reply();
    assert_eq!((r.code, r.has("5.5.2")), (500, true), "{r:?}");
    let r = s.reply();
    assert_eq!(r.code, 250, "NOOP after the long line: {r:?}");
    // A long line as the AUTH response, and inside a message.
    let mut s = m.tls(Port::Submission);
    assert_eq!(s.cmd("AUTH PLAIN").code, 334);
    let mut auth = vec![b'Q'; 64 * 1024];
    auth.extend_from_slice(b"\r\n");
    s.send(&auth).expect("send");
    let r = s.reply();
    assert_eq!(r.code / 100, 5, "{r:?}");
    assert_eq!(s.cmd("NOOP").code, 250);
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    let body = format!("Subject: long body line\r\n\r\n{}\r\nend\r\n", "L".repeat(64 * 1024));
    match s.mail("someone@elsewhere.test", &[CAROL], body.as_bytes()) {
        Ok(r) => eprintln!("64 KiB body line accepted: {r:?}"),
        Err(r) => assert!(r.code >= 500 && well_formed(&r), "{r:?}"),
    }
    assert_eq!(s.cmd("NOOP").code, 250, "session lost after a long body line");
    // Many long lines: the bad-command limit ends the session.
    let mut s = m.connect(Port::Smtp);
    let mut flood = Vec::new();
    for _ in 0..16 {
        flood.extend(std::iter::repeat_n(b'Z', 64 * 1024));
        flood.extend_from_slice(b"\r\n");
    }
    let _ = s.send(&flood);
    let replies = s.replies_until_quiet(Duration::from_secs(3));
    assert!(replies.len() <= 6, "{} replies to 16 long lines", replies.len());
    let last = replies.last().expect("some reply");
    assert!(last.code == 421 && last.has("4.7.0"), "{replies:?}");
    assert!(s.wait_closed(Duration::from_secs(5)));
    assert_healthy(&mut m, "carol");
}

#[test]
fn nul_bytes_and_invalid_utf8_are_refused() {
    let mut m = Mta::start(opts("[limits]\nmax_bad_commands = 100\n"));
    let mut s = m.connect(Port::Smtp);
    for bad in [&b"EHLO cli\0ent.test\r\n"[..], b"EHLO \xff\xfe.test\r\n", b"\0\0\0\0\r\n", b"NOOP \xc3\x28\r\n"] {
        s.send(bad).expect("send");
        let r = s.reply();
        assert_eq!((r.code, r.has("5.5.2")), (500, true), "{bad:?}: {r:?}");
    }
    s.ehlo();
    for bad in [
        &b"MAIL FROM:<a\0b@elsewhere.test>\r\n"[..],
        b"MAIL FROM:<\xff@elsewhere.test>\r\n",
        b"MAIL FROM:<x@elsewhere.test> SMTPUTF8 \xc0\xaf\r\n",
    ] {
        s.send(bad).expect("send");
        let r = s.reply();
        assert_eq!((r.code, r.has("5.5.2")), (500, true), "{bad:?}: {r:?}");
    }
    assert_eq!(s.cmd("MAIL FROM:<x@elsewhere.test> SMTPUTF8").code, 250);
    for bad in [
        &b"RCPT TO:<ca\0rol@local.test>\r\n"[..],
        b"RCPT TO:<\xc3\x28@local.test>\r\n",
        b"RCPT TO:<carol@loc\xffal.test>\r\n",
        b"RCPT TO:<\"a\0b\"@local.test>\r\n",
        b"RCPT TO:<\xed\xa0\x80@local.test>\r\n",
    ] {
        s.send(bad).expect("send");
        let r = s.reply();
        assert_eq!((r.code, r.has("5.5.2")), (500, true), "{bad:?}: {r:?}");
    }
    assert_eq!(s.cmd("RSET").code, 250);
    // In the message content, NULs and invalid UTF-8 are data: either stored
    // as sent or refused as a whole, never a crash or a cut message.
    let content = b"Subject: bytes\r\n\r\nnul:\0:end\r\nbad utf-8: \xff\xfe\xc3\x28\r\n";
    match s.mail("x@elsewhere.test", &[CAROL], content) {
        Ok(_) => {
            let stored = m.local_mail("carol", 1);
            assert!(stored[0].ends_with(content), "content changed:\n{}", show(&stored[0]));
        }
        Err(r) => assert!(r.code >= 500 && well_formed(&r), "{r:?}"),
    }
    // No mailbox was made from a broken name.
    let names: Vec<String> = fs::read_dir(m.t.mail_root().join(LOCAL))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(names.iter().all(|n| n == "carol"), "unexpected mailboxes: {names:?}");
    assert_healthy(&mut m, "carol");
}

#[test]
fn half_open_connections_are_closed_and_release_their_slots() {
    let mut m = Mta::start(opts("[limits]\nmax_connections_per_ip = 10\n"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let cases: &[(&str, &[u8])] = &[
        ("half a command", b"MAIL FR"),
        ("nothing", b""),
        ("EHLO", b"EHLO half.test\r\n"),
        ("half a command after EHLO", b"EHLO half.test\r\nRCPT T"),
        ("half a message", b"EHLO half.test\r\nMAIL FROM:<h@elsewhere.test>\r\nRCPT TO:<carol@local.test>\r\nDATA\r\n"),
    ];
    // 5 cases x 6 rounds = 30 connections, three times the per-IP limit:
    // slots must be released as the server sees each client go.
    for round in 0..6 {
        for (what, data) in cases {
            assert!(Instant::now() < deadline, "half-open rounds took too long");
            let mut tcp = TcpStream::connect(("127.0.0.1", m.t.port)).expect("connect");
            tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            // The greeting first.
            while !got.contains(&b'\n') {
                match tcp.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            assert!(got.starts_with(b"220 "), "round {round} {what}: greeting {:?}", String::from_utf8_lossy(&got));
            if data.ends_with(b"DATA\r\n") {
                // Pipelining: send up to DATA, wait for 354, then a partial message.
                tcp.write_all(&data[..16]).expect("send EHLO");
                thread::sleep(Duration::from_millis(50));
                tcp.write_all(&data[16..]).expect("send");
                thread::sleep(Duration::from_millis(100));
                tcp.write_all(b"Subject: half\r\n\r\nthis message never ends").expect("send");
            } else {
                tcp.write_all(data).expect("send");
            }
            tcp.shutdown(Shutdown::Write).expect("shutdown write");
            let start = Instant::now();
            loop {
                match tcp.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("round {round} {what}: server kept a half-open connection: {e}"),
                }
            }
            assert!(start.elapsed() < Duration::from_secs(5), "round {round} {what}: closed late");
        }
    }
    thread::sleep(Duration::from_millis(300));
    assert!(m.t.all_delivered().is_empty(), "a partial message was delivered: {:?}", m.t.all_delivered());
    let logs = m.t.logs();
    assert!(!logs.contains("refused: too many connections"), "slots were not released:\n{logs}");
    assert_healthy(&mut m, "carol");
}

#[test]
fn five_thousand_idle_connections() {
    const N: usize = 5000;
    let nofile = raise_nofile(N as u64 + 1000);
    assert!(nofile >= N as u64 + 200, "open-file limit {nofile} too low for {N} connections");
    let mut m = Mta::start(Opts {
        peer: false,
        extra: "[limits]\nmax_connections = 6000\nmax_connections_per_ip = 6000\n",
        ..Opts::default()
    });
    let pid = m.t.pid().expect("pid");
    // Warm up: one full session, so that lazily made state is counted in the baseline.
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    s.mail("warm@elsewhere.test", &[CAROL], b"Subject: warm up\r\n\r\nx\r\n").expect("warm-up message");
    assert_eq!(s.cmd("QUIT").code, 221);
    m.local_mail("carol", 1);
    thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);

    // In batches, each greeted before the next, so that the listen queue
    // (128 here) never overflows: a dropped SYN costs the client a second.
    const BATCH: usize = 100;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(40);
    let mut conns: Vec<TcpStream> = Vec::with_capacity(N);
    let (mut slow, mut slowest) = (0, Duration::ZERO);
    let mut buf = [0u8; 256];
    while conns.len() < N {
        let first = conns.len();
        for i in first..(first + BATCH).min(N) {
            assert!(Instant::now() < deadline, "only {i} connections within 40 s");
            let t0 = Instant::now();
            let tcp = TcpStream::connect(("127.0.0.1", m.t.port)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            let took = t0.elapsed();
            slowest = slowest.max(took);
            if took > Duration::from_millis(500) {
                slow += 1;
            }
            conns.push(tcp);
        }
        // Every one is greeted (so the server holds a session for each).
        for (i, tcp) in conns.iter_mut().enumerate().skip(first) {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            tcp.set_read_timeout(Some(left)).expect("timeout");
            let n = tcp.read(&mut buf).unwrap_or_else(|e| panic!("no greeting on connection {i}: {e}"));
            assert!(buf[..n].starts_with(b"220 "), "connection {i}: {:?}", String::from_utf8_lossy(&buf[..n]));
        }
    }
    let greeted = start.elapsed();
    println!("{N} connections greeted in {greeted:?}; connects slower than 500 ms: {slow}, slowest {slowest:?}");
    thread::sleep(Duration::from_millis(500));
    let during = rss_kib(pid);
    let per_conn = (during.saturating_sub(before) * 1024) / N as u64;
    println!(
        "{N} idle connections: RSS {before} KiB before, {during} KiB with them open; {per_conn} bytes per connection"
    );

    // A normal client still gets through.
    let out = m.swaks(Port::Smtp, &["-f", "someone@elsewhere.test", "-t", CAROL]);
    out.assert_success("swaks with 5000 idle connections open");
    let mails = m.t.wait_mail_within(LOCAL, "carol", 2, Duration::from_secs(15));
    assert_eq!(mails.len(), 2);
    assert!(m.t.is_running());
    assert!(per_conn < 64 * 1024, "{per_conn} bytes of RSS per idle connection");

    drop(conns);
    thread::sleep(Duration::from_millis(500));
    let mut s = m.connect(Port::Smtp);
    assert_eq!(s.cmd("QUIT").code, 221);
    let after = rss_kib(pid);
    println!("RSS after closing them: {after} KiB");
}

/// A command line must be complete within `command_timeout` of its first byte,
/// however often its bytes trickle in.
#[test]
fn a_trickled_command_line_times_out_from_its_first_byte() {
    const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[limits]\ncommand_timeout = \"2s\"\n"));
    let mut raw = Raw::connect(t.port);
    assert_eq!(raw.reply().code, 220);
    // "EHLO x" and then more x, one byte every 500 ms, never a line end.
    let bytes = b"EHLO ".iter().copied().chain(std::iter::repeat(b'x'));
    let first = Instant::now();
    let mut reply = None;
    for byte in bytes {
        if raw.send(&[byte]).is_err() || first.elapsed() > Duration::from_secs(15) {
            break;
        }
        reply = raw.try_reply(Duration::from_millis(500));
        if reply.is_some() || raw.closed {
            break;
        }
    }
    let elapsed = first.elapsed();
    let reply = reply.unwrap_or_else(|| panic!("no reply within {elapsed:?}\n{}", t.logs()));
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.has("4.4.2"), "{reply:?}");
    assert!(elapsed >= COMMAND_TIMEOUT - Duration::from_millis(100), "closed after only {elapsed:?}");
    assert!(elapsed < COMMAND_TIMEOUT + Duration::from_millis(1500), "closed only after {elapsed:?}");
    assert!(raw.wait_closed(Duration::from_secs(5)), "the connection stays open after the 421");
}
