//! Nodes whose clocks are wrong, under libfaketime: one two hours ahead, one an
//! hour behind, one right. Leases are timed by the database's clock, so no node
//! takes a live lease for expired; due times follow the database's clock too, so a
//! retry waits its delay on every node: neither hours (a clock ahead) nor nothing
//! (a clock behind).

mod common;

use common::cluster::Load;
use common::counting_sink::CountingSink;
use common::outbound::wait_for;
use common::postgres::Postgres;
use common::{NO_AUTH_CHECKS, Tern, have_program};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Each node and its clock's offset from the true time, in seconds.
const NODES: [(&str, i64); 3] = [("mx1", 7200), ("mx2", -3600), ("mx3", 0)];

/// libfaketime's preload library (Debian's faketime package).
fn libfaketime() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.is_file())
}

fn node_toml(pg: &Postgres, sink: &CountingSink, node: &str) -> String {
    format!(
        "\n[cluster]\ndatabase = \"{}\"\nnode = \"{node}\"\nlease = \"3s\"\n{NO_AUTH_CHECKS}\n\
         [relay]\nsmarthost = \"127.0.0.1:{}\"\ntls = \"none\"\n\n[queue]\nretry = [\"2s\"]\nconcurrency = 8\n",
        pg.url(),
        sink.port
    )
}

/// The clock offset (database minus node, ms) a node said it found.
fn said_offset(t: &Tern) -> Option<i64> {
    let logs = t.logs();
    let at = logs.rfind("offset_ms=")?;
    logs[at + "offset_ms=".len()..].split(|c: char| !(c == '-' || c.is_ascii_digit())).next()?.parse().ok()
}

fn logs(sink: &CountingSink, nodes: &[Tern]) -> String {
    format!("{}{}", sink.logs(), nodes.iter().map(|t| t.logs()).collect::<String>())
}

/// Waits until each of `ids` was answered 250 and the queue is empty.
fn wait_delivered(pg: &Postgres, sink: &CountingSink, ids: &[String], nodes: &[Tern]) -> HashMap<String, usize> {
    wait_for(
        Duration::from_secs(60),
        "every message at the sink and an empty queue",
        || {
            let got = sink.delivered();
            (ids.iter().all(|id| got.contains_key(id)) && pg.value("SELECT count(*) FROM messages") == "0")
                .then_some(got)
        },
        || logs(sink, nodes),
    )
}

#[test]
fn skewed_clocks_deliver_once_and_retry_on_time() {
    let test = "skewed_clocks_deliver_once_and_retry_on_time";
    let Some(lib) = libfaketime() else {
        println!("SKIPPED: {test}: libfaketime (faketime) is not installed");
        return;
    };
    if !have_program("python3") {
        println!("SKIPPED: {test}: python3 is not installed");
        return;
    }
    let Some(pg) = Postgres::start(test) else { return };
    // Every first try is answered 451: each message is retried once.
    let sink = CountingSink::start(Duration::from_millis(20), true);
    let mut nodes: Vec<Tern> =
        NODES.iter().map(|(name, _)| Tern::new_stopped(&node_toml(&pg, &sink, name), &[])).collect();
    nodes[2].tern_cmd(&["cluster", "init"]).assert_success("cluster init");
    for (t, (_, skew)) in nodes.iter_mut().zip(NODES) {
        if skew != 0 {
            t.set_env("LD_PRELOAD", lib.to_str().unwrap());
            t.set_env("FAKETIME", &format!("{skew:+}"));
        }
        t.start_again();
    }
    sink.set_pids(&NODES.iter().zip(&nodes).map(|((name, _), t)| (*name, t.pid())).collect::<Vec<_>>());
    for (t, (name, skew)) in nodes.iter().zip(NODES).take(2) {
        let offset = said_offset(t).unwrap_or_else(|| panic!("{name} said no clock offset:\n{}", t.logs()));
        println!("{name}: clock {skew:+}s, offset to the database {offset} ms");
        assert!((offset + skew * 1000).abs() < 30_000, "{name}: {offset} ms");
    }

    // Each message deferred once, then delivered once, its retry delay later.
    let ports: Vec<u16> = nodes.iter().map(|t| t.port).collect();
    let started = Instant::now();
    let (ids, failed) = Load::start(&ports, 60, 6, "skew").finish(Duration::from_secs(180));
    assert!(failed.is_empty(), "{failed:?}");
    let delivered = wait_delivered(&pg, &sink, &ids, &nodes);
    println!("60 messages deferred once and delivered in {:?}", started.elapsed());
    assert!(delivered.values().all(|n| *n == 1), "duplicates: {delivered:?}");
    let replies = sink.replies();
    let mut first: HashMap<&str, f64> = HashMap::new();
    let mut gaps = Vec::new();
    let mut by_node: HashMap<(&str, u16), usize> = HashMap::new();
    for r in &replies {
        *by_node.entry((r.node.as_str(), r.code)).or_default() += 1;
        match r.code {
            451 => {
                first.entry(r.message_id.as_str()).or_insert(r.at);
            }
            _ => gaps.push((r.at - first[r.message_id.as_str()], r.message_id.clone())),
        }
    }
    gaps.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (shortest, longest) = (gaps[0].0, gaps[gaps.len() - 1].0);
    println!("replies by (node, code): {by_node:?}; retry after {shortest:.2}s to {longest:.2}s");
    for (name, _) in NODES {
        assert!(by_node.contains_key(&(name, 451)), "{name} tried nothing first: {by_node:?}");
    }
    // "2s" from a due time in whole seconds: at least 1 s; at most that, a poll
    // (half the lease) and slack for a loaded machine.
    assert!(shortest >= 0.9, "retried too soon: {:?}", gaps[0]);
    assert!(longest < 10.0, "retried too late: {:?}", gaps[gaps.len() - 1]);

    // The node behind holds messages in stalled deliveries past a lease: nobody
    // takes them; killed, its mail is taken over once its leases run out.
    sink.stall(true);
    sink.reset_maxima();
    let (ids, failed) = Load::start(&ports[1..2], 20, 2, "behind").finish(Duration::from_secs(180));
    assert!(failed.is_empty(), "{failed:?}");
    wait_for(
        Duration::from_secs(30),
        "mx2 to hold its messages for longer than a lease",
        || {
            let held = pg
                .value("SELECT count(*) FROM messages WHERE owner = 'mx2' AND accepted < now() - interval '4 seconds'");
            (held == "20" && sink.stats().node_txs.get("mx2").is_some_and(|n| *n > 0)).then_some(())
        },
        || logs(&sink, &nodes),
    );
    let s = sink.stats();
    assert!(["mx1", "mx3"].iter().all(|n| s.node_max_txs.get(*n).is_none_or(|m| *m == 0)), "a lease taken: {s:?}");
    nodes[1].kill9();
    let killed = Instant::now();
    sink.stall(false);
    let delivered = wait_delivered(&pg, &sink, &ids, &nodes);
    let took = killed.elapsed();
    println!("mx2's mail delivered by the others {took:?} after it was killed");
    assert!(ids.iter().all(|id| delivered[id] == 1), "duplicates: {delivered:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let late: Vec<_> = sink.replies().into_iter().filter(|r| r.message_id.starts_with("<behind.")).collect();
    assert!(late.iter().filter(|r| r.code == 250).all(|r| r.node != "mx2"), "{late:?}");
}
