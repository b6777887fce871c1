//! Answers to the session's questions: recipients from the local policy, messages
//! stored in the spool and handed to the queue.

use super::Context;
use super::local_submit::LocalUser;
use super::milter_intake::{self, Filtered, Keep, Layout};
use super::received::received_header;
use super::spam;
use super::spill::Received;
use crate::config::ListenMode;
use crate::filter::milter::Milters;
use crate::log_limit::{self, LogLimit};
use crate::metrics::Refusal;
use crate::policy::auth::results::strip_forged;
use crate::policy::auth::{Action, SpfCheck};
use crate::policy::dkim;
use crate::policy::greylist::Verdict;
use crate::smtp::Reply;
use crate::smtp::address::Mailbox;
use crate::smtp::params::Body;
use crate::smtp::sasl::Secret;
use crate::smtp::session::{Destination, Message};
use crate::spool::{Envelope, Part, RcptState, Recipient};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The key under which a client's messages and recipients are counted, or `None`
/// for trusted networks and trusted local users (exempt).
fn rate_key(ctx: &Context, client: IpAddr, user: Option<&str>, local: Option<&LocalUser>) -> Option<String> {
    if local.is_some_and(|l| l.trusted) {
        return None;
    }
    match user {
        Some(user) => Some(format!("user:{user}")),
        None if ctx.trusted(client) => None,
        None => Some(format!("ip:{client}")),
    }
}

fn rate_limited(what: &str) -> Reply {
    Reply::new(451, (4, 7, 1), format!("Rate limit exceeded: too many {what}, try again later"))
        .because(Refusal::RateLimit)
}

/// MAIL: an authenticated user may only use its own addresses; every client is held
/// to the message rate.
/// A local user on the submission socket is held to [`LocalUser::may_send_as`].
pub async fn sender(
    ctx: &Context,
    from: Option<&Mailbox>,
    user: Option<&str>,
    client: IpAddr,
    local: Option<&LocalUser>,
) -> Result<(), Reply> {
    if let Some(local) = local {
        if !local.may_send_as(ctx, from) {
            let from = from.map(Mailbox::to_string).unwrap_or_default();
            tracing::info!(user = %local.login, %from, "local user may not use this sender");
            let own = format!("{}@{}", local.login, ctx.config.hostname);
            return Err(Reply::new(
                553,
                (5, 7, 1),
                format!("Sender address rejected: user {} may send only as {own}", local.login),
            )
            .because(Refusal::SenderNotOwned));
        }
    } else if let Some(user) = user
        && ctx.config.auth.sender_must_match
        && !ctx.policy.may_send_as(user, from)
    {
        let from = from.map(Mailbox::to_string).unwrap_or_default();
        tracing::info!(%client, user, %from, "sender not owned by the authenticated user");
        return Err(Reply::new(553, (5, 7, 1), format!("Sender address rejected: not owned by user {user}"))
            .because(Refusal::SenderNotOwned));
    }
    match rate_key(ctx, client, user, local) {
        Some(key) if !ctx.rates.message(&key).await => {
            tracing::warn!(%client, key, "message rate limit reached");
            Err(rate_limited("messages"))
        }
        _ => Ok(()),
    }
}

/// RCPT: local recipients resolve to mailboxes; other domains are relayed only for
/// authenticated users and clients in `[relay] networks`. The decision is made on the
/// parsed address (source route dropped, domain canonical), so no address trick turns
/// into relaying. A recipient accepted from a stranger is then greylisted when
/// `greylist` is set (an `smtp` listener, a client on no DNS allow list), with `from`
/// the transaction's reverse-path.
pub async fn recipient(
    ctx: &Context,
    to: &Mailbox,
    client: IpAddr,
    user: Option<&str>,
    greylist: bool,
    from: Option<&Mailbox>,
    local: Option<&LocalUser>,
) -> Result<Vec<Destination>, Reply> {
    let routes = if !to.domain.is_empty() && !ctx.policy.is_local(to) {
        if user.is_none() && !ctx.trusted(client) {
            return Err(Reply::new(554, (5, 7, 1), "Relay access denied").because(Refusal::RelayDenied));
        }
        vec![Destination { address: to.to_string(), local: false }]
    } else {
        let routes = ctx.policy.resolve(to).map_err(|r| r.because(Refusal::UnknownRecipient))?;
        routes.iter().map(|r| Destination { address: r.address(), local: r.is_local() }).collect()
    };
    if let Some(list) = ctx.greylist.as_ref().filter(|_| greylist && user.is_none() && !ctx.trusted(client))
        && let Verdict::Defer(wait) = list.check(client, from, to).await
    {
        let from = from.map(Mailbox::to_string).unwrap_or_default();
        tracing::info!(%client, %from, %to, "greylisted");
        let secs = wait.as_millis().div_ceil(1000).max(1);
        return Err(
            Reply::new(451, (4, 7, 1), format!("Greylisted, try again in {secs} seconds")).because(Refusal::Greylisted)
        );
    }
    match rate_key(ctx, client, user, local) {
        Some(key) if !ctx.rates.recipient(&key).await => {
            tracing::warn!(%client, key, "recipient rate limit reached");
            Err(rate_limited("recipients"))
        }
        _ => Ok(routes),
    }
}

