//! Answers to the session's questions: recipients from the local policy, messages
//! stored in the spool and handed to the queue.

use super::Context;
use super::received::received_header;
use crate::policy::local::Route;
use crate::smtp::Reply;
use crate::smtp::address::Mailbox;
use crate::smtp::params::{Body, Ret};
use crate::smtp::session::Message;
use crate::spool::{Envelope, RcptState, Recipient};
use std::net::IpAddr;
use std::sync::Arc;

/// RCPT: local recipients resolve to mailboxes; other domains are relayed only for
/// clients in `[relay] networks`. The decision is made on the parsed address (source
/// routes dropped, domain canonical), so no address trick turns into relaying.
pub fn recipient(ctx: &Context, to: &Mailbox, client: IpAddr) -> Result<Vec<String>, Reply> {
    if !to.domain.is_empty() && !ctx.policy.is_local(to) {
        if ctx.config.relay.networks.iter().any(|n| n.contains(&client)) {
            return Ok(vec![to.to_string()]);
        }
        return Err(Reply::new(554, (5, 7, 1), "Relay access denied"));
    }
    let routes = ctx.policy.resolve(to)?;
    Ok(routes.iter().map(Route::address).collect())
}

/// End of message: adds the trace header, stores durably, queues. Returns the queue id.
pub async fn message(ctx: &Context, message: Message, peer: IpAddr) -> Result<String, Reply> {
    let id = ctx.spool.new_id();
    let mut content = received_header(&message, peer, &ctx.config.hostname, &id).into_bytes();
    content.extend_from_slice(&message.content);
    let mut recipients = Vec::new();
    for rcpt in &message.rcpts {
        for route in &rcpt.routes {
            let local = Mailbox::parse(route).is_ok_and(|m| ctx.policy.is_local(&m));
            recipients.push(Recipient {
                address: route.clone(),
                local,
                original: rcpt.to.to_string(),
                orcpt: rcpt.params.orcpt.clone(),
                notify: rcpt.params.notify.map(|n| {
                    let words =
                        [(n.never, "NEVER"), (n.success, "SUCCESS"), (n.failure, "FAILURE"), (n.delay, "DELAY")];
                    words.iter().filter(|(on, _)| *on).map(|(_, w)| *w).collect::<Vec<_>>().join(",")
                }),
                state: RcptState::Queued,
            });
        }
    }
    let envelope = Envelope {
        id: id.clone(),
        arrival: crate::queue::now(),
        sender: message.from.as_ref().map(Mailbox::to_string).unwrap_or_default(),
        size: content.len() as u64,
        smtputf8: message.params.smtputf8,
        eight_bit: message.params.body == Body::EightBitMime,
        ret: message.params.ret.map(|r| if r == Ret::Full { "FULL".into() } else { "HDRS".into() }),
        envid: message.params.envid.clone(),
        recipients,
    };
    match ctx.spool.store(&envelope, &content).await {
        Ok(stored) => {
            tracing::info!(
                id,
                from = %envelope.sender,
                rcpts = envelope.recipients.len(),
                size = envelope.size,
                client = %peer,
                "queued"
            );
            ctx.queue.enqueue(stored, Some(Arc::new(content)));
            Ok(id)
        }
        Err(e) => {
            tracing::error!(id, error = %e, client = %peer, "cannot store message; refused with 452");
            Err(Reply::new(452, (4, 3, 1), "Insufficient system storage, try again later"))
        }
    }
}
