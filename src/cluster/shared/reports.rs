//! The counts of the aggregate reports in the `report_tls` and `report_dmarc` tables
//! (migration 3), so that the cluster sends one report per day and domain with the
//! counts of every node.
//!
//! Each node adds what it counted every `[reports] flush_interval` and at shutdown,
//! in one transaction (`INSERT … ON CONFLICT DO UPDATE SET n = n + excluded.n`).
//! A send takes the counts out with `DELETE … RETURNING` in a transaction that holds
//! an advisory lock, on a connection of its own, and commits only once the report
//! messages are in the queue. Two nodes sending at once send each report once (the
//! second finds nothing left); a node dying mid-send loses nothing (its connection
//! closes and the transaction rolls back), so each report goes out at least once.

use super::Error;
use crate::cluster::Cluster;
use crate::reports::book::Book;
use crate::reports::dmarc::DomainDmarc;
use crate::reports::tls::{Counts, DomainTls, Failure, PolicyRecord};
use tokio_postgres::{GenericClient, Row};

/// Serializes sends across the cluster (`pg_advisory_xact_lock`): "rprt" in ASCII.
const LOCK_KEY: i64 = 0x7270_7274;

/// Adds TLS-RPT counts: one row per policy (its totals) and per kind of failure.
const ADD_TLS: &str = "
INSERT INTO report_tls AS r (day, domain, key, policy, failure, success, failed)
SELECT (to_timestamp(t.day) AT TIME ZONE 'UTC')::date, t.domain,
       sha256(convert_to(t.policy || E'\\n' || coalesce(t.failure, ''), 'UTF8')),
       t.policy, t.failure, t.success, t.failed
FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
    AS t (day, domain, policy, failure, success, failed)
ON CONFLICT (day, domain, key) DO UPDATE SET
    success = r.success + excluded.success, failed = r.failed + excluded.failed";

/// Adds DMARC counts: one row per distinct report row; the record is the last seen.
const ADD_DMARC: &str = "
INSERT INTO report_dmarc AS r (day, domain, key, record, messages, policy, rua)
SELECT (to_timestamp(t.day) AT TIME ZONE 'UTC')::date, t.domain, sha256(convert_to(t.record, 'UTF8')),
       t.record, t.messages, t.policy, t.rua
FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[])
    AS t (day, domain, record, messages, policy, rua)
ON CONFLICT (day, domain, key) DO UPDATE SET
    messages = r.messages + excluded.messages, policy = excluded.policy, rua = excluded.rua";

const TLS_COLUMNS: &str = "extract(epoch FROM day)::int8, domain, policy, failure, success, failed";
const DMARC_COLUMNS: &str = "extract(epoch FROM day)::int8, domain, record, messages, policy, rua";
/// Days before `$1` (Unix seconds), or every day for NULL.
const BEFORE: &str = "$1::int8 IS NULL OR day < (to_timestamp($1::int8) AT TIME ZONE 'UTC')::date";

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error(format!("report counts: {e}")))
}

/// Adds `tls` and `dmarc` to the cluster's counts, in one transaction.
pub async fn add(cluster: &Cluster, tls: &Book<DomainTls>, dmarc: &Book<DomainDmarc>) -> Result<(), Error> {
    let mut client = cluster.client().await?;
    let tx = client.transaction().await?;
    add_in(&*tx, tls, dmarc).await?;
    tx.commit().await?;
    Ok(())
}

async fn add_in(client: &impl GenericClient, tls: &Book<DomainTls>, dmarc: &Book<DomainDmarc>) -> Result<(), Error> {
    let (mut days, mut domains, mut policies, mut failures, mut successes, mut fails) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (day, by_domain) in &tls.days {
        for (domain, counts) in by_domain {
            for (policy, c) in &counts.policies {
                let policy = json(policy)?;
                let mut rows = vec![(None, c.success, c.failure)];
                for (f, n) in &c.details {
                    rows.push((Some(json(f)?), 0, *n));
                }
                for (failure, success, failed) in rows {
                    days.push(*day);
                    domains.push(domain.as_str());
                    policies.push(policy.clone());
                    failures.push(failure);
                    successes.push(count(success));
                    fails.push(count(failed));
                }
            }
        }
    }
    if !days.is_empty() {
        client.execute(ADD_TLS, &[&days, &domains, &policies, &failures, &successes, &fails]).await?;
    }
    let (mut days, mut domains, mut records, mut messages, mut policies, mut ruas) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (day, by_domain) in &dmarc.days {
        for (domain, d) in by_domain {
            let (policy, rua) = (json(&d.policy)?, json(&d.rua)?);
            for (record, n) in &d.rows {
                days.push(*day);
                domains.push(domain.as_str());
                records.push(json(record)?);
                messages.push(count(*n));
                policies.push(policy.clone());
                ruas.push(rua.clone());
            }
        }
    }
    if !days.is_empty() {
        client.execute(ADD_DMARC, &[&days, &domains, &records, &messages, &policies, &ruas]).await?;
    }
    Ok(())
}