/// AUTH: checks the password (argon2, off the async threads). Failures are answered
/// more slowly each time; too many from one IP shut it out for a while.
pub async fn authenticate(ctx: &Context, user: String, password: Secret, client: IpAddr) -> Result<String, Reply> {
    let banned =
        || Reply::new(421, (4, 7, 0), "Too many failed authentications, try again later").because(Refusal::Banned);
    if ctx.auth_failures.is_banned(client).await {
        return Err(banned());
    }
    let users = ctx.users.clone();
    let name = user.clone();
    let verified = tokio::task::spawn_blocking(move || users.verify(&name, &password.0)).await.ok().flatten();
    if let Some(canonical) = verified {
        tracing::info!(%client, user = %canonical, "authenticated");
        return Ok(canonical);
    }
    let failures = ctx.auth_failures.failed(client).await;
    tracing::warn!(%client, %user, failures, "authentication failed");
    tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(6)))).await;
    if ctx.auth_failures.is_banned(client).await {
        return Err(banned());
    }
    Err(Reply::new(535, (5, 7, 8), "Authentication credentials invalid").because(Refusal::AuthFailed))
}

/// How mail from users and relay networks is signed while it arrives: as soon as its
/// header block is in, the `Date` and `Message-ID` a submitted message lacks are
/// added (its queue id is taken then) and the signatures' body hashes start.
pub struct SignPlan<'a> {
    ctx: &'a Context,
    submitted: bool,
}

/// A message being signed as it arrives.
pub struct Signing<'a> {
    id: String,
    added: String,
    signing: dkim::Signing<'a>,
}

impl<'a> SignPlan<'a> {
    /// `None` when no mail of this client is signed (not ours, or no keys).
    pub fn new(ctx: &'a Context, client: IpAddr, user: Option<&str>) -> Option<SignPlan<'a>> {
        let ours = user.is_some() || ctx.trusted(client);
        (ours && !ctx.signer.is_empty()).then_some(SignPlan { ctx, submitted: user.is_some() })
    }

    /// Starts signing the message with this header block; `None` when its `From:`
    /// domain has no key. The whole content is to be written to the result.
    pub fn start(self, header: &[u8]) -> Option<Signing<'a>> {
        let mut signing = self.ctx.signer.start(header)?;
        let id = self.ctx.store.new_id();
        let added = match self.submitted {
            true => missing_headers(header, &id, &self.ctx.config.hostname),
            false => String::new(),
        };
        signing.write(added.as_bytes());
        Some(Signing { id, added, signing })
    }
}

impl Signing<'_> {
    pub fn write(&mut self, bytes: &[u8]) {
        self.signing.write(bytes);
    }
}

/// Where a message came from: the client's address, the local user of the
/// submission socket, the listener's mode.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub peer: IpAddr,
    pub local: Option<&'a LocalUser>,
    pub mode: ListenMode,
}

