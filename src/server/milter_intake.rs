//! The end of a message with milters: they are sent the message as it will be stored
//! (Tern's Received and Authentication-Results fields, the Date and Message-ID added
//! to submitted mail, then the message as received; without Tern's DKIM signature,
//! made over the final content), and their edits are applied: header fields, a new
//! body (kept in a file, never whole in memory), the envelope's sender and
//! recipients, quarantine.

use super::Context;
use super::spill::Received;
use crate::filter::milter::body::Body;
use crate::filter::milter::headers::Fields;
use crate::filter::milter::packet::BODY_CHUNK;
use crate::filter::milter::{Edit, Milters};
use crate::smtp::Reply;
use crate::smtp::address::Mailbox;
use crate::spool::{Part, RcptState, Recipient};
use std::sync::Arc;

/// The message as the milters left it.
pub enum Filtered<'a> {
    /// A milter discarded it: 250, and nothing is stored.
    Discarded,
    Kept {
        parts: Vec<Part>,
        /// What the parts need until they are stored.
        keep: Keep<'a>,
        /// Envelope edits, for [`apply_envelope`].
        edits: Vec<Edit>,
    },
}

/// What stored parts borrow from: the message as received, or its share of memory.
pub enum Keep<'a> {
    Received(#[allow(dead_code)] Box<Received<'a>>),
    Held(#[allow(dead_code)] super::spill::Held),
}

/// The header block the milters see, as the parts of [`message`] lay it out.
pub struct Layout {
    /// Received and Authentication-Results.
    pub trace: Vec<u8>,
    /// Date and Message-ID added to submitted mail.
    pub added: String,
    /// The header block as received, if forged fields were removed from it.
    pub cleaned: Option<Vec<u8>>,
    /// Tern's DKIM signatures made while the message arrived, if it signs it.
    pub signatures: Option<String>,
}

/// Runs the milters over the message; a refusal is the reply to the DATA.
pub async fn message<'a>(
    ctx: &'a Context,
    milters: &mut Milters,
    id: &str,
    received: Received<'a>,
    layout: Layout,
) -> Result<Filtered<'a>, Reply> {
    let Layout { trace, added, cleaned, signatures } = layout;
    let header = cleaned.as_deref().unwrap_or(received.header());
    let block = [&trace[..], added.as_bytes(), header].concat();
    let mut fields = Fields::parse(&block);
    let files = ctx.spill_files.clone();
    let new_file = move || files.file();
    let max = ctx.config.limits.max_message_size;
    let outcome = {
        let (memory, file) = received.body();
        let body = Body::new(memory, file);
        milters.message(id, &fields, &body, &new_file, max).await?
    };
    if outcome.discard {
        return Ok(Filtered::Discarded);
    }
    let mut header_changed = false;
    let mut envelope = Vec::new();
    for edit in outcome.edits {
        match edit {
            Edit::AddHeader { .. } | Edit::InsertHeader { .. } | Edit::ChangeHeader { .. } => {
                header_changed |= fields.apply(&edit, true);
            }
            other => envelope.push(other),
        }
    }
    let new_body = outcome.body.map(|(file, len)| (Arc::new(file), len));
    if !header_changed && new_body.is_none() {
        let mut prefix = trace;
        prefix.extend_from_slice(signatures.unwrap_or_default().as_bytes());
        prefix.extend_from_slice(added.as_bytes());
        let (parts, held) = received.into_parts(prefix, cleaned);
        return Ok(Filtered::Kept { parts, keep: Keep::Held(held), edits: envelope });
    }
    let header = fields.to_bytes();
    // RFC 6376 §3.7: the signatures made while the message arrived no longer match;
    // it is signed again over the content as stored.
    let signatures = match signatures {
        None => String::new(),
        Some(_) => {
            let body = match &new_body {
                Some((file, len)) => Body::new(&[], Some((file.clone(), *len))),
                None => {
                    let (memory, file) = received.body();
                    Body::new(memory, file)
                }
            };
            sign(ctx, &header, &body).await.map_err(|e| sign_failed(id, e))?
        }
    };
    match new_body {
        None => {
            let (parts, held) = received.into_parts(signatures.into_bytes(), Some(header));
            Ok(Filtered::Kept { parts, keep: Keep::Held(held), edits: envelope })
        }
        Some((file, len)) => {
            let mut head = signatures.into_bytes();
            head.extend_from_slice(&header);
            head.extend_from_slice(b"\r\n");
            let parts = vec![Part::Bytes(head), Part::File { file, offset: 0, len }];
            Ok(Filtered::Kept { parts, keep: Keep::Received(Box::new(received)), edits: envelope })
        }
    }
}

