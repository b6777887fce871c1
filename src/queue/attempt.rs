//! One delivery attempt for one message: every recipient not yet final.

use super::bounce::{self, Action, Report};
use super::{Shared, now, retry};
use crate::delivery::remote::{self, Job};
use crate::delivery::{Delivered, Failure, maildir};
use crate::spool::{Change, Envelope, RcptState, Recipient, Stored};
use std::collections::BTreeMap;
use std::sync::Arc;

/// RFC 5321 §6.3: more Received headers than this means a mail loop.
const MAX_HOPS: usize = 50;

/// The message after the attempt, and the notices (DSNs) it caused, already stored.
pub struct Finished {
    pub stored: Stored,
    pub notices: Vec<(Stored, Arc<Vec<u8>>)>,
}

type Results = Vec<(usize, Result<Delivered, Failure>)>;

/// Tries every pending recipient, records the results, and returns the updated message.
pub async fn run(shared: &Arc<Shared>, mut stored: Stored, content: Option<Arc<Vec<u8>>>) -> Finished {
    crate::fault::point("attempt");
    let id = stored.envelope.id.clone();
    let content = match content {
        Some(c) => Ok(c),
        None => {
            let (spool, stored) = (shared.spool.clone(), stored.clone());
            tokio::task::spawn_blocking(move || spool.read_content(&stored).map(Arc::new))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
    };
    let pending: Vec<usize> =
        (0..stored.envelope.recipients.len()).filter(|&i| !stored.envelope.recipients[i].state.is_final()).collect();
    let results = match &content {
        Err(e) => {
            tracing::error!(id, error = %e, "cannot read message from spool");
            let f = Failure::temporary(format!("4.3.0 cannot read spool: {e}"));
            pending.iter().map(|&i| (i, Err(f.clone()))).collect()
        }
        Ok(content) if count_received(content) > MAX_HOPS => {
            let f = Failure::permanent(format!("5.4.6 mail loop: more than {MAX_HOPS} Received headers"));
            pending.iter().map(|&i| (i, Err(f.clone()))).collect()
        }
        Ok(content) => deliver(shared, &stored.envelope, &pending, content).await,
    };

    let now = now();
    let expired = now - stored.envelope.arrival > shared.config.max_age.as_secs() as i64;
    let waited = now - stored.envelope.arrival;
    let mut changes = Vec::new();
    let mut reports: Vec<(usize, Action, String)> = Vec::new();
    for (i, result) in results {
        let rcpt = &mut stored.envelope.recipients[i];
        let (attempts, notified) = match &rcpt.state {
            RcptState::Deferred { attempts, notified, .. } => (attempts + 1, *notified),
            _ => (1, false),
        };
        rcpt.state = match result {
            Ok(d) => {
                tracing::info!(id, to = %rcpt.address, status = "delivered", reply = %d.reply, "delivery");
                let action = if d.relayed { Action::Relayed } else { Action::Delivered };
                if !d.dsn_passed_on && bounce::wanted(rcpt, action) {
                    reports.push((i, action, format!("2.0.0 {}", d.reply)));
                }
                RcptState::Delivered { at: now, reply: d.reply }
            }
            Err(f) if f.temporary && !expired => {
                let wait = retry::delay(&shared.config.retry, attempts);
                tracing::warn!(id, to = %rcpt.address, status = "deferred", attempts, retry_in = ?wait, reason = %f.reason, "delivery");
                let notify = shared.config.delay_notice.is_some_and(|d| waited >= d.as_secs() as i64) && !notified;
                if notify && bounce::wanted(rcpt, Action::Delayed) {
                    reports.push((i, Action::Delayed, f.reason.clone()));
                }
                RcptState::Deferred {
                    attempts,
                    next_attempt: now + wait.as_secs().max(1) as i64,
                    reason: f.reason,
                    notified: notified || notify,
                }
            }
            Err(f) => {
                let reason = if f.temporary { format!("5.4.7 delivery time expired: {}", f.reason) } else { f.reason };
                tracing::warn!(id, to = %rcpt.address, status = "bounced", %reason, "delivery");
                if bounce::wanted(rcpt, Action::Failed) {
                    reports.push((i, Action::Failed, reason.clone()));
                }
                RcptState::Bounced { at: now, reason }
            }
        };
        changes.push(Change::Recipient { id: id.clone(), index: i, state: rcpt.state.clone() });
    }
    let mut notices = Vec::new();
    if let (Ok(content), false) = (&content, reports.is_empty()) {
        notices = notify(shared, &stored.envelope, content, &reports).await;
    }
    if stored.envelope.recipients.iter().all(|r| r.state.is_final()) {
        changes.push(Change::Done { id: id.clone() });
    }
    if let Err(e) = shared.spool.record(&changes).await {
        // The results stay in memory; after a restart the attempt is repeated.
        tracing::error!(id, error = %e, "cannot record delivery results");
    }
    Finished { stored, notices }
}

/// Counts `Received:` header fields in the header block.
fn count_received(content: &[u8]) -> usize {
    let end = content.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(content.len());
    content[..end]
        .split(|&b| b == b'\n')
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// Local recipients go to their Maildirs; the others, grouped by destination, to
/// other servers in one transaction per destination.
async fn deliver(shared: &Arc<Shared>, envelope: &Envelope, pending: &[usize], content: &Arc<Vec<u8>>) -> Results {
    let (local, remote): (Vec<usize>, Vec<usize>) = pending.iter().partition(|&&i| envelope.recipients[i].local);
    let mut results = Vec::new();
    if !local.is_empty() {
        let (shared, envelope, content) = (shared.clone(), envelope.clone(), content.clone());
        let local_results = tokio::task::spawn_blocking(move || {
            local
                .iter()
                .map(|&i| (i, deliver_local(&shared, &envelope, &envelope.recipients[i], &content)))
                .collect::<Results>()
        })
        .await
        .expect("local delivery panicked");
        results.extend(local_results);
    }
    let mut by_destination: BTreeMap<String, Vec<(usize, &Recipient)>> = BTreeMap::new();
    for &i in &remote {
        let r = &envelope.recipients[i];
        let domain = r.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let key = crate::smtp::address::canonical_domain(domain).unwrap_or_else(|| domain.to_ascii_lowercase());
        by_destination.entry(key).or_default().push((i, r));
    }
    for (domain, recipients) in by_destination {
        let job = Job {
            sender: &envelope.sender,
            recipients,
            content,
            smtputf8: envelope.smtputf8,
            eight_bit: envelope.eight_bit,
            ret: envelope.ret.as_deref(),
            envid: envelope.envid.as_deref(),
        };
        results.extend(remote::deliver(&shared.config.remote, &shared.dns, &domain, &job).await);
    }
    results
}

fn deliver_local(shared: &Shared, envelope: &Envelope, rcpt: &Recipient, content: &[u8]) -> Result<Delivered, Failure> {
    let (mailbox, domain) = rcpt
        .address
        .rsplit_once('@')
        .ok_or_else(|| Failure::permanent(format!("5.1.3 bad mailbox {}", rcpt.address)))?;
    let header = format!("Return-Path: <{}>\r\nDelivered-To: {}\r\n", envelope.sender, rcpt.address);
    let host = maildir::host_for_names(&shared.config.hostname);
    let folder = envelope.quarantine.then_some("Junk");
    let path = maildir::deliver(&shared.config.mail_root, domain, mailbox, folder, &host, header.as_bytes(), content)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(Delivered { reply: format!("delivered to maildir as {name}"), relayed: false, dsn_passed_on: false })
}

/// Builds and stores the DSN for `reports`; a message from the null sender gets none.
async fn notify(
    shared: &Arc<Shared>,
    envelope: &Envelope,
    content: &[u8],
    reports: &[(usize, Action, String)],
) -> Vec<(Stored, Arc<Vec<u8>>)> {
    if envelope.sender.is_empty() {
        tracing::info!(id = %envelope.id, "no notice for a message from the null sender");
        return Vec::new();
    }
    let destinations = shared.router.route(&envelope.sender);
    if destinations.is_empty() {
        tracing::warn!(id = %envelope.id, sender = %envelope.sender, "sender cannot receive notices; none sent");
        return Vec::new();
    }
    let lines: Vec<Report<'_>> = reports
        .iter()
        .map(|(i, action, reason)| Report { recipient: &envelope.recipients[*i], action: *action, reason })
        .collect();
    let dsn_id = shared.spool.new_id();
    let dsn = bounce::build(&shared.config.hostname, &dsn_id, envelope, content, &lines);
    let dsn_envelope = Envelope {
        id: dsn_id.clone(),
        arrival: now(),
        sender: String::new(),
        size: dsn.len() as u64,
        smtputf8: envelope.smtputf8,
        eight_bit: true,
        ret: None,
        envid: None,
        quarantine: false,
        recipients: destinations
            .into_iter()
            .map(|(address, local)| Recipient {
                address,
                local,
                original: envelope.sender.clone(),
                orcpt: None,
                notify: None,
                state: RcptState::Queued,
            })
            .collect(),
    };
    match shared.spool.store(&dsn_envelope, &dsn).await {
        Ok(stored) => {
            tracing::info!(id = %envelope.id, notice = %dsn_id, to = %envelope.sender, "delivery status notification queued");
            vec![(stored, Arc::new(dsn))]
        }
        Err(e) => {
            tracing::error!(id = %envelope.id, error = %e, "cannot store delivery status notification");
            Vec::new()
        }
    }
}

/// Reports every pending recipient of a message as failed (for `tern queue delete --bounce`).
pub async fn bounce_all(
    shared: &Arc<Shared>,
    stored: &Stored,
    content: Option<Arc<Vec<u8>>>,
    reason: &str,
) -> Vec<(Stored, Arc<Vec<u8>>)> {
    let content = match content {
        Some(c) => c,
        None => match shared.spool.read_content(stored) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(id = %stored.envelope.id, error = %e, "cannot read message for its bounce");
                return Vec::new();
            }
        },
    };
    let reports: Vec<(usize, Action, String)> = stored
        .envelope
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.state.is_final() && bounce::wanted(r, Action::Failed))
        .map(|(i, _)| (i, Action::Failed, reason.to_string()))
        .collect();
    if reports.is_empty() {
        return Vec::new();
    }
    notify(shared, &stored.envelope, &content, &reports).await
}

#[cfg(test)]
mod tests {
    use super::count_received;

    #[test]
    fn counts_received_in_header_only() {
        assert_eq!(count_received(b"Received: a\r\nreceived: b\r\n\tcont\r\nSubject: x\r\n\r\nReceived: body\r\n"), 2);
    }
}
