//! State the nodes of a cluster share in their PostgreSQL database, end to end: two
//! `tern` processes on loopback with one throwaway PostgreSQL, talked to with
//! Python's smtplib. Greylisting, rates, AUTH bans, users and the message trace
//! hold across nodes; with the database stopped the checks take their fallbacks, and
//! the shared state is used again once it is back, without a restart.

mod common;

use common::postgres::Postgres;
use common::{Tern, queue_id};
use std::time::{Duration, Instant};

/// Strangers on loopback (no relay networks), local mailboxes, no DNS checks, AUTH
/// in plain text on loopback.
const BASE: &str = "\n[relay]\nnetworks = []\n\n[local]\ndomains = [\"localhost\"]\naccept_unknown = true\n\n\
                    [auth_checks]\nenabled = false\n";

/// `[cluster]` for node `node` on `pg`.
fn cluster_toml(pg: &Postgres, node: &str) -> String {
    format!("\n[cluster]\ndatabase = \"{}\"\nnode = \"{node}\"\nlease = \"10s\"\n", pg.url())
}

/// Nodes `mx1`, `mx2`… on `pg`, each with `extra` (which may hold an `[auth]` table);
/// the schema is made by the first one's `tern cluster init`.
fn nodes(pg: &Postgres, n: usize, extra: &str) -> Vec<Tern> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        let mut t = Tern::new_stopped(&format!("{BASE}{extra}{}", cluster_toml(pg, &format!("mx{i}"))), &[]);
        if i == 1 {
            t.tern_cmd(&["cluster", "init"]).assert_success("cluster init");
        }
        t.start_again();
        nodes.push(t);
    }
    nodes
}

/// One transaction with smtplib from `source`: MAIL, RCPT and (if accepted) DATA,
/// each answer on a line `MAIL|RCPT|DATA code text`. `auth` logs in first.
fn send(t: &Tern, source: &str, auth: Option<(&str, &str)>, sender: &str, rcpt: &str) -> String {
    let login = match auth {
        Some((user, password)) => format!(
            "s.user, s.password = {user:?}, {password:?}\n\
             try:\n    s.auth('PLAIN', s.auth_plain)\n    print('AUTH 235')\n\
             except smtplib.SMTPException as e:\n    print('AUTH', e)\n    raise SystemExit(0)\n"
        ),
        None => String::new(),
    };
    let script = format!(
        r#"
import os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["TERN_PORT"]), timeout=30, source_address=({source:?}, 0))
s.ehlo("client.test")
{login}
code, text = s.mail({sender:?})
print("MAIL", code, text.decode())
if code == 250:
    code, text = s.rcpt({rcpt:?})
    print("RCPT", code, text.decode())
    if code == 250:
        code, text = s.data(b"Subject: shared\r\n\r\nHello.\r\n")
        print("DATA", code, text.decode())
s.quit()
"#
    );
    let out = t.python_within(&script, Duration::from_secs(30));
    out.assert_success("smtplib");
    out.stdout
}

/// Waits (bounded) until `check` holds, saying what was awaited on failure.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_greylisted_triplet_passes_on_another_node_after_the_delay() {
    let Some(pg) = Postgres::start("a_greylisted_triplet_passes_on_another_node_after_the_delay") else { return };
    let nodes = nodes(&pg, 2, "\n[antispam.greylisting]\nenabled = true\ndelay = \"2s\"\n");
    let first = send(&nodes[0], "127.0.0.1", None, "alice@sender.test", "bob@localhost");
    assert!(first.contains("RCPT 451 4.7.1 Greylisted"), "{first}");
    // Another node, at once: the same triplet, still within the delay.
    let early = send(&nodes[1], "127.0.0.9", None, "alice@sender.test", "bob@localhost");
    assert!(early.contains("RCPT 451 4.7.1 Greylisted"), "{early}");
    assert_eq!(pg.value("SELECT count(*) FROM greylist"), "1", "one triplet, one row");
    // Once the database's clock says the delay is over, the first try of a third
    // host of the network on the other node passes: it was first seen on mx1.
    wait_until("the greylisting delay is over", Duration::from_secs(10), || {
        pg.value("SELECT bool_and(first_seen + interval '2 seconds' <= now()) FROM greylist") == "t"
    });
    let pass = send(&nodes[1], "127.0.0.77", None, "alice@sender.test", "bob@localhost");
    assert!(pass.contains("RCPT 250") && pass.contains("DATA 250"), "{pass}\n{}", nodes[1].logs());
    nodes[1].wait_one("localhost", "bob");
    // A new triplet is greylisted on either node.
    let other = send(&nodes[0], "127.0.0.1", None, "alice@sender.test", "carol@localhost");
    assert!(other.contains("RCPT 451 4.7.1"), "{other}");
    assert!(!nodes[0].data_dir.join("greylist").exists(), "the local greylist file is not used in a cluster");
}

