//! The database failing under a Tern node, end to end with a real PostgreSQL: a
//! COMMIT cut off mid-flight, serialization failures and deadlocks, TLS to the
//! database, and a failover to a streaming standby. Every message acknowledged with
//! 250 must reach the sink (Postfix's smtp-sink) exactly once.

mod common;

use common::cluster::{DumpSink, Load, duplicates, wait_delivered};
use common::outbound::wait_for;
use common::postgres::Postgres;
use common::{NO_AUTH_CHECKS, Tern, have_program};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A node's configuration: `database`, relaying everything to `sink`.
fn node_toml(database: &str, sink: &DumpSink, extra: &str) -> String {
    format!(
        "\n[cluster]\ndatabase = \"{database}\"\nnode = \"mx1\"\nlease = \"3s\"\n{extra}{NO_AUTH_CHECKS}\n\
         [relay]\nsmarthost = \"127.0.0.1:{}\"\ntls = \"none\"\n\n[queue]\nretry = [\"1s\"]\nconcurrency = 8\n",
        sink.port
    )
}

/// PostgreSQL and smtp-sink, or None after saying SKIPPED.
fn database_and_sink(test: &str) -> Option<(Postgres, DumpSink)> {
    if !have_program("/usr/sbin/smtp-sink") {
        println!("SKIPPED: {test}: smtp-sink (postfix) is not installed");
        return None;
    }
    if !have_program("python3") {
        println!("SKIPPED: {test}: python3 is not installed");
        return None;
    }
    let pg = Postgres::start(test)?;
    Some((pg, DumpSink::start()))
}

/// A node on `database` whose schema is made by its own `tern cluster init`.
fn start_node(database: &str, sink: &DumpSink, extra: &str) -> Tern {
    let mut t = Tern::new_stopped(&node_toml(database, sink, extra), &[]);
    t.tern_cmd(&["cluster", "init"]).assert_success("cluster init");
    t.start_again();
    t
}

/// A TCP proxy to PostgreSQL that reads the frontend's side of the wire protocol
/// (after the startup packet, a type byte and a 4-byte length per message) and cuts
/// the connection at every other simple-query `COMMIT` of a transaction that inserted
/// into `messages` (so that the node's next try goes through): `before` times without
/// forwarding it, then `after` times once the server's answer arrived (the COMMIT
/// happened, the node never hears it).
struct CommitCutter {
    port: u16,
    cuts: Arc<Cuts>,
    stop: Arc<AtomicBool>,
}

/// What the connections of a [`CommitCutter`] share.
#[derive(Default)]
struct Cuts {
    after: AtomicUsize,
    before: AtomicUsize,
    /// Connections cut so far.
    cut: AtomicUsize,
    /// Commits of new messages seen, cut or not.
    seen: AtomicUsize,
    /// New connections are closed at once (the database unreachable) after a cut.
    refuse_after_cut: AtomicBool,
    refusing: AtomicBool,
}

impl CommitCutter {
    fn start(upstream: u16) -> CommitCutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cutter = CommitCutter { port, cuts: Arc::default(), stop: Arc::default() };
        let (cuts, stop) = (cutter.cuts.clone(), cutter.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if !cuts.refusing.load(Ordering::SeqCst) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                        let cuts = cuts.clone();
                        std::thread::spawn(move || relay(client, server, &cuts));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        cutter
    }

