//! Group commit of a cluster node: concurrent sessions share the transactions that
//! store their messages. One `tern` on a throwaway PostgreSQL, loaded by Python
//! smtplib sessions in parallel; the node's own count of acceptance commits (what
//! `tern cluster status` shows) is the measure.

mod common;

use common::postgres::Postgres;
use common::{Tern, have_program};
use std::time::{Duration, Instant};

const SESSIONS: usize = 20;
const PER_SESSION: usize = 10;

/// `[cluster]` for node `node` on `pg`, local mailboxes, strangers on loopback (room
/// for every session from one address, closing and opening connections).
fn config(pg: &Postgres, node: &str) -> String {
    format!(
        "\n[relay]\nnetworks = []\n\n[local]\ndomains = [\"localhost\"]\naccept_unknown = true\n\n\
         [auth_checks]\nenabled = false\n\n[limits]\nmax_connections_per_ip = 100\n\n[cluster]\ndatabase = \"{}\"\nnode = \"{node}\"\nlease = \"10s\"\n",
        pg.url()
    )
}

#[test]
fn concurrent_sessions_share_commits() {
    let Some(pg) = Postgres::start("concurrent_sessions_share_commits") else { return };
    if !have_program("python3") {
        println!("SKIPPED: concurrent_sessions_share_commits: python3 is not installed");
        return;
    }
    let mut t = Tern::new_stopped(&config(&pg, "mx1"), &[]);
    t.tern_cmd(&["cluster", "init"]).assert_success("cluster init");
    t.start_again();

    // Each session sends its messages one connection each, as smtp-source does.
    let script = format!(
        r#"
import os, smtplib, threading
port = int(os.environ["TERN_PORT"])
accepted = []
def session(n):
    for i in range({PER_SESSION}):
        s = smtplib.SMTP("127.0.0.1", port, timeout=30)
        s.sendmail("a@sender.test", ["user@localhost"], b"Subject: %d-%d\r\n\r\nHello.\r\n" % (n, i))
        s.quit()
        accepted.append(1)
threads = [threading.Thread(target=session, args=(n,)) for n in range({SESSIONS})]
for t in threads: t.start()
for t in threads: t.join()
print("accepted", len(accepted))
"#
    );
    let out = t.python_within(&script, Duration::from_secs(120));
    out.assert_success("smtplib sessions");
    let messages = SESSIONS * PER_SESSION;
    assert!(out.stdout.contains(&format!("accepted {messages}")), "{}", out.all());
    let delivered = t.wait_mail_within("localhost", "user", messages, Duration::from_secs(60));
    assert_eq!(delivered.len(), messages);

    // The heartbeat reports the node's acceptance commits (`tern cluster status`).
    let started = Instant::now();
    let counters = loop {
        let row = pg.value("SELECT stored_messages, store_commits FROM nodes WHERE name = 'mx1'");
        let (stored, commits) = row.split_once('|').expect("two columns");
        let (stored, commits): (usize, usize) = (stored.parse().unwrap(), commits.parse().unwrap());
        if stored >= messages {
            break (stored, commits);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "heartbeat reported {row} (stored|commits)");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stored, commits) = counters;
    println!("{commits} commits stored {stored} messages ({:.3} per message)", commits as f64 / stored as f64);
    assert_eq!(stored, messages);
    assert!(commits * 2 <= stored, "{commits} commits for {stored} messages: sessions did not share them");
    // Delivery results share commits too: every finished message leaves the table.
    let started = Instant::now();
    while pg.value("SELECT count(*) FROM messages") != "0" {
        assert!(started.elapsed() < Duration::from_secs(30), "finished messages still in the database");
        std::thread::sleep(Duration::from_millis(200));
    }
}
