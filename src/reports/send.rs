//! Turning aggregates into report messages and handing them to Tern's own queue:
//! the report addresses are looked up (TLS-RPT: `_smtp._tls.<domain>`; DMARC: the
//! `rua=` of the record, checked per RFC 7489 §7.1), the message is DKIM-signed with
//! the key of its `From:` domain when Tern has one (RFC 8460 §3), stored durably and
//! queued.

use super::book::{Book, DAY, Merge};
use super::dmarc::{self, DomainDmarc};
use super::tls::{self, DomainTls};
use super::{STATE, message};
use crate::admin::trace::{self, Event};
use crate::cluster::shared::reports;
use crate::cluster::{Cluster, Error, answered};
use crate::dns::DnsError;
use crate::queue::Router;
use crate::server::Context;
use crate::spool::{Envelope, Part, RcptState, Recipient};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One report queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// `tls` or `dmarc`.
    pub kind: String,
    pub domain: String,
    /// The report message's queue id.
    pub id: String,
    pub to: Vec<String>,
}

/// Sends the reports of this node's counts of the days before `before` (all days for
/// `None`); what cannot go now is kept for the next send.
pub async fn all(ctx: &Context, before: Option<i64>, now: i64) -> Vec<Sent> {
    let tls = STATE.tls.lock().unwrap().take(before);
    let dmarc = STATE.dmarc.lock().unwrap().take(before);
    let (sent, kept) = report(ctx, tls, dmarc, now).await;
    super::merge_into(&mut STATE.tls.lock().unwrap(), kept.tls);
    super::merge_into(&mut STATE.dmarc.lock().unwrap(), kept.dmarc);
    sent
}

/// Sends the reports of the cluster's counts of the days before `before` (all days
/// for `None`), once for the whole cluster (see [`crate::cluster::shared::reports`]).
pub async fn cluster(ctx: &Context, cluster: &Cluster, before: Option<i64>, now: i64) -> Result<Vec<Sent>, Error> {
    let mut claim = answered(reports::claim(cluster, before)).await?;
    let tls = claim.tls.take(None);
    let dmarc = claim.dmarc.take(None);
    let (sent, kept) = report(ctx, tls, dmarc, now).await;
    if let Err(e) = answered(claim.finish(&kept.tls, &kept.dmarc)).await {
        // The reports are queued; their counts stay and are reported again.
        tracing::error!(error = %e, reports = sent.len(), "reports sent, but their counts could not be cleared");
    }
    Ok(sent)
}

/// What could not be reported now.
#[derive(Default)]
struct Kept {
    tls: Book<DomainTls>,
    dmarc: Book<DomainDmarc>,
}

async fn report(
    ctx: &Context,
    tls: Vec<(i64, String, DomainTls)>,
    dmarc: Vec<(i64, String, DomainDmarc)>,
    now: i64,
) -> (Vec<Sent>, Kept) {
    let (mut sent, mut kept) = (Vec::new(), Kept::default());
    for (day, domain, counts) in tls {
        match send_tls(ctx, day, &domain, &counts, now).await {
            Ok(Some(s)) => sent.push(s),
            Ok(None) => {}
            Err(e) => keep(&mut kept.tls, day, domain, counts, "TLS-RPT", &e),
        }
    }
    for (day, domain, rows) in dmarc {
        match send_dmarc(ctx, day, &domain, &rows, now).await {
            Ok(Some(s)) => sent.push(s),
            Ok(None) => {}
            Err(e) => keep(&mut kept.dmarc, day, domain, rows, "DMARC", &e),
        }
    }
    (sent, kept)
}

/// A report that could not go now is kept for the next send.
fn keep<T: Default + Merge>(book: &mut Book<T>, day: i64, domain: String, t: T, kind: &str, error: &str) {
    tracing::warn!(kind, domain, error, "report not sent; kept for the next time");
    book.put_back(day, domain, t);
}

/// The period a day's report covers: the whole day, or up to `now` for today.
fn period(day: i64, now: i64) -> (i64, i64) {
    (day, (day + DAY).min(now.max(day + 1)))
}

fn uniq() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn from_address(ctx: &Context, default_local: &str) -> String {
    ctx.config.reports.from.clone().unwrap_or_else(|| format!("{default_local}@{}", ctx.config.hostname))
}