#[test]
fn a_rate_limit_hit_across_two_nodes_is_enforced_as_one() {
    let Some(pg) = Postgres::start("a_rate_limit_hit_across_two_nodes_is_enforced_as_one") else { return };
    let limits = "\n[limits]\nmax_messages_per_window = 3\nmax_recipients_per_window = 100\nrate_window = \"1h\"\n";
    let nodes = nodes(&pg, 2, limits);
    for (i, node) in [0, 1, 0].into_iter().enumerate() {
        let out = send(&nodes[node], "127.0.0.1", None, "alice@sender.test", &format!("u{i}@localhost"));
        assert!(out.contains("DATA 250"), "message {i} on mx{}: {out}", node + 1);
    }
    // Three messages in all: the fourth is refused on either node, though neither
    // has taken three itself.
    for node in [1, 0] {
        let out = send(&nodes[node], "127.0.0.1", None, "alice@sender.test", "u9@localhost");
        assert!(
            out.contains("MAIL 451 4.7.1 Rate limit exceeded: too many messages"),
            "mx{}: {out}\n{}",
            node + 1,
            nodes[node].logs()
        );
    }
    assert!(nodes[1].logs().contains("message rate limit reached"), "{}", nodes[1].logs());
    // Another client has its own count.
    let other = send(&nodes[1], "127.0.0.2", None, "alice@sender.test", "u10@localhost");
    assert!(other.contains("DATA 250"), "{other}");
    assert_eq!(pg.value("SELECT messages FROM rates WHERE key = 'ip:127.0.0.1'"), "4", "counted one past the limit");
}

const AUTH_DB: &str = "\n[auth]\nusers = \"database\"\nallow_plaintext_loopback = true\nsender_must_match = false\n\
                       max_failures = 3\nfailure_window = \"10m\"\nban_time = \"10m\"\n";

#[test]
fn an_auth_ban_on_one_node_holds_on_another() {
    let Some(pg) = Postgres::start("an_auth_ban_on_one_node_holds_on_another") else { return };
    let nodes = nodes(&pg, 2, AUTH_DB);
    // Two failures on mx1 and one on mx2 make the three that ban: the third is
    // answered 421 at once.
    for (node, reply) in [(0, "AUTH (535"), (0, "AUTH (535"), (1, "AUTH (421")] {
        let out = send(&nodes[node], "127.0.0.1", Some(("alice@localhost", "wrong")), "a@localhost", "b@localhost");
        assert!(out.contains(reply), "mx{}: {out}", node + 1);
    }
    for node in &nodes {
        let script = r#"
import os, smtplib
try:
    smtplib.SMTP("127.0.0.1", int(os.environ["TERN_PORT"]), timeout=30)
    print("served")
except smtplib.SMTPConnectError as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
"#;
        let out = node.python(script);
        assert!(out.stdout.contains("refused 421 4.7.0 Too many failed authentications"), "{}", out.all());
    }
    // Another address is served.
    let other = send(&nodes[1], "127.0.0.2", None, "a@sender.test", "b@localhost");
    assert!(other.contains("DATA 250"), "{other}");
    assert_ne!(pg.value("SELECT count(*) FROM auth_failures WHERE banned_until > now()"), "0");
}

#[test]
fn a_user_added_to_the_database_authenticates_on_every_node() {
    let Some(pg) = Postgres::start("a_user_added_to_the_database_authenticates_on_every_node") else { return };
    let nodes = nodes(&pg, 2, AUTH_DB);
    let add = nodes[0].tern_cmd_with_input(&["user", "add", "alice@localhost", "--password-stdin"], Some(b"s3cret\n"));
    add.assert_success("tern user add");
    assert!(add.stdout.contains("added to the cluster's database"), "{}", add.all());
    let list = nodes[1].tern_cmd(&["user", "list"]);
    list.assert_success("tern user list");
    assert_eq!(list.stdout.trim(), "alice@localhost");
    assert!(pg.value("SELECT hash FROM users").starts_with("$argon2id$"));
    assert!(!nodes[0].data_dir.join("users.toml").exists(), "no users file in a cluster with users = database");
    // Every node reads the table again within a second or so.
    for (i, node) in nodes.iter().enumerate() {
        let mut last = String::new();
        wait_until(&format!("alice authenticates on mx{}", i + 1), Duration::from_secs(10), || {
            last = send(node, "127.0.0.1", Some(("alice@localhost", "s3cret")), "alice@localhost", "bob@localhost");
            last.contains("AUTH 235")
        });
        assert!(last.contains("DATA 250"), "{last}");
    }
    nodes[1].tern_cmd(&["user", "del", "alice@localhost"]).assert_success("tern user del");
    wait_until("alice is gone on mx1", Duration::from_secs(10), || {
        send(&nodes[0], "127.0.0.3", Some(("alice@localhost", "s3cret")), "alice@localhost", "bob@localhost")
            .contains("AUTH (535")
    });
    let again = nodes[0].tern_cmd(&["user", "del", "alice@localhost"]);
    assert!(!again.success() && again.stderr.contains("no user alice@localhost"), "{}", again.all());
}

