//! One delivery attempt for one message: every recipient not yet final.

use super::{QueueConfig, now, retry};
use crate::delivery::{Failure, maildir};
use crate::spool::{Change, RcptState, Recipient, Spool, Stored};
use std::sync::Arc;

/// Tries every pending recipient, records the results, and returns the updated message.
pub async fn run(
    spool: &Spool,
    config: &Arc<QueueConfig>,
    mut stored: Stored,
    content: Option<Arc<Vec<u8>>>,
) -> Stored {
    let id = stored.envelope.id.clone();
    let content = match content {
        Some(c) => Ok(c),
        None => {
            let (spool, body) = (spool.clone(), stored.body);
            tokio::task::spawn_blocking(move || spool.read_body(&body).map(Arc::new))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
    };
    let pending: Vec<usize> = (0..stored.envelope.recipients.len())
        .filter(|&i| !stored.envelope.recipients[i].state.is_final())
        .collect();
    let results: Vec<(usize, Result<String, Failure>)> = match content {
        Err(e) => {
            tracing::error!(id, error = %e, "cannot read message from spool");
            pending
                .iter()
                .map(|&i| {
                    (
                        i,
                        Err(Failure::temporary(format!("4.3.0 cannot read spool: {e}"))),
                    )
                })
                .collect()
        }
        Ok(content) => {
            let (config, envelope) = (config.clone(), stored.envelope.clone());
            tokio::task::spawn_blocking(move || {
                pending
                    .iter()
                    .map(|&i| {
                        (
                            i,
                            deliver_one(
                                &config,
                                &envelope.sender,
                                &envelope.recipients[i],
                                &content,
                            ),
                        )
                    })
                    .collect()
            })
            .await
            .expect("delivery task panicked")
        }
    };
    let now = now();
    let expired = now - stored.envelope.arrival > config.max_age.as_secs() as i64;
    let mut changes = Vec::new();
    for (i, result) in results {
        let rcpt = &mut stored.envelope.recipients[i];
        let attempts = match &rcpt.state {
            RcptState::Deferred { attempts, .. } => attempts + 1,
            _ => 1,
        };
        rcpt.state = match result {
            Ok(reply) => {
                tracing::info!(id, to = %rcpt.address, status = "delivered", %reply, "delivery");
                RcptState::Delivered { at: now, reply }
            }
            Err(f) if f.temporary && !expired => {
                let wait = retry::delay(&config.retry, attempts);
                tracing::warn!(id, to = %rcpt.address, status = "deferred", attempts, retry_in = ?wait, reason = %f.reason, "delivery");
                RcptState::Deferred {
                    attempts,
                    next_attempt: now + wait.as_secs().max(1) as i64,
                    reason: f.reason,
                }
            }
            Err(f) => {
                let reason = if f.temporary {
                    format!("5.4.7 delivery time expired: {}", f.reason)
                } else {
                    f.reason
                };
                tracing::warn!(id, to = %rcpt.address, status = "bounced", %reason, "delivery");
                RcptState::Bounced { at: now, reason }
            }
        };
        changes.push(Change::Recipient {
            id: id.clone(),
            index: i,
            state: rcpt.state.clone(),
        });
    }
    if stored
        .envelope
        .recipients
        .iter()
        .all(|r| r.state.is_final())
    {
        changes.push(Change::Done { id: id.clone() });
    }
    if let Err(e) = spool.record(&changes).await {
        // The results stay in memory; after a restart the attempt is repeated.
        tracing::error!(id, error = %e, "cannot record delivery results");
    }
    stored
}

/// Delivers to one recipient; returns a short description of the success.
fn deliver_one(
    config: &QueueConfig,
    sender: &str,
    rcpt: &Recipient,
    content: &[u8],
) -> Result<String, Failure> {
    if !rcpt.local {
        return Err(Failure::temporary(
            "4.4.0 delivery to other servers is not enabled",
        ));
    }
    let (mailbox, domain) = rcpt
        .address
        .rsplit_once('@')
        .ok_or_else(|| Failure::permanent(format!("5.1.3 bad mailbox {}", rcpt.address)))?;
    let header = format!(
        "Return-Path: <{sender}>\r\nDelivered-To: {}\r\n",
        rcpt.address
    );
    let host = maildir::host_for_names(&config.hostname);
    let path = maildir::deliver(
        &config.mail_root,
        domain,
        mailbox,
        &host,
        header.as_bytes(),
        content,
    )?;
    Ok(format!(
        "2.0.0 delivered to maildir as {}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ))
}