/// End of message: checks how the sender is authenticated (strangers on port 25) or
/// signs the message (users and relay networks), adds the trace headers, stores
/// durably, queues. Returns the queue id.
///
/// Only the header block of `received` is in memory, unless the message is small: the
/// checks (DKIM, ARC and DMARC) need the header block and the body hashes made as the
/// content arrived. Mail of ours was signed while it arrived (see [`SignPlan`]).
pub async fn message(
    ctx: &Context,
    message: Message,
    mut received: Received<'_>,
    source: Source<'_>,
    spf: Option<SpfCheck>,
    mut milters: Option<&mut Milters>,
) -> Result<String, Reply> {
    let Source { peer, local, mode } = source;
    let signed = received.take_signing().map(|s| (s.id, s.added, s.signing.finish()));
    // Spill hashes the body of every message that has an SPF check.
    let hashed = received.take_body_hashes().map(|h| h.finish()).unwrap_or_default();
    let id = signed.as_ref().map_or_else(|| ctx.store.new_id(), |(id, ..)| id.clone());
    let hostname = &ctx.config.hostname;
    let ours = message.user.is_some() || ctx.trusted(peer);
    // RFC 8601 §5: results that arrive claiming to come from us are forged.
    let cleaned = if ours { None } else { strip_forged(received.header(), hostname) };
    if cleaned.is_some() {
        tracing::info!(id, client = %peer, "removed forged Authentication-Results");
    }
    let header = cleaned.as_deref().unwrap_or(received.header());
    // RFC 8689 §4.1: REQUIRETLS wins over `TLS-Required: No`.
    let tls_optional = !message.params.requiretls && crate::tls_policy::requiretls::tls_optional(header);
    let mut prefix = received_header(&message, peer, hostname, &id, local).into_bytes();
    let mut quarantine = false;
    let mut auth_summary = None;
    if let Some((spf, checker)) = spf.as_ref().zip(ctx.auth.as_ref()) {
        let verdict = checker.message(spf, header, &hashed).await;
        auth_summary = Some(verdict.summary.to_string());
        tracing::info!(id, client = %peer, results = verdict.summary, action = %verdict.action, "authentication checked");
        match verdict.action {
            Action::Refuse(reply) => return Err(reply.because(Refusal::AuthChecks)),
            Action::Quarantine => quarantine = true,
            Action::Accept => {}
        }
        prefix.extend_from_slice(verdict.headers.as_bytes());
    }
    // RFC 6409 §8.2 and §8.3: submitted mail gets the Date and Message-ID it lacks.
    // Signed mail got them when its signing started, and is signed over them: signed
    // before it is queued, so that every retry sends the same signature.
    let (added, signatures) = match signed {
        Some((_, added, signatures)) => (added, Some(signatures)),
        None if message.user.is_some() => (missing_headers(header, &id, hostname), None),
        None => (String::new(), None),
    };
    // The spam filter (spam.rs): refuses the message, or gives its edited header
    // block, which Tern signs again if it signs the message.
    let mut scanned = None;
    let (mut prefix, added, cleaned, signatures) =
        match ctx.config.rspamd.as_ref().filter(|r| r.applies_to(spam::origin(mode, local))) {
            None => (prefix, added, cleaned, signatures),
            Some(rspamd) => {
                let block = [&prefix[..], added.as_bytes(), header].concat();
                let asked = spam::Asked { message: &message, id: &id, peer, local };
                let passed = match spam::scan(rspamd, hostname, asked, block.clone(), &received).await {
                    Ok(passed) => passed,
                    Err(reply) => {
                        emit_notes(&id, milters.as_deref_mut().map(Milters::take_notes).unwrap_or_default());
                        return Err(reply);
                    }
                };
                quarantine |= passed.quarantine;
                scanned = Some(passed.event);
                let signatures = match signatures {
                    Some(_) if passed.header != block => {
                        Some(milter_intake::sign_received(ctx, &id, &passed.header, &received).await?)
                    }
                    kept => kept,
                };
                (Vec::new(), String::new(), Some(passed.header), signatures)
            }
        };
    // The milters have the last word before the message is stored.
    let mut milters = milters.filter(|m| m.wants_message());
    let (parts, _keep, edits) = match milters.as_deref_mut() {
        None => {
            prefix.extend_from_slice(signatures.unwrap_or_default().as_bytes());
            prefix.extend_from_slice(added.as_bytes());
            let (parts, held) = received.into_parts(prefix, cleaned);
            (parts, Keep::Held(held), Vec::new())
        }
        Some(m) => {
            let layout = Layout { trace: prefix, added, cleaned, signatures };
            let filtered = milter_intake::message(ctx, m, &id, received, layout).await;
            let notes = m.take_notes();
            match filtered {
                Err(reply) => {
                    emit_notes(&id, notes);
                    return Err(reply);
                }
                Ok(Filtered::Discarded) => {
                    tracing::info!(id, client = %peer, "discarded by a milter");
                    emit_notes(&id, notes);
                    return Ok(id);
                }
                Ok(Filtered::Kept { parts, keep, edits }) => {
                    m.restore_notes(notes);
                    (parts, keep, edits)
                }
            }
        }
    };
    let size = parts.iter().map(Part::len).sum();
    // Small messages go to the queue in memory too; others are read back from the spool.
    let in_memory = parts.iter().all(|p| matches!(p, Part::Bytes(_)));
    let content = in_memory.then(|| {
        let mut all = Vec::with_capacity(size as usize);
        for part in &parts {
            if let Part::Bytes(bytes) = part {
                all.extend_from_slice(bytes);
            }
        }
        Arc::new(all)
    });
    let mut recipients = Vec::new();
    // `alice@x`, `Alice@X.` and `alice+tag@x` in one transaction get one copy.
    let mut seen = std::collections::HashSet::new();
    for rcpt in &message.rcpts {
        for route in &rcpt.routes {
            if !seen.insert(route) {
                continue;
            }
            recipients.push(Recipient {
                address: route.address.clone(),
                local: route.local,
                original: rcpt.to.to_string(),
                orcpt: rcpt.params.orcpt.clone(),
                notify: rcpt.params.notify,
                state: RcptState::Queued,
            });
        }
    }
    let mut sender = message.from.as_ref().map(Mailbox::to_string).unwrap_or_default();
    if !edits.is_empty() {
        milter_intake::apply_envelope(ctx, &id, &edits, &mut sender, &mut recipients, &mut quarantine);
        if recipients.is_empty() {
            tracing::info!(id, client = %peer, "milters removed every recipient; nothing to deliver");
            emit_notes(&id, milters.as_deref_mut().map(Milters::take_notes).unwrap_or_default());
            return Ok(id);
        }
    }
    let envelope = Envelope {
        id: id.clone(),
        arrival: crate::queue::now(),
        sender,
        size,
        smtputf8: message.params.smtputf8,
        eight_bit: message.params.body == Body::EightBitMime,
        ret: message.params.ret,
        envid: message.params.envid.clone(),
        quarantine,
        held: false,
        requiretls: message.params.requiretls,
        tls_optional,
        recipients,
    };
    let notes = milters.map(Milters::take_notes).unwrap_or_default();
    match ctx.store.store(&envelope, parts).await {
        Ok(stored) => {
            tracing::info!(
                id,
                from = %envelope.sender,
                rcpts = envelope.recipients.len(),
                size = envelope.size,
                client = %peer,
                requiretls = envelope.requiretls,
                tls_optional = envelope.tls_optional,
                "queued"
            );
            trace_received(&message, &envelope, peer, local, auth_summary, scanned, notes);
            if envelope.requiretls {
                crate::metrics::get().requiretls(crate::metrics::RequireTls::Accepted);
            }
            ctx.queue.enqueue(stored, content);
            Ok(id)
        }
        Err(e) => {
            // A full disk (or a database out of reach) refuses every message; one line
            // per period says so.
            static STORE_FAILED: LogLimit = LogLimit::new(log_limit::PERIOD);
            let reply = if ctx.store.shared() {
                Reply::new(
                    451,
                    (4, 3, 0),
                    "Requested action aborted: the queue database is unavailable, try again later",
                )
            } else {
                Reply::new(452, (4, 3, 1), "Insufficient system storage, try again later")
            };
            if let Some(repeats) = STORE_FAILED.admit() {
                tracing::error!(id, error = %e, client = %peer, repeats, code = reply.code, "cannot store message; refused");
            }
            emit_notes(&id, notes);
            Err(reply)
        }
    }
}