async fn send_tls(ctx: &Context, day: i64, domain: &str, counts: &DomainTls, now: i64) -> Result<Option<Sent>, String> {
    let name = format!("_smtp._tls.{domain}");
    let records = match ctx.dns.txt(&name).await {
        Ok(records) => records,
        Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {
            tracing::info!(domain, "TLS-RPT: the domain asks for no reports; none sent");
            return Ok(None);
        }
        Err(DnsError::Temporary(e)) => return Err(format!("looking up {name}: {e}")),
    };
    let Some((to, https)) = tls::rua(&records) else {
        tracing::info!(domain, "TLS-RPT: no valid v=TLSRPTv1 record; no report sent");
        return Ok(None);
    };
    if https > 0 {
        tracing::info!(domain, count = https, "TLS-RPT: https report addresses are not supported; skipped");
    }
    if to.is_empty() {
        return Ok(None);
    }
    let (begin, end) = period(day, now);
    let from = from_address(ctx, "tls-reports");
    let submitter = ctx.config.hostname.as_str();
    let organization = ctx.config.reports.org_name.as_deref().unwrap_or(submitter);
    let uniq = uniq();
    let chrono_begin = chrono::DateTime::from_timestamp(begin, 0).unwrap_or_default();
    let report_id = format!("{}.{uniq}@{submitter}", chrono_begin.format("%Y-%m-%dT%H:%M:%SZ"));
    let header = tls::Header { organization, contact: &from, report_id: &report_id, begin, end };
    let json = tls::report_json(domain, counts, &header);
    let envelope = message::Envelope { from: &from, to: &to, submitter, report_id: &report_id };
    let msg = message::tls(&envelope, domain, begin, end, &uniq, &message::gzip(json.as_bytes()));
    let id = enqueue(ctx, "tls", domain, &from, &to, msg).await?;
    Ok(Some(Sent { kind: "tls".into(), domain: domain.into(), id, to }))
}

async fn send_dmarc(
    ctx: &Context,
    day: i64,
    domain: &str,
    rows: &DomainDmarc,
    now: i64,
) -> Result<Option<Sent>, String> {
    let (begin, end) = period(day, now);
    let from = from_address(ctx, "noreply-dmarc");
    let submitter = ctx.config.hostname.as_str();
    let org_name = ctx.config.reports.org_name.as_deref().unwrap_or(submitter);
    let report_id = format!("{domain}.{begin}.{}", uniq());
    let header = dmarc::Header { org_name, email: &from, report_id: &report_id, begin: begin as u64, end: end as u64 };
    let gz = message::gzip(dmarc::report_xml(rows, &header).as_bytes());
    let mut to = Vec::new();
    for rua in &rows.rua {
        let Some((_, rua_domain)) = rua.address.rsplit_once('@') else { continue };
        match dmarc::destination_allowed(&ctx.dns, domain, rua_domain).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    domain,
                    rua = rua.address,
                    "DMARC report address outside the domain without {domain}._report._dmarc.{rua_domain} (RFC 7489 §7.1); dropped"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(domain, rua = rua.address, error = e, "cannot verify the DMARC report address; dropped");
                continue;
            }
        }
        // `!10m` and the like: the largest report the address takes (RFC 7489 §6.2).
        if rua.max_size > 0 && gz.len() > rua.max_size {
            tracing::warn!(
                domain,
                rua = rua.address,
                size = gz.len(),
                limit = rua.max_size,
                "DMARC report larger than the address takes; not sent to it"
            );
            continue;
        }
        to.push(rua.address.clone());
    }
    if to.is_empty() {
        tracing::info!(domain, "DMARC: no report address may receive this report; none sent");
        return Ok(None);
    }
    let envelope = message::Envelope { from: &from, to: &to, submitter, report_id: &report_id };
    let msg = message::dmarc(&envelope, domain, begin as u64, end as u64, &gz);
    let id = enqueue(ctx, "dmarc", domain, &from, &to, msg).await?;
    Ok(Some(Sent { kind: "dmarc".into(), domain: domain.into(), id, to }))
}

/// Signs, stores and queues a report message; its queue id.
async fn enqueue(
    ctx: &Context,
    kind: &str,
    domain: &str,
    from: &str,
    to: &[String],
    msg: Vec<u8>,
) -> Result<String, String> {
    let mut content = ctx.signer.sign(b"", &msg).into_bytes();
    content.extend_from_slice(&msg);
    let router = crate::server::routing::PolicyRouter(ctx.policy.clone());
    let recipients: Vec<Recipient> = to
        .iter()
        .flat_map(|address| {
            router.route(address).into_iter().map(|(routed, local)| Recipient {
                address: routed,
                local,
                original: address.clone(),
                orcpt: None,
                notify: None,
                state: RcptState::Queued,
            })
        })
        .collect();
    if recipients.is_empty() {
        return Err(format!("no route to {}", to.join(", ")));
    }
    let envelope = Envelope {
        id: ctx.store.new_id(),
        arrival: crate::queue::now(),
        sender: from.to_string(),
        size: content.len() as u64,
        recipients,
        ..Default::default()
    };
    let stored = ctx
        .store
        .store(&envelope, vec![Part::Bytes(content.clone())])
        .await
        .map_err(|e| format!("cannot store the report: {e}"))?;
    let id = envelope.id.clone();
    tracing::info!(id, kind, domain, to = %to.join(", "), size = envelope.size, "report sent");
    let event = Event::ReportSent {
        kind: kind.to_string(),
        domain: domain.to_string(),
        recipients: to.to_vec(),
        size: envelope.size,
    };
    trace::emit(&id, event);
    trace::emit(&id, Event::Stored);
    crate::metrics::get().report_sent(kind);
    ctx.queue.enqueue(stored, Some(Arc::new(content)));
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_reported_whole_and_today_up_to_now() {
        assert_eq!(period(0, 10 * DAY), (0, DAY));
        assert_eq!(period(DAY, DAY + 100), (DAY, DAY + 100));
        assert_eq!(period(DAY, DAY), (DAY, DAY + 1));
    }
}
