//! `[outbound] max_connections_per_host` across a cluster: the live nodes share it,
//! each allowing `ceil(limit / N)` connections per host, and the share grows when a
//! node stops (and holds across a reload). One slow sink counts the connections
//! open at once, in all and per node.

mod common;

use common::cluster::Load;
use common::counting_sink::CountingSink;
use common::outbound::wait_for;
use common::postgres::Postgres;
use common::{NO_AUTH_CHECKS, Tern, have_program};
use std::time::{Duration, Instant};

const LIMIT: usize = 3;

fn node_toml(pg: &Postgres, sink: &CountingSink, node: &str) -> String {
    format!(
        "\n[cluster]\ndatabase = \"{}\"\nnode = \"{node}\"\nlease = \"3s\"\n{NO_AUTH_CHECKS}\n\
         [relay]\nsmarthost = \"127.0.0.1:{}\"\ntls = \"none\"\n\n[queue]\nretry = [\"1s\"]\nconcurrency = 16\n\n\
         [outbound]\nmax_connections_per_host = {LIMIT}\n",
        pg.url(),
        sink.port
    )
}

/// The live nodes a node last said it shares the limits with.
fn sharing(t: &Tern) -> Option<usize> {
    let logs = t.logs();
    let at = logs.rfind("now shared by ")?;
    logs[at + "now shared by ".len()..].split(' ').next()?.parse().ok()
}

fn wait_sharing(nodes: &[&Tern], n: usize) {
    wait_for(
        Duration::from_secs(20),
        &format!("every node to share the limits by {n}"),
        || nodes.iter().all(|t| sharing(t) == Some(n)).then_some(()),
        || nodes.iter().map(|t| t.logs()).collect(),
    );
}

/// Waits until every message in `ids` reached the sink and the queue is empty.
fn wait_delivered(pg: &Postgres, sink: &CountingSink, ids: &[String], nodes: &[&Tern]) {
    wait_for(
        Duration::from_secs(120),
        "every message at the sink and an empty queue",
        || {
            let got = sink.delivered();
            (ids.iter().all(|id| got.contains_key(id)) && pg.value("SELECT count(*) FROM messages") == "0")
                .then_some(())
        },
        || format!("{}{}", sink.logs(), nodes.iter().map(|t| t.logs()).collect::<String>()),
    );
}

#[test]
fn live_nodes_share_connections_per_host() {
    let test = "live_nodes_share_connections_per_host";
    if !have_program("python3") {
        println!("SKIPPED: {test}: python3 is not installed");
        return;
    }
    let Some(pg) = Postgres::start(test) else { return };
    let sink = CountingSink::start(Duration::from_millis(60), false);
    let mut nodes: Vec<Tern> =
        ["mx1", "mx2", "mx3"].iter().map(|name| Tern::new_stopped(&node_toml(&pg, &sink, name), &[])).collect();
    nodes[0].tern_cmd(&["cluster", "init"]).assert_success("cluster init");
    for t in &mut nodes {
        t.start_again();
    }
    let pids =
        |nodes: &[Tern]| ["mx1", "mx2", "mx3"].into_iter().zip(nodes.iter().map(|t| t.pid())).collect::<Vec<_>>();
    sink.set_pids(&pids(&nodes));
    wait_sharing(&nodes.iter().collect::<Vec<_>>(), 3);
    let status = nodes[0].tern_cmd(&["cluster", "status"]);
    status.assert_success("cluster status");
    assert!(status.stdout.contains("connections per host per node: 1 of 3 (3 live node(s))"), "{}", status.stdout);

    // Three nodes: one connection each, three in all.
    let ports: Vec<u16> = nodes.iter().map(|t| t.port).collect();
    let started = Instant::now();
    let (ids, failed) = Load::start(&ports, 300, 6, "three").finish(Duration::from_secs(180));
    assert!(failed.is_empty(), "{failed:?}");
    wait_delivered(&pg, &sink, &ids, &nodes.iter().collect::<Vec<_>>());
    let s = sink.stats();
    println!("3 nodes, 300 messages in {:?}: {s:?}", started.elapsed());
    assert!(s.max_conns <= LIMIT && s.max_txs <= LIMIT, "{s:?}");
    for name in ["mx1", "mx2", "mx3"] {
        assert_eq!(s.node_max_conns.get(name), Some(&1), "{name}: {s:?}");
    }
    assert_eq!(s.node_max_conns.get("?"), None, "a connection of no node: {s:?}");

    // mx3 stops: the two others take two each.
    nodes[2].sigterm().expect("mx3 stops");
    let two: Vec<&Tern> = nodes[..2].iter().collect();
    wait_sharing(&two, 2);
    let status = nodes[0].tern_cmd(&["cluster", "status"]);
    assert!(status.stdout.contains("connections per host per node: 2 of 3 (2 live node(s))"), "{}", status.stdout);
    // A reload makes a new connection pool: it takes the share too.
    let reload = nodes[0].tern_cmd(&["reload"]);
    reload.assert_success("tern reload");
    sink.reset_maxima();
    let started = Instant::now();
    let (ids, failed) = Load::start(&ports[..2], 300, 8, "two").finish(Duration::from_secs(180));
    assert!(failed.is_empty(), "{failed:?}");
    wait_delivered(&pg, &sink, &ids, &two);
    let s = sink.stats();
    println!("2 nodes, 300 messages in {:?}: {s:?}", started.elapsed());
    for name in ["mx1", "mx2"] {
        assert_eq!(s.node_max_conns.get(name), Some(&2), "{name}: {s:?}");
        assert!(s.node_max_txs.get(name).is_some_and(|n| *n <= 2), "{name}: {s:?}");
    }
    assert!(s.max_conns <= 4, "{s:?}");
}
