//! Tern nodes sharing one throwaway PostgreSQL: the schema and its migrations,
//! node membership, and the queue across nodes (acceptance, leases, failures).
//! Every node relays to one Postfix smtp-sink that writes each message it receives
//! to a file, so that Message-IDs can be counted there.

mod common;

use common::cluster::{DumpSink, Load, duplicates, wait_delivered};
use common::outbound::wait_for;
use common::postgres::Postgres;
use common::{NO_AUTH_CHECKS, Tern, have_program, walk};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `[cluster]` for a node named `node` on `pg`.
fn cluster_toml(pg: &Postgres, node: &str, lease: &str) -> String {
    format!("\n[cluster]\ndatabase = \"{}\"\nnode = \"{node}\"\nlease = \"{lease}\"\n", pg.url())
}

/// A PostgreSQL, a sink, and nodes `mx1`… relaying everything to the sink.
struct Rig {
    pg: Postgres,
    sink: DumpSink,
    nodes: Vec<Tern>,
}

impl Rig {
    /// None (after SKIPPED) without PostgreSQL or Postfix's tools.
    fn start(test: &str, nodes: usize, lease: &str) -> Option<Rig> {
        if !have_program("/usr/sbin/smtp-sink") {
            println!("SKIPPED: {test}: smtp-sink (postfix) is not installed");
            return None;
        }
        let pg = Postgres::start(test)?;
        let sink = DumpSink::start();
        let mut rig = Rig { pg, sink, nodes: Vec::new() };
        for i in 1..=nodes {
            let t = Tern::new_stopped(&rig.node_toml(&format!("mx{i}"), lease), &[]);
            if i == 1 {
                t.tern_cmd(&["cluster", "init"]).assert_success("cluster init");
            }
            rig.nodes.push(t);
        }
        for t in &mut rig.nodes {
            t.start_again();
        }
        Some(rig)
    }

    fn node_toml(&self, node: &str, lease: &str) -> String {
        format!(
            "{}{NO_AUTH_CHECKS}\n[relay]\nsmarthost = \"127.0.0.1:{}\"\ntls = \"none\"\n\n[queue]\nretry = [\"1s\"]\nconcurrency = 8\n",
            cluster_toml(&self.pg, node, lease),
            self.sink.port
        )
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|t| t.port).collect()
    }

    fn queued(&self) -> usize {
        self.pg.value("SELECT count(*) FROM messages").parse().unwrap_or(usize::MAX)
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for t in &self.nodes {
            text.push_str(&t.logs());
        }
        text.push_str(&self.sink.sink.logs());
        text
    }
}

/// Waits until the queue is empty and every acknowledged message reached the sink;
/// returns the sink's counts.
#[track_caller]
fn wait_all_delivered(rig: &Rig, acked: &[String], timeout: Duration) -> HashMap<String, usize> {
    wait_delivered(&rig.sink, &rig.pg, acked, timeout, || rig.logs())
}

#[test]
fn init_migrates_an_empty_database_once() {
    let Some(pg) = Postgres::start("init_migrates_an_empty_database_once") else { return };
    let t = Tern::new_stopped(&cluster_toml(&pg, "mx1", "3s"), &[]);
    let out = t.tern_cmd(&["cluster", "init"]);
    out.assert_success("cluster init");
    assert!(out.stdout.contains("migrated from version 0 to 3"), "{}", out.all());
    assert_eq!(pg.value("SELECT count(*) FROM schema_version"), "3");
    let again = t.tern_cmd(&["cluster", "init"]);
    again.assert_success("cluster init again");
    assert!(again.stdout.contains("nothing to do"), "{}", again.all());
    assert_eq!(pg.value("SELECT count(*) FROM schema_version"), "3");
    let status = t.tern_cmd(&["cluster", "status"]);
    status.assert_success("cluster status");
    assert!(status.stdout.contains("queue: 0 message(s)"), "{}", status.all());
}

/// A node refuses to start on a schema that was never made, on one newer than its
/// own, and under the name of a live node.
#[test]
fn start_checks_schema_and_name() {
    let Some(pg) = Postgres::start("start_checks_schema_and_name") else { return };
    let mut first = Tern::new_stopped(&cluster_toml(&pg, "mx1", "3s"), &[]);
    let serve = first.tern_cmd(&["serve"]);
    assert!(!serve.success(), "{}", serve.all());
    assert!(serve.stderr.contains("run `tern cluster init`"), "{}", serve.all());

    first.tern_cmd(&["cluster", "init"]).assert_success("cluster init");
    first.start_again();
    let twin = Tern::new_stopped(&cluster_toml(&pg, "mx1", "3s"), &[]);
    let serve = twin.tern_cmd(&["serve"]);
    assert!(!serve.success(), "{}", serve.all());
    assert!(serve.stderr.contains("another live node is named \"mx1\""), "{}", serve.all());

    // Stopped gracefully, the name is free at once.
    first.sigterm().expect("mx1 stops");
    let mut again = twin;
    again.start_again();
    again.sigterm().expect("mx1 stops again");

    pg.value("INSERT INTO schema_version (version, name) VALUES (99, 'from the future') RETURNING version");
    let serve = again.tern_cmd(&["serve"]);
    assert!(!serve.success(), "{}", serve.all());
    assert!(serve.stderr.contains("version 99, newer than this Tern's 3: upgrade Tern"), "{}", serve.all());
}