#[test]
fn a_trace_written_on_one_node_reads_on_another() {
    let Some(pg) = Postgres::start("a_trace_written_on_one_node_reads_on_another") else { return };
    let nodes = nodes(&pg, 2, "");
    let out = send(&nodes[0], "127.0.0.1", None, "alice@sender.test", "bob@localhost");
    let id = out.lines().find(|l| l.starts_with("DATA 250")).and_then(queue_id).unwrap_or_else(|| panic!("{out}"));
    nodes[0].wait_one("localhost", "bob");
    let mut trace = String::new();
    wait_until("mx2 shows mx1's trace up to delivery", Duration::from_secs(10), || {
        let out = nodes[1].tern_cmd(&["queue", "trace", &id]);
        trace = out.all();
        out.success() && trace.contains("finished: delivered")
    });
    assert!(trace.contains("received from 127.0.0.1") && trace.contains("stored in the spool"), "{trace}");
    assert_eq!(pg.value(&format!("SELECT DISTINCT node FROM trace WHERE message_id = '{id}'")), "mx1");
    assert!(!nodes[0].data_dir.join("trace").read_dir().is_ok_and(|mut d| d.next().is_some()), "no trace files");
    let none = nodes[1].tern_cmd(&["queue", "trace", "0123456789ABCDEF"]);
    assert!(!none.success(), "{}", none.all());
}

#[test]
fn with_the_database_stopped_checks_fall_back_and_sharing_resumes_without_a_restart() {
    let Some(pg) = Postgres::start("with_the_database_stopped_checks_fall_back_and_sharing_resumes_without_a_restart")
    else {
        return;
    };
    let grey = "\n[antispam.greylisting]\nenabled = true\ndelay = \"1h\"\n\n[limits]\nmax_messages_per_window = 2\n";
    let nodes = nodes(&pg, 2, grey);
    pg.stop();
    // Greylisting lets the recipient through and rates are counted by the node alone;
    // the message itself cannot be stored without the database, and is refused with
    // 451 4.3.0 for the client to retry.
    let out = send(&nodes[0], "127.0.0.1", None, "alice@sender.test", "bob@localhost");
    assert!(out.contains("RCPT 250") && out.contains("DATA 451 4.3.0"), "{out}\n{}", nodes[0].logs());
    let logs = nodes[0].logs();
    assert!(logs.contains("cluster database unavailable for shared state"), "{logs}");
    assert!(logs.contains("greylisting lets the recipient through"), "{logs}");
    assert!(logs.contains("rates are counted by this node alone"), "{logs}");
    let second = send(&nodes[0], "127.0.0.1", None, "alice@sender.test", "carol@localhost");
    assert!(second.contains("RCPT 250"), "{second}");
    let third = send(&nodes[0], "127.0.0.1", None, "alice@sender.test", "dave@localhost");
    assert!(third.contains("MAIL 451 4.7.1 Rate limit exceeded"), "the node's own count holds: {third}");
    let auth = format!("Authorization: Bearer {}", nodes[0].admin_token());
    let metrics = nodes[0].curl(&["-H", &auth, &format!("{}/metrics", nodes[0].admin_url())]);
    assert!(
        metrics
            .stdout
            .lines()
            .any(|l| l.starts_with("tern_cluster_shared_errors_total{state=\"greylist\"} ") && !l.ends_with(" 0")),
        "{}",
        metrics.stdout
    );
    // Back: a new triplet is greylisted again, on either node, with no restart.
    pg.start_again();
    for (i, node) in nodes.iter().enumerate() {
        wait_until(&format!("mx{} greylists again", i + 1), Duration::from_secs(20), || {
            send(node, "127.0.0.5", None, "eve@sender.test", &format!("back{i}@localhost")).contains("RCPT 451 4.7.1")
        });
    }
    assert_eq!(pg.value("SELECT count(*) FROM greylist"), "2");
}