/// Tern's signatures for the header block `header` (edited by another filter) over
/// the body as received.
pub async fn sign_received(ctx: &Context, id: &str, header: &[u8], received: &Received<'_>) -> Result<String, Reply> {
    let (memory, file) = received.body();
    sign(ctx, header, &Body::new(memory, file)).await.map_err(|e| sign_failed(id, e))
}

fn sign_failed(id: &str, e: std::io::Error) -> Reply {
    tracing::error!(id, error = %e, "cannot read back a message to sign it");
    Reply::new(451, (4, 3, 0), "Local error, try again later")
}

/// Tern's signatures for the header block `header` over `body`.
async fn sign(ctx: &Context, header: &[u8], body: &Body<'_>) -> std::io::Result<String> {
    let Some(mut signing) = ctx.signer.start(header) else { return Ok(String::new()) };
    signing.write(header);
    signing.write(b"\r\n");
    let mut at = 0;
    while at < body.len() {
        let piece = body.read(at, BODY_CHUNK).await?;
        at += piece.len() as u64;
        signing.write(&piece);
    }
    Ok(signing.finish())
}

/// The envelope edits of the milters, in order: the sender (SMFIR_CHGFROM),
/// recipients removed (matched on the address given or the one it resolved to) and
/// added (a local one through the local policy, aliases included; another domain's
/// relayed), and quarantine (delivered to the Junk folder).
pub fn apply_envelope(
    ctx: &Context,
    id: &str,
    edits: &[Edit],
    sender: &mut String,
    recipients: &mut Vec<Recipient>,
    quarantine: &mut bool,
) {
    let bare = |a: &str| a.trim().trim_start_matches('<').trim_end_matches('>').to_string();
    for edit in edits {
        match edit {
            Edit::ChangeFrom { address, .. } => *sender = bare(address),
            Edit::DeleteRcpt(address) => {
                let address = bare(address);
                recipients.retain(|r| {
                    !r.original.eq_ignore_ascii_case(&address) && !r.address.eq_ignore_ascii_case(&address)
                });
            }
            Edit::AddRcpt { address, .. } => {
                let address = bare(address);
                let Ok(to) = Mailbox::parse(&address) else {
                    tracing::warn!(id, %address, "milter added a recipient that is not an address; ignored");
                    continue;
                };
                let routes = if !to.domain.is_empty() && !ctx.policy.is_local(&to) {
                    vec![(to.to_string(), false)]
                } else {
                    match ctx.policy.resolve(&to) {
                        Ok(routes) => routes.iter().map(|r| (r.address(), r.is_local())).collect(),
                        Err(reply) => {
                            tracing::warn!(id, %address, reply = %reply, "milter added an unknown local recipient; ignored");
                            continue;
                        }
                    }
                };
                for (route, local) in routes {
                    if recipients.iter().any(|r| r.address == route) {
                        continue;
                    }
                    recipients.push(Recipient {
                        address: route,
                        local,
                        original: to.to_string(),
                        orcpt: None,
                        notify: None,
                        state: RcptState::Queued,
                    });
                }
            }
            Edit::Quarantine(reason) => {
                tracing::info!(id, reason, "quarantined by a milter");
                *quarantine = true;
            }
            _ => {}
        }
    }
}