/// Three nodes, 3,000 messages sent round-robin: each reaches the sink exactly once,
/// and new messages share commits.
#[test]
fn three_nodes_deliver_every_message_once() {
    let Some(rig) = Rig::start("three_nodes_deliver_every_message_once", 3, "6s") else { return };
    let load = Load::start(&rig.ports(), 3000, 24, "once");
    let (acked, failed) = load.finish(Duration::from_secs(240));
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(acked.len(), 3000);
    let counts = wait_all_delivered(&rig, &acked, Duration::from_secs(120));
    assert_eq!(counts.len(), 3000, "{}", rig.logs());
    assert_eq!(duplicates(&counts), 0, "duplicates when nothing failed");
    // The counters reach the database with each heartbeat (every 2s with this lease).
    let stored: f64 = wait_for(
        Duration::from_secs(10),
        "every message counted in the heartbeats",
        || Some(rig.pg.value("SELECT sum(stored_messages) FROM nodes").parse::<f64>().ok()?).filter(|n| *n >= 3000.0),
        String::new,
    );
    let commits: f64 = rig.pg.value("SELECT sum(store_commits) FROM nodes").parse().unwrap();
    println!("commits per message: {:.3} ({commits} commits for {stored} messages)", commits / stored);
    let status = rig.nodes[0].tern_cmd(&["cluster", "status"]);
    status.assert_success("cluster status");
    println!("{}", status.stdout);
    for node in ["mx1", "mx2", "mx3"] {
        assert!(status.stdout.lines().any(|l| l.starts_with(node) && l.contains(" up ")), "{}", status.stdout);
    }
}

/// A node killed with SIGKILL mid-delivery, a few times: every acknowledged message
/// arrives, duplicates stay within what the dead node had in flight, and the last
/// dead node's mail is delivered by the others once its leases run out.
#[test]
fn killed_nodes_lose_nothing() {
    let Some(mut rig) = Rig::start("killed_nodes_lose_nothing", 3, "3s") else { return };
    let mut load = Load::start(&rig.ports(), 2000, 12, "kill");
    let rounds = 3;
    for round in 0..rounds {
        load.wait_answered(250);
        let node = round % 3;
        rig.nodes[node].kill9();
        load.wait_answered(100);
        if round + 1 < rounds {
            // The same name again: it waits out the dead process's lease.
            rig.nodes[node].start_again();
        }
    }
    let (acked, failed) = load.finish(Duration::from_secs(240));
    println!("{} acknowledged, {} failed", acked.len(), failed.len());
    let ended = Instant::now();
    let counts = wait_all_delivered(&rig, &acked, Duration::from_secs(60));
    let took = ended.elapsed();
    println!("all delivered {took:?} after the load ended");
    // The last dead node's leases (3s) run out, a poll finds its mail, and one retry
    // (1s) may follow; the rest is slack for a loaded machine.
    assert!(took < Duration::from_secs(15), "{took:?}");
    let dups = duplicates(&counts);
    println!("duplicates: {dups}");
    // At most once more per attempt in flight on a dead node: concurrency 8, each kill.
    assert!(dups <= rounds * 8, "{dups} duplicates");
}

/// The database stopped during acceptance: clients get 4xx, never 250; once it is
/// back, the same running nodes accept and deliver again.
#[test]
fn database_outage_refuses_then_resumes() {
    let Some(rig) = Rig::start("database_outage_refuses_then_resumes", 2, "3s") else { return };
    let (before, failed) = Load::start(&rig.ports(), 20, 2, "before").finish(Duration::from_secs(60));
    assert!(failed.is_empty() && before.len() == 20, "{failed:?}");
    wait_all_delivered(&rig, &before, Duration::from_secs(30));

    rig.pg.stop();
    let (during, failed) = Load::start(&rig.ports(), 20, 2, "during").finish(Duration::from_secs(120));
    assert!(during.is_empty(), "250 while the database was down: {during:?}");
    assert!(failed.iter().all(|l| l.ends_with(" 451")), "{failed:?}\n{}", rig.logs());
    // Refusals come fast: one client thread may have sent them all to one node.
    let refused = |t: &Tern| t.logs().contains("cannot store message; refused");
    assert!(rig.nodes.iter().any(refused), "{}", rig.logs());

    rig.pg.start_again();
    let after = wait_for(
        Duration::from_secs(30),
        "acceptance to resume",
        || {
            let (acked, failed) = Load::start(&rig.ports(), 10, 2, "after").finish(Duration::from_secs(60));
            (failed.is_empty() && acked.len() == 10).then_some(acked)
        },
        || rig.logs(),
    );
    let counts = wait_all_delivered(&rig, &after, Duration::from_secs(30));
    assert!(during.iter().all(|id| !counts.contains_key(id)));
    assert_eq!(duplicates(&counts), 0);
}