/// The cluster's counts, every day.
pub async fn read(cluster: &Cluster) -> Result<(Book<DomainTls>, Book<DomainDmarc>), Error> {
    let client = cluster.client().await?;
    let none: Option<i64> = None;
    let tls = client.query(&format!("SELECT {TLS_COLUMNS} FROM report_tls WHERE {BEFORE}"), &[&none]).await?;
    let dmarc = client.query(&format!("SELECT {DMARC_COLUMNS} FROM report_dmarc WHERE {BEFORE}"), &[&none]).await?;
    Ok((tls_book(tls), dmarc_book(dmarc)))
}

/// The counts of the days before `before` (every day for `None`), taken out in a
/// transaction that stays open until [`Claim::finish`].
pub struct Claim {
    client: tokio_postgres::Client,
    /// Keeps the connection's message pump running.
    _messages: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
    pub tls: Book<DomainTls>,
    pub dmarc: Book<DomainDmarc>,
}

/// Takes the cluster's counts out for a send, once no other node is sending.
pub async fn claim(cluster: &Cluster, before: Option<i64>) -> Result<Claim, Error> {
    let (client, messages) = cluster.dedicated().await?;
    // A send on another node holds the lock for seconds: wait for it, boundedly.
    client.batch_execute("BEGIN; SET LOCAL lock_timeout = '20s'").await?;
    client.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    let tls =
        client.query(&format!("DELETE FROM report_tls WHERE {BEFORE} RETURNING {TLS_COLUMNS}"), &[&before]).await?;
    let dmarc =
        client.query(&format!("DELETE FROM report_dmarc WHERE {BEFORE} RETURNING {DMARC_COLUMNS}"), &[&before]).await?;
    Ok(Claim { client, _messages: messages, tls: tls_book(tls), dmarc: dmarc_book(dmarc) })
}

impl Claim {
    /// Puts back what could not be reported, and commits: the rest is gone for good.
    pub async fn finish(self, tls: &Book<DomainTls>, dmarc: &Book<DomainDmarc>) -> Result<(), Error> {
        add_in(&self.client, tls, dmarc).await?;
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// A row this version cannot read (written by another) is left out, and said.
fn unreadable(table: &str, domain: &str, e: &serde_json::Error) {
    tracing::warn!(table, domain, error = %e, "unreadable report counts left out");
}

fn tls_book(rows: Vec<Row>) -> Book<DomainTls> {
    let mut book = Book::default();
    for row in rows {
        let (day, domain): (i64, String) = (row.get(0), row.get(1));
        let (success, failed) = (row.get::<_, i64>(4).max(0) as u64, row.get::<_, i64>(5).max(0) as u64);
        let policy = match serde_json::from_str::<PolicyRecord>(row.get(2)) {
            Ok(policy) => policy,
            Err(e) => {
                unreadable("report_tls", &domain, &e);
                continue;
            }
        };
        let counts = match row.get::<_, Option<&str>>(3).map(serde_json::from_str::<Failure>) {
            None => Counts { success, failure: failed, details: Vec::new() },
            Some(Ok(f)) => Counts { success: 0, failure: 0, details: vec![(f, failed)] },
            Some(Err(e)) => {
                unreadable("report_tls", &domain, &e);
                continue;
            }
        };
        book.put_back(day, domain, DomainTls { policies: vec![(policy, counts)] });
    }
    book
}

fn dmarc_book(rows: Vec<Row>) -> Book<DomainDmarc> {
    let mut book = Book::default();
    for row in rows {
        let (day, domain): (i64, String) = (row.get(0), row.get(1));
        let messages = row.get::<_, i64>(3).max(0) as u64;
        let parsed = serde_json::from_str(row.get(2)).and_then(|record| {
            Ok(DomainDmarc {
                policy: serde_json::from_str(row.get(4))?,
                rua: serde_json::from_str(row.get(5))?,
                rows: vec![(record, messages)],
            })
        });
        match parsed {
            Ok(d) => book.put_back(day, domain, d),
            Err(e) => unreadable("report_dmarc", &domain, &e),
        }
    }
    book
}