    fn url(&self) -> String {
        format!("postgres://tern@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }
}

impl Drop for CommitCutter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Takes one from `counter` if it is above zero.
fn take(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

/// One proxied connection: the frontend's messages parsed, the backend's passed on
/// until a cut.
fn relay(mut client: TcpStream, mut server: TcpStream, cuts: &Arc<Cuts>) {
    let cutting = Arc::new(Mutex::new(false));
    let (mut from_server, mut to_client) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    let (answer_cut, cuts_back) = (cutting.clone(), cuts.clone());
    let (close_client, close_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            let n = match from_server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // The answer to a COMMIT to cut: dropped, and the connection with it.
            if *answer_cut.lock().unwrap() {
                if cuts_back.refuse_after_cut.load(Ordering::SeqCst) {
                    cuts_back.refusing.store(true, Ordering::SeqCst);
                }
                cuts_back.cut.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if to_client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = close_client.shutdown(Shutdown::Both);
        let _ = close_server.shutdown(Shutdown::Both);
    });

    let read_exact = |s: &mut TcpStream, n: usize| -> Option<Vec<u8>> {
        let mut v = vec![0; n];
        s.read_exact(&mut v).ok().map(|_| v)
    };
    // The startup packet (no type byte): a length, then the rest.
    let Some(len) = read_exact(&mut client, 4) else { return };
    let n = u32::from_be_bytes(len[..4].try_into().unwrap()) as usize;
    let Some(rest) = read_exact(&mut client, n.saturating_sub(4)) else { return };
    if server.write_all(&len).and_then(|_| server.write_all(&rest)).is_err() {
        return;
    }
    let mut inserted = false;
    // Prepared statements (by name) that insert into `messages`: their Parse carries
    // the text once per connection, each Bind after only the name.
    let mut inserting: Vec<Vec<u8>> = Vec::new();
    let cstring = |b: &[u8]| b.split(|&c| c == 0).next().unwrap_or_default().to_vec();
    while let Some(head) = read_exact(&mut client, 5) {
        let n = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let Some(body) = read_exact(&mut client, n.saturating_sub(4)) else { break };
        if body.windows(20).any(|w| w == b"INSERT INTO messages") {
            inserted = true;
            if head[0] == b'P' {
                inserting.push(cstring(&body));
            }
        }
        if head[0] == b'B' {
            // Bind: the portal's name, then the statement's.
            let portal = cstring(&body);
            let statement = cstring(&body[(portal.len() + 1).min(body.len())..]);
            inserted |= !statement.is_empty() && inserting.contains(&statement);
        }
        let commit = head[0] == b'Q' && body.starts_with(b"COMMIT\0");
        let odd = commit && inserted && cuts.seen.fetch_add(1, Ordering::SeqCst).is_multiple_of(2);
        if odd && take(&cuts.before) {
            cuts.cut.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if odd && take(&cuts.after) {
            *cutting.lock().unwrap() = true;
        }
        if commit {
            inserted = false;
        }
        if server.write_all(&head).and_then(|_| server.write_all(&body)).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// The connection drops while COMMIT is in flight: after the server committed (the
/// node must find that out and answer 250, not 451, which would have the client send
/// it again) and before it saw the COMMIT (the node tries again). Either way each
/// message is stored and delivered once.
#[test]
fn commit_cut_off_is_settled() {
    let Some((pg, sink)) = database_and_sink("commit_cut_off_is_settled") else { return };
    let proxy = CommitCutter::start(pg.port);
    let node = start_node(&proxy.url(), &sink, "");
    proxy.cuts.after.store(3, Ordering::SeqCst);
    proxy.cuts.before.store(2, Ordering::SeqCst);
    let (acked, failed) = Load::start(&[node.port], 12, 1, "cut").finish(Duration::from_secs(60));
    assert_eq!(proxy.cuts.cut.load(Ordering::SeqCst), 5, "{}", node.logs());
    assert!(failed.is_empty(), "{failed:?}\n{}", node.logs());
    assert_eq!(acked.len(), 12);
    let counts = wait_delivered(&sink, &pg, &acked, Duration::from_secs(30), || node.logs());
    assert_eq!(counts.len(), 12, "{counts:?}");
    assert_eq!(duplicates(&counts), 0, "{counts:?}");
    let logs = node.logs();
    assert_eq!(logs.matches("the commit was cut off but happened").count(), 3, "{logs}");
    assert_eq!(logs.matches("(the commit did not happen)").count(), 2, "{logs}");
}

/// A COMMIT cut off after the server committed, and the database unreachable while
/// the node looks for the outcome: the client gets 451 once the lookup gives up (30
/// s) and the node logs the message as possibly delivered twice. Once the database
/// is back, the node accepts again and hands the stored copy back to be delivered:
/// the client's second copy and the first both arrive.
#[test]
fn unknown_commit_outcome_is_refused() {
    let Some((pg, sink)) = database_and_sink("unknown_commit_outcome_is_refused") else { return };
    let proxy = CommitCutter::start(pg.port);
    let node = start_node(&proxy.url(), &sink, "");
    proxy.cuts.refuse_after_cut.store(true, Ordering::SeqCst);
    proxy.cuts.after.store(1, Ordering::SeqCst);
    // One message, with a client that waits longer than the lookup (RFC 5321 4.5.3.2.6
    // gives the end of DATA ten minutes).
    let started = std::time::Instant::now();
    let out = node.py_within(
        "s = smtplib.SMTP('127.0.0.1', PORT, timeout=60)\ns.ehlo('client.test')\ns.mail('a@client.test')\n\
         s.rcpt('b@remote.test')\nprint(s.data(b'Message-ID: <unknown.0@cluster.test>\\r\\n\\r\\nbody\\r\\n')[0])\n",
        Duration::from_secs(90),
    );
    let took = started.elapsed();
    println!("{} after {took:?}", out.stdout.trim());
    assert_eq!(out.stdout.trim(), "451", "{}\n{}", out.all(), node.logs());
    assert!(took >= Duration::from_secs(25), "{took:?}");
    assert!(node.logs().contains("refused, so these messages may be delivered twice"), "{}", node.logs());

    proxy.cuts.refusing.store(false, Ordering::SeqCst);
    let (acked, failed) = Load::start(&[node.port], 1, 1, "unknown").finish(Duration::from_secs(60));
    assert!(failed.is_empty() && acked.len() == 1, "{failed:?}\n{}", node.logs());
    let counts = wait_delivered(&sink, &pg, &acked, Duration::from_secs(30), || node.logs());
    assert_eq!(counts["<unknown.0@cluster.test>"], 2, "the committed first copy and the client's second");
    let handed_back = |l: &str| l.contains("messages of an unknown commit handed back") && l.contains("found=1");
    assert!(node.logs().lines().any(handed_back), "{}", node.logs());
}

/// Installs a trigger on `messages` that fails a statement with `sqlstate` while the
/// sequence it draws from stays at or below `first` (a sequence is not rolled back).
fn fail_inserts(pg: &Postgres, first: i64, sqlstate: &str) {
    pg.value(&format!(
        "DROP TRIGGER IF EXISTS fault ON messages;
         DROP SEQUENCE IF EXISTS fault_seq;
         CREATE SEQUENCE fault_seq;
         CREATE OR REPLACE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('fault_seq') <= {first} THEN
             RAISE EXCEPTION 'injected failure' USING ERRCODE = '{sqlstate}';
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER fault AFTER INSERT ON messages FOR EACH STATEMENT EXECUTE FUNCTION fault();
         SELECT 1"
    ));
}

/// Serialization failures (40001) and deadlocks (40P01) are tried again: the
/// messages are accepted, once each; a failure that never passes gets 451 and leaves
/// nothing behind.
#[test]
fn serialization_failures_are_retried() {
    let Some((pg, sink)) = database_and_sink("serialization_failures_are_retried") else { return };
    let node = start_node(&pg.url(), &sink, "");
    let mut acked = Vec::new();
    for (round, code) in ["40001", "40P01"].iter().enumerate() {
        // Two failures in a row: the third try of the first message goes in.
        fail_inserts(&pg, 2, code);
        let (ok, failed) = Load::start(&[node.port], 5, 1, &format!("retry{round}")).finish(Duration::from_secs(60));
        assert!(failed.is_empty(), "{code}: {failed:?}\n{}", node.logs());
        assert_eq!(ok.len(), 5);
        assert_eq!(pg.value("SELECT last_value FROM fault_seq"), "7", "{code}: two failures, then five inserts");
        acked.extend(ok);
    }
    let counts = wait_delivered(&sink, &pg, &acked, Duration::from_secs(30), || node.logs());
    assert_eq!((counts.len(), duplicates(&counts)), (10, 0), "{counts:?}");
    assert!(node.logs().contains("database write failed; trying again"), "{}", node.logs());

    fail_inserts(&pg, i64::MAX, "40001");
    let (ok, failed) = Load::start(&[node.port], 3, 1, "never").finish(Duration::from_secs(60));
    assert!(ok.is_empty(), "250 for a message never stored: {ok:?}");
    assert!(failed.len() == 3 && failed.iter().all(|l| l.ends_with(" 451")), "{failed:?}");
    for table in ["messages", "recipients", "contents"] {
        assert_eq!(pg.value(&format!("SELECT count(*) FROM {table}")), "0", "{table} after failed inserts");
    }
    assert!(!sink.counts().keys().any(|id| id.contains("never")));
}

/// A node on `database` relaying to `sink`, not started.
fn node_on(database: &str, sink: &DumpSink, extra: &str) -> Tern {
    Tern::new_stopped(&node_toml(database, sink, extra), &[])
}

/// Sends `n` messages tagged `tag` to `node`; all must get 250, and arrive once.
#[track_caller]
fn send_and_deliver(node: &Tern, pg: &Postgres, sink: &DumpSink, n: usize, tag: &str) {
    let (acked, failed) = Load::start(&[node.port], n, 1, tag).finish(Duration::from_secs(60));
    assert!(failed.is_empty() && acked.len() == n, "{failed:?}\n{}", node.logs());
    let counts = wait_delivered(sink, pg, &acked, Duration::from_secs(30), || node.logs());
    assert!(acked.iter().all(|id| counts[id] == 1), "{counts:?}");
}

/// TLS to the database: `verify-full` with `ca_file` works, and the node's
/// connections are encrypted (pg_stat_ssl); a CA that did not sign the server's
/// certificate, or a host name the certificate does not hold, stops the start with
/// an error that says so; `require` encrypts without a CA.
#[test]
fn tls_to_the_database() {
    let Some((pg, sink)) = database_and_sink("tls_to_the_database") else { return };
    if !have_program("openssl") {
        println!("SKIPPED: tls_to_the_database: openssl is not installed");
        return;
    }
    let ca = common::pki::TestCa::new("Tern Test Database CA");
    let (cert, key) = ca.issue("db", &["DNS:db.test", "IP:127.0.0.1"]);
    pg.enable_ssl(&cert, &key);
    let url = |host: &str, mode: &str| format!("postgres://tern@{host}:{}/postgres?sslmode={mode}", pg.port);
    let ca_file = |path: &std::path::Path| format!("ca_file = \"{}\"\n", path.display());

    let mut node = start_node(&url("127.0.0.1", "verify-full"), &sink, &ca_file(&ca.ca_file()));
    send_and_deliver(&node, &pg, &sink, 3, "verified");
    let ssl = |encrypted: bool| {
        pg.value(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'tern' AND {} s.ssl",
            if encrypted { "" } else { "NOT" }
        ))
    };
    assert_ne!(ssl(true), "0", "no encrypted connection from the node");
    assert_eq!(ssl(false), "0", "a plain connection from the node");
    node.sigterm().expect("the node stops");

    let other = common::pki::TestCa::new("Another CA");
    let refused = node_on(&url("127.0.0.1", "verify-full"), &sink, &ca_file(&other.ca_file())).tern_cmd(&["serve"]);
    assert!(!refused.success(), "{}", refused.all());
    assert!(refused.stderr.contains("certificate is not signed by a trusted CA"), "{}", refused.all());
    println!("wrong CA: {}", refused.stderr.lines().last().unwrap_or_default());

    let refused = node_on(&url("localhost", "verify-full"), &sink, &ca_file(&ca.ca_file())).tern_cmd(&["serve"]);
    assert!(!refused.success(), "{}", refused.all());
    assert!(refused.stderr.contains("certificate does not name the host"), "{}", refused.all());
    println!("wrong name: {}", refused.stderr.lines().last().unwrap_or_default());

    // verify-ca checks the chain but not the name.
    let mut node = node_on(&url("localhost", "verify-ca"), &sink, &ca_file(&ca.ca_file()));
    node.start_again();
    send_and_deliver(&node, &pg, &sink, 2, "chain");
    node.sigterm().expect("the node stops");

    let mut node = node_on(&url("127.0.0.1", "require"), &sink, "");
    node.start_again();
    send_and_deliver(&node, &pg, &sink, 2, "required");
    assert_ne!(ssl(true), "0", "no encrypted connection from the node");
    assert_eq!(ssl(false), "0", "a plain connection from the node");
}

/// A primary and its synchronous standby (`remote_apply`) behind one `database` URL
/// listing both with `target_session_attrs=read-write`. Under load the primary is
/// killed with SIGKILL and the standby promoted: meanwhile the node answers 4xx,
/// then it goes on with the new primary without a restart, and every message
/// acknowledged with 250 is delivered. Both servers are reached with TLS, each
/// checked for its own host name (`verify-full`).
#[test]
fn failover_to_a_promoted_standby() {
    let Some((primary, sink)) = database_and_sink("failover_to_a_promoted_standby") else { return };
    if !have_program("openssl") {
        println!("SKIPPED: failover_to_a_promoted_standby: openssl is not installed");
        return;
    }
    let ca = common::pki::TestCa::new("Tern Test Database CA");
    let (cert, key) = ca.issue("db", &["DNS:localhost", "IP:127.0.0.1"]);
    // The standby is a copy: the same certificate and settings.
    primary.enable_ssl(&cert, &key);
    let standby = primary.start_standby();
    let url = format!(
        "postgres://tern@127.0.0.1:{},localhost:{}/postgres?sslmode=verify-full&target_session_attrs=read-write",
        primary.port, standby.port
    );
    let node = start_node(&url, &sink, &format!("ca_file = \"{}\"\n", ca.ca_file().display()));
    let mut load = Load::start(&[node.port], 600, 4, "failover");
    load.wait_answered(100);
    primary.kill9();
    // Promoted once the node has found the standby read-only, as a failover manager
    // would after its own timeout: the node does not wait for it.
    wait_for(
        Duration::from_secs(30),
        "the node to find only a read-only standby",
        || node.logs().contains("database does not allow writes").then_some(()),
        || node.logs(),
    );
    standby.promote();
    let (acked, failed) = load.finish(Duration::from_secs(120));
    println!("{} acknowledged, {} refused", acked.len(), failed.len());
    let code = |l: &String| l.rsplit(' ').next().and_then(|c| c.parse::<u16>().ok());
    assert!(failed.iter().all(|l| code(l).is_some_and(|c| (400..500).contains(&c))), "{failed:?}\n{}", node.logs());
    assert!(acked.len() >= 100, "{}", node.logs());

    // The same node, untouched, goes on with the new primary.
    let after = wait_for(
        Duration::from_secs(30),
        "acceptance to resume on the new primary",
        || {
            let (ok, failed) = Load::start(&[node.port], 5, 1, "after").finish(Duration::from_secs(60));
            (failed.is_empty() && ok.len() == 5).then_some(ok)
        },
        || node.logs(),
    );
    let all: Vec<String> = acked.iter().chain(&after).cloned().collect();
    let counts = wait_delivered(&sink, &standby, &all, Duration::from_secs(40), || node.logs());
    let plain = "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'tern' AND NOT s.ssl";
    assert_eq!(standby.value(plain), "0", "a plain connection to the new primary");
    let dups = duplicates(&counts);
    let logs = node.logs();
    let (happened, not) = (logs.matches("cut off but happened").count(), logs.matches("did not happen").count());
    println!("duplicates: {dups}; commits cut off by the crash: {happened} had happened, {not} had not");
    // Only deliveries in flight at the crash (concurrency 8) can be made again.
    assert!(dups <= 8, "{dups} duplicates");
}