/// SIGTERM to one node at a time, each started again, under load: nothing lost.
#[test]
fn rolling_restart_loses_nothing() {
    let Some(mut rig) = Rig::start("rolling_restart_loses_nothing", 3, "3s") else { return };
    let mut load = Load::start(&rig.ports(), 1500, 12, "roll");
    for node in 0..3 {
        load.wait_answered(250);
        rig.nodes[node].sigterm().expect("node stops");
        rig.nodes[node].start_again();
    }
    let (acked, failed) = load.finish(Duration::from_secs(240));
    println!("{} acknowledged, {} failed", acked.len(), failed.len());
    let counts = wait_all_delivered(&rig, &acked, Duration::from_secs(60));
    let dups = duplicates(&counts);
    println!("duplicates: {dups}");
    assert_eq!(dups, 0, "a graceful stop finishes its attempts");
}

/// `tern cluster drain NODE`: the node takes no new deliveries (what it accepts is
/// delivered by the others) until `tern cluster resume NODE`.
#[test]
fn drained_node_takes_no_deliveries() {
    let Some(rig) = Rig::start("drained_node_takes_no_deliveries", 2, "3s") else { return };
    let sent = |t: &Tern| t.logs().matches("status=sent").count();
    let out = rig.nodes[1].tern_cmd(&["cluster", "drain", "mx1"]);
    out.assert_success("cluster drain");
    wait_for(
        Duration::from_secs(10),
        "mx1 to see its drain",
        || rig.nodes[0].logs().contains("draining=true").then_some(()),
        || rig.logs(),
    );
    let status = rig.nodes[1].tern_cmd(&["cluster", "status"]);
    assert!(status.stdout.lines().any(|l| l.starts_with("mx1") && l.contains("draining")), "{}", status.stdout);
    let before = sent(&rig.nodes[0]);
    let mx1 = [rig.nodes[0].port];
    let (acked, failed) = Load::start(&mx1, 20, 2, "drained").finish(Duration::from_secs(60));
    assert!(failed.is_empty() && acked.len() == 20, "{failed:?}");
    wait_all_delivered(&rig, &acked, Duration::from_secs(30));
    assert_eq!(sent(&rig.nodes[0]), before, "a drained node delivered:\n{}", rig.nodes[0].logs());
    assert!(sent(&rig.nodes[1]) >= 20);

    rig.nodes[1].tern_cmd(&["cluster", "resume", "mx1"]).assert_success("cluster resume");
    wait_for(
        Duration::from_secs(10),
        "mx1 to resume",
        || rig.nodes[0].logs().contains("draining=false").then_some(()),
        || rig.logs(),
    );
    let (acked, _) = Load::start(&mx1, 20, 2, "resumed").finish(Duration::from_secs(60));
    wait_all_delivered(&rig, &acked, Duration::from_secs(30));
    assert!(sent(&rig.nodes[0]) > before, "mx1 delivers again");
    let unknown = rig.nodes[1].tern_cmd(&["cluster", "drain", "mx9"]);
    assert!(!unknown.success() && unknown.stderr.contains("no node named \"mx9\""), "{}", unknown.all());
}

/// A message of several content rows (1 MiB each) is stored and read back whole.
#[test]
fn large_message_spans_content_rows() {
    let Some(rig) = Rig::start("large_message_spans_content_rows", 1, "3s") else { return };
    let out =
        rig.nodes[0].py("s = connect()\nbody = b''.join(b'%08d ' % i + b'y' * 70 + b'\\r\\n' for i in range(45000))\n\
         msg = b'Message-ID: <big@cluster.test>\\r\\nSubject: big\\r\\n\\r\\n' + body\n\
         print(len(msg))\nprint(send(s, 'a@client.test', ['b@remote.test'], msg))\ns.quit()\n");
    out.assert_success("send a large message");
    let chunks = rig.pg.value("SELECT count(*) FROM contents");
    assert!(chunks.parse::<u32>().unwrap() >= 3 || rig.queued() == 0, "{chunks} rows");
    let acked = vec!["<big@cluster.test>".to_string()];
    wait_all_delivered(&rig, &acked, Duration::from_secs(30));
    let mut files = Vec::new();
    walk(rig.sink.dumps.path(), &mut files, 2);
    let dump = std::fs::read(&files[0]).unwrap();
    for i in [0, 12345, 44999] {
        assert!(common::contains(&dump, format!("\n{i:08} {}", "y".repeat(70)).as_bytes()), "line {i} missing");
    }
    assert!(dump.len() > 45000 * 80, "{} bytes", dump.len());
}