/// The message's first trace events: received, scanned (by rspamd), and stored.
fn trace_received(
    message: &Message,
    envelope: &Envelope,
    peer: IpAddr,
    local: Option<&LocalUser>,
    auth: Option<String>,
    scanned: Option<crate::admin::trace::Event>,
    milter_notes: Vec<crate::admin::trace::Event>,
) {
    use crate::admin::trace::{self, Event};
    let user = message.user.clone().or_else(|| local.map(|l| l.login.clone()));
    let recipients = envelope.recipients.iter().map(|r| r.address.clone()).collect();
    let event = Event::Received {
        client: peer.to_string(),
        helo: message.hello.name.clone(),
        tls: message.tls.clone(),
        user,
        auth,
        sender: envelope.sender.clone(),
        recipients,
        size: envelope.size,
    };
    trace::emit(&envelope.id, event);
    if let Some(scanned) = scanned {
        trace::emit(&envelope.id, scanned);
    }
    emit_notes(&envelope.id, milter_notes);
    trace::emit(&envelope.id, Event::Stored);
}

/// The milters' trace events of the message.
fn emit_notes(id: &str, notes: Vec<crate::admin::trace::Event>) {
    for note in notes {
        crate::admin::trace::emit(id, note);
    }
}

/// `Date:` and `Message-ID:` lines for whichever of the two the header block lacks.
fn missing_headers(content: &[u8], id: &str, hostname: &str) -> String {
    let end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 2);
    let has = |name: &[u8]| {
        content[..end]
            .split(|&b| b == b'\n')
            .any(|line| line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name))
    };
    let mut out = String::new();
    if !has(b"date:") {
        out.push_str(&format!("Date: {}\r\n", chrono::Local::now().to_rfc2822()));
    }
    if !has(b"message-id:") {
        out.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::missing_headers;

    #[test]
    fn adds_only_what_is_missing() {
        let both = missing_headers(b"Subject: x\r\n\r\nDate: in body\r\n", "ID1", "mx.test");
        assert!(both.starts_with("Date: ") && both.contains("Message-ID: <ID1@mx.test>"));
        let none =
            missing_headers(b"DATE: Mon, 1 Jan 2024 00:00:00 +0000\r\nmessage-id: <a@b>\r\n\r\nx", "ID1", "mx.test");
        assert_eq!(none, "");
    }
}
