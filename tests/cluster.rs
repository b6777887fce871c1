//! Tern nodes sharing one throwaway PostgreSQL: the schema and its migrations,
//! node membership, and the queue across nodes (acceptance, leases, failures).

mod common;

use common::Tern;
use common::postgres::Postgres;

/// `[cluster]` for a node named `node` on `pg`.
fn cluster_toml(pg: &Postgres, node: &str, lease: &str) -> String {
    format!("\n[cluster]\ndatabase = \"{}\"\nnode = \"{node}\"\nlease = \"{lease}\"\n", pg.url())
}

#[test]
fn init_migrates_an_empty_database_once() {
    let Some(pg) = Postgres::start("init_migrates_an_empty_database_once") else { return };
    let t = Tern::new_stopped(&cluster_toml(&pg, "mx1", "3s"), &[]);
    let out = t.tern_cmd(&["cluster", "init"]);
    out.assert_success("cluster init");
    assert!(out.stdout.contains("migrated from version 0 to 2"), "{}", out.all());
    assert_eq!(pg.value("SELECT count(*) FROM schema_version"), "2");
    let again = t.tern_cmd(&["cluster", "init"]);
    again.assert_success("cluster init again");
    assert!(again.stdout.contains("nothing to do"), "{}", again.all());
    assert_eq!(pg.value("SELECT count(*) FROM schema_version"), "2");
    let status = t.tern_cmd(&["cluster", "status"]);
    status.assert_success("cluster status");
    assert!(status.stdout.contains("queue: 0 message(s)"), "{}", status.all());
}
