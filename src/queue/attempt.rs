//! One delivery attempt for one message: every recipient not yet final.

use super::bounce::{self, Action, Quoted, Report};
use super::log::{Clock, delays};
use super::{Settings, Shared, now, retry};
use crate::admin::trace::{self, Event};
use crate::config::Method;
use crate::delivery::remote::{self, Job};
use crate::delivery::{Delivered, Detail, Failure, Via, command, lmtp, maildir};
use crate::metrics::{DeliveryResult, Transport};
use crate::spool::{Change, Content, Envelope, Part, RcptState, Recipient, Stored};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// RFC 5321 §6.3: more Received headers than this means a mail loop.
const MAX_HOPS: usize = 50;

/// Content up to this size is read from the store once and shared by every
/// destination; larger content is read a piece at a time by each, so that an attempt
/// holds a bounded buffer whatever the message's size. The same bound keeps a
/// message being received in memory.
const HELD_WHOLE: u64 = 128 << 10;

/// How much of a message is searched for the end of its header block.
const MAX_HEAD: usize = 1 << 20;

/// The message after the attempt, and the notices (DSNs) it caused, already stored.
pub struct Finished {
    pub stored: Stored,
    pub notices: Vec<(Stored, Arc<Vec<u8>>)>,
}

/// Each recipient's result, and how its mail travelled.
type Results = Vec<(usize, Result<Delivered, Failure>, Via)>;

/// What an attempt has decided so far: the notices owed, and the changes that wait
/// for those notices to be stored first.
struct Outcome {
    reports: Vec<(usize, Action, Detail)>,
    held: Vec<Change>,
    /// The message as the store holds it, for the scheduler should the attempt fail.
    progress: Progress,
    /// When the attempt began, for the delivery log line.
    clock: Clock,
}

/// The message as the store holds it while an attempt runs: the states recorded so far.
pub type Progress = Arc<std::sync::Mutex<Stored>>;

/// Tries every pending recipient, records the results, and returns the updated message.
pub async fn run(
    shared: &Arc<Shared>,
    mut stored: Stored,
    content: Option<Arc<Vec<u8>>>,
    progress: Progress,
) -> Finished {
    crate::fault::point("attempt");
    let clock = Clock::start(stored.envelope.arrival, &stored.envelope.id);
    let settings = shared.settings();
    let id = stored.envelope.id.clone();
    let content = match content {
        Some(c) => Ok((Content::from(c.clone()), count_received(&c))),
        None => {
            let (store, stored) = (shared.store.clone(), stored.clone());
            tokio::task::spawn_blocking(move || {
                let content = store.open_content(&stored)?.held_if_within(HELD_WHOLE)?;
                let head = content.head(MAX_HEAD)?;
                Ok((content, head))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map(|(content, head)| (content, count_received(&head)))
        }
    };
    let pending: Vec<usize> =
        (0..stored.envelope.recipients.len()).filter(|&i| !stored.envelope.recipients[i].state.is_final()).collect();
    let mut outcome = Outcome { reports: Vec::new(), held: Vec::new(), progress, clock };
    match &content {
        Err(e) => {
            tracing::error!(id, error = %e, "cannot read message from spool");
            let f = Failure::temporary((4, 3, 0), format!("cannot read spool: {e}"));
            let results = pending.iter().map(|&i| (i, Err(f.clone()), Via::starting("none"))).collect();
            trace_attempt(&stored, "spool", None, &results);
            settle(shared, &settings, &mut stored, results, &mut outcome, true, None).await;
        }
        Ok((_, hops)) if *hops > MAX_HOPS => {
            let f = Failure::permanent((5, 4, 6), format!("mail loop: more than {MAX_HOPS} Received headers"));
            let results = pending.iter().map(|&i| (i, Err(f.clone()), Via::starting("none"))).collect();
            trace_attempt(&stored, "loop check", None, &results);
            settle(shared, &settings, &mut stored, results, &mut outcome, true, None).await;
        }
        Ok((content, _)) => deliver(shared, &settings, &mut stored, &pending, content, &mut outcome).await,
    }
    let notices = match (&content, outcome.reports.is_empty()) {
        (Ok((content, _)), false) => notify(shared, &settings, &stored.envelope, content, &outcome.reports).await,
        _ => Some(Vec::new()),
    };
    // Without its notice stored (the server is stopping), a held result is left for
    // the attempt after the restart.
    if notices.is_some() {
        let mut changes = outcome.held;
        let finished = stored.envelope.recipients.iter().all(|r| r.state.is_final());
        if finished {
            changes.push(Change::Done { id: id.clone() });
        }
        record(shared, &id, &changes).await;
        if finished {
            trace_finished(&stored);
        }
    }
    Finished { stored, notices: notices.unwrap_or_default() }
}

/// Turns the results of one destination into recipient states. The changes are
/// recorded at once, except those that owe the sender a notice: they wait until the
/// notice is stored, so that a crash in between repeats the attempt rather than
/// losing the notice. The `last` destination's changes wait for the attempt's final
/// record (with `Done`), which follows at once. `transport` names the way the mail
/// went in the metrics (by default, local or remote as the recipient is).
async fn settle(
    shared: &Shared,
    settings: &Settings,
    stored: &mut Stored,
    results: Results,
    outcome: &mut Outcome,
    last: bool,
    transport: Option<Transport>,
) {
    let id = stored.envelope.id.clone();
    let now = now();
    let config = &settings.config;
    let expired = now - stored.envelope.arrival > config.max_age.as_secs() as i64;
    let waited = now - stored.envelope.arrival;
    let mut changes = Vec::new();
    for (i, result, via) in results {
        let rcpt = &mut stored.envelope.recipients[i];
        let (delay, delays) = delays(&outcome.clock, &via);
        let (to, relay, tls) = (&rcpt.address, &via.relay, &via.tls);
        let (attempts, notified) = match &rcpt.state {
            RcptState::Deferred { attempts, notified, .. } => (attempts + 1, *notified),
            _ => (1, false),
        };
        let reports = outcome.reports.len();
        let transport = transport.unwrap_or(if rcpt.local { Transport::Local } else { Transport::Remote });
        rcpt.state = match result {
            Ok(d) => {
                let dsn = d.detail.status;
                tracing::info!(%id, %to, %relay, %delay, %delays, %dsn, status = %"sent", %tls, detail = %d.detail, "delivery");
                let action = if d.relayed { Action::Relayed } else { Action::Delivered };
                if !d.dsn_passed_on && bounce::wanted(rcpt, action) {
                    outcome.reports.push((i, action, d.detail.clone()));
                }
                RcptState::Delivered { at: now, detail: d.detail }
            }
            Err(f) if f.temporary && !expired => {
                let wait = retry::delay(&config.retry, attempts);
                let dsn = f.detail.status;
                tracing::warn!(%id, %to, %relay, %delay, %delays, %dsn, status = %"deferred", %tls, attempts, retry_in = ?wait, detail = %f.detail, "delivery");
                let notify = config.delay_notice.is_some_and(|d| waited >= d.as_secs() as i64) && !notified;
                if notify && bounce::wanted(rcpt, Action::Delayed) {
                    outcome.reports.push((i, Action::Delayed, f.detail.clone()));
                }
                RcptState::Deferred {
                    attempts,
                    next_attempt: now + wait.as_secs().max(1) as i64,
                    detail: f.detail,
                    notified: notified || notify,
                }
            }
            Err(f) => {
                let detail = if f.temporary { expired_detail(f.detail) } else { f.detail };
                let dsn = detail.status;
                tracing::warn!(%id, %to, %relay, %delay, %delays, %dsn, status = %"bounced", %tls, %detail, "delivery");
                if bounce::wanted(rcpt, Action::Failed) {
                    outcome.reports.push((i, Action::Failed, detail.clone()));
                }
                RcptState::Bounced { at: now, detail }
            }
        };
        count(transport, &rcpt.state, waited);
        let change = Change::Recipient { id: id.clone(), index: i, state: rcpt.state.clone() };
        if outcome.reports.len() > reports { outcome.held.push(change) } else { changes.push(change) }
    }
    // The last destination's results go with the attempt's final record: one write.
    if last {
        outcome.held.extend(changes);
        return;
    }
    record(shared, &id, &changes).await;
    let mut progress = outcome.progress.lock().unwrap_or_else(|e| e.into_inner());
    for change in &changes {
        if let Change::Recipient { index, state, .. } = change {
            progress.envelope.recipients[*index].state = state.clone();
        }
    }
}

/// A recipient's new state in the metrics; `waited`: seconds since the message arrived.
fn count(transport: Transport, state: &RcptState, waited: i64) {
    let metrics = crate::metrics::get();
    let result = match state {
        RcptState::Delivered { .. } => DeliveryResult::Delivered,
        RcptState::Bounced { .. } => DeliveryResult::Bounced,
        RcptState::Deferred { .. } | RcptState::Queued => DeliveryResult::Deferred,
    };
    metrics.delivery(transport, result);
    if state.is_final() {
        metrics.delivery_latency.observe(waited.max(0) as f64);
    }
}

/// A temporary failure that outlived the message's time in the queue (RFC 3463 §3.5).
fn expired_detail(last: Detail) -> Detail {
    let text = match last.text.as_str() {
        "" => "delivery time expired".to_string(),
        why => format!("delivery time expired: {why}"),
    };
    Detail { status: (5, 4, 7).into(), server: last.server, text }
}

/// Records changes (see [`durably`]).
pub(super) async fn record(shared: &Shared, id: &str, changes: &[Change]) {
    if !changes.is_empty() {
        durably(shared, id, "delivery results", || shared.store.record(changes)).await;
    }
}

/// Runs a store operation until it succeeds: a result kept only in memory would be
/// repeated after a restart, and a notice would be lost. While a store fails, the
/// scheduler starts no new attempt. Only a stopping server gives up (`None`); the
/// attempt is then repeated after the restart.
async fn durably<T, F>(shared: &Shared, id: &str, what: &str, mut op: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = std::io::Result<T>>,
{
    let mut wait = RECORD_RETRY_FIRST;
    loop {
        match op().await {
            Ok(v) => {
                shared.set_store_failing(false);
                return Some(v);
            }
            Err(e) => {
                shared.set_store_failing(true);
                tracing::error!(id, error = %e, retry_in = ?wait, "cannot store {what}; deliveries paused");
            }
        }
        if !shared.pause(wait).await {
            tracing::error!(id, "stopping before the {what} were stored; the attempt is repeated after restart");
            return None;
        }
        wait = (wait * 2).min(RECORD_RETRY_MAX);
    }
}

/// First and longest waits before a failed record is tried again.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(10);

/// Counts `Received:` header fields in the header block (of `content`, or of the
/// head that [`Content::head`] gives).
fn count_received(content: &[u8]) -> usize {
    let end = memchr::memmem::find(content, b"\r\n\r\n").unwrap_or(content.len());
    content[..end]
        .split(|&b| b == b'\n')
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// Local recipients go to their Maildirs, or to their domain's LMTP server in one
/// transaction per server; the others, grouped by destination, to other servers in
/// one transaction per destination. Each destination's results are settled as soon
/// as they are known.
async fn deliver(
    shared: &Arc<Shared>,
    settings: &Arc<Settings>,
    stored: &mut Stored,
    pending: &[usize],
    content: &Content,
    outcome: &mut Outcome,
) {
    let envelope = stored.envelope.clone();
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    let mut by_lmtp: BTreeMap<String, Vec<(usize, &Recipient)>> = BTreeMap::new();
    for &i in pending {
        let r = &envelope.recipients[i];
        let domain = r.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !r.local {
            remote.push(i);
            continue;
        }
        match settings.config.local.method_for(domain) {
            Method::Lmtp(server) => by_lmtp.entry(server).or_default().push((i, r)),
            method => local.push((i, method)),
        }
    }
    let mut by_destination: BTreeMap<String, Vec<(usize, &Recipient)>> = BTreeMap::new();
    for &i in &remote {
        let r = &envelope.recipients[i];
        let domain = r.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let key = crate::smtp::address::canonical_domain(domain).unwrap_or_else(|| domain.to_ascii_lowercase());
        by_destination.entry(key).or_default().push((i, r));
    }
    let destinations = usize::from(!local.is_empty()) + by_lmtp.len() + by_destination.len();
    let mut settled = 0;
    let mut last = || {
        settled += 1;
        settled == destinations
    };
    if !local.is_empty() {
        let (settings2, envelope, content) = (settings.clone(), envelope.clone(), content.clone());
        let results = tokio::task::spawn_blocking(move || {
            local
                .iter()
                .map(|(i, method)| {
                    let (i, mut via) = (*i, Via::starting("local"));
                    let rcpt = &envelope.recipients[i];
                    let result = deliver_local(&settings2, &envelope, rcpt, method, &content, &mut via);
                    via.transmission = via.started.elapsed();
                    (i, result, via)
                })
                .collect::<Results>()
        })
        .await
        .expect("local delivery panicked");
        trace_attempt(stored, "local", None, &results);
        settle(shared, settings, stored, results, outcome, last(), None).await;
    }
    let job = |recipients| Job {
        id: &envelope.id,
        sender: &envelope.sender,
        recipients,
        content,
        smtputf8: envelope.smtputf8,
        eight_bit: envelope.eight_bit,
        ret: envelope.ret,
        envid: envelope.envid.as_deref(),
        requiretls: envelope.requiretls,
        tls_optional: envelope.tls_optional,
    };
    for (server, recipients) in by_lmtp {
        let target = lmtp::Target::parse(&server);
        let (results, via) = lmtp::deliver(&settings.config.remote, &target, &job(recipients)).await;
        let results = results.into_iter().map(|(i, r)| (i, r, via.clone())).collect();
        trace_attempt(stored, &via.relay, None, &results);
        settle(shared, settings, stored, results, outcome, last(), Some(Transport::Lmtp)).await;
    }
    for (domain, recipients) in by_destination {
        let job = job(recipients);
        let delivery = remote::deliver(&settings.config.remote, &settings.dns, &domain, &job);
        let ((results, via), tls) = trace::with_tls(delivery).await;
        let results = results.into_iter().map(|(i, r)| (i, r, via.clone())).collect();
        trace_attempt(stored, &domain, tls, &results);
        settle(shared, settings, stored, results, outcome, last(), None).await;
    }
}

/// Delivers to one local recipient by its domain's `method`: a Maildir, or a delivery
/// command (`relay=command` in the log).
fn deliver_local(
    settings: &Settings,
    envelope: &Envelope,
    rcpt: &Recipient,
    method: &Method,
    content: &Content,
    via: &mut Via,
) -> Result<Delivered, Failure> {
    let (mailbox, domain) = rcpt
        .address
        .rsplit_once('@')
        .ok_or_else(|| Failure::permanent((5, 1, 3), format!("bad mailbox {}", rcpt.address)))?;
    let local = &settings.config.local;
    if let Method::Command(argv) = method {
        via.relay = "command".into();
        let vars = command::Vars {
            sender: envelope.sender.clone(),
            recipient: rcpt.address.clone(),
            user: mailbox.to_string(),
            domain: domain.to_string(),
            extension: command::extension(&rcpt.original, &local.subaddress_separator),
            original: rcpt.original.clone(),
            id: envelope.id.clone(),
        };
        // Postfix's local(8) adds these two for a command as for a mailbox.
        let header = format!("Return-Path: <{}>\nDelivered-To: {}\n", envelope.sender, rcpt.address);
        return command::deliver(argv, &vars, &header, content, local.command_timeout);
    }
    let header = format!("Return-Path: <{}>\r\nDelivered-To: {}\r\n", envelope.sender, rcpt.address);
    let host = maildir::host_for_names(&settings.config.hostname);
    let folder = envelope.quarantine.then_some("Junk");
    let path =
        maildir::deliver(&settings.config.mail_root, domain, mailbox, folder, &host, header.as_bytes(), content)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let detail = Detail::new((2, 0, 0), format!("delivered to maildir as {name}"));
    Ok(Delivered { detail, relayed: false, dsn_passed_on: false })
}

/// The DSN for `reports` as a message to queue: its envelope and content. A message
/// from the null sender, or from a sender nobody can route to, gets none.
fn notice(
    shared: &Shared,
    settings: &Settings,
    envelope: &Envelope,
    quoted: &Quoted,
    reports: &[(usize, Action, Detail)],
) -> Option<(Envelope, Vec<u8>)> {
    if envelope.sender.is_empty() {
        tracing::info!(id = %envelope.id, "no notice for a message from the null sender");
        return None;
    }
    let destinations = settings.router.route(&envelope.sender);
    if destinations.is_empty() {
        tracing::warn!(id = %envelope.id, sender = %envelope.sender, "sender cannot receive notices; none sent");
        return None;
    }
    let lines: Vec<Report<'_>> = reports
        .iter()
        .map(|(i, action, detail)| Report { recipient: &envelope.recipients[*i], action: *action, detail })
        .collect();
    let dsn_id = shared.store.new_id();
    let dsn = bounce::build(&settings.config.hostname, &dsn_id, envelope, quoted, &lines);
    let dsn_envelope = Envelope {
        id: dsn_id,
        arrival: now(),
        sender: String::new(),
        size: dsn.len() as u64,
        smtputf8: envelope.smtputf8,
        eight_bit: true,
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
        ..Default::default()
    };
    Some((dsn_envelope, dsn))
}

fn queued(envelope: &Envelope, stored: Stored, dsn: Vec<u8>) -> Vec<(Stored, Arc<Vec<u8>>)> {
    tracing::info!(id = %envelope.id, notice = %stored.envelope.id, to = %envelope.sender, "delivery status notification queued");
    trace_notice(envelope, &stored.envelope);
    vec![(stored, Arc::new(dsn))]
}

/// What a notice may return of `content`, read off the async threads.
async fn quoted(content: &Content) -> std::io::Result<Quoted> {
    let content = content.clone();
    tokio::task::spawn_blocking(move || Quoted::of(&content)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Builds and stores the DSN for `reports`, trying until it is stored; `None` when
/// the server stopped first. Content that cannot be read back is reported by its
/// envelope alone.
async fn notify(
    shared: &Shared,
    settings: &Settings,
    envelope: &Envelope,
    content: &Content,
    reports: &[(usize, Action, Detail)],
) -> Option<Vec<(Stored, Arc<Vec<u8>>)>> {
    let quoted = quoted(content).await.unwrap_or_else(|e| {
        tracing::error!(id = %envelope.id, error = %e, "cannot read the message back for its notice");
        Quoted::nothing()
    });
    let Some((dsn_envelope, dsn)) = notice(shared, settings, envelope, &quoted, reports) else {
        return Some(Vec::new());
    };
    let stored = durably(shared, &envelope.id, "delivery status notification", || {
        shared.store.store(&dsn_envelope, vec![Part::Bytes(dsn.clone())])
    })
    .await?;
    Some(queued(envelope, stored, dsn))
}

/// Reports every pending recipient of a message as failed (for `tern queue delete
/// --bounce`); an error when the notice cannot be made or stored.
pub async fn bounce_all(
    shared: &Arc<Shared>,
    stored: &Stored,
    content: Option<Arc<Vec<u8>>>,
    detail: Detail,
) -> Result<Vec<(Stored, Arc<Vec<u8>>)>, String> {
    let content = match content {
        Some(c) => Content::from(c),
        None => {
            let (store, stored) = (shared.store.clone(), stored.clone());
            tokio::task::spawn_blocking(move || store.open_content(&stored))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|e| format!("cannot read the message: {e}"))?
        }
    };
    let reports: Vec<(usize, Action, Detail)> = stored
        .envelope
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.state.is_final() && bounce::wanted(r, Action::Failed))
        .map(|(i, _)| (i, Action::Failed, detail.clone()))
        .collect();
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let quoted = quoted(&content).await.map_err(|e| format!("cannot read the message: {e}"))?;
    let settings = shared.settings();
    let Some((dsn_envelope, dsn)) = notice(shared, &settings, &stored.envelope, &quoted, &reports) else {
        return Ok(Vec::new());
    };
    let queued_dsn = shared
        .store
        .store(&dsn_envelope, vec![Part::Bytes(dsn.clone())])
        .await
        .map_err(|e| format!("cannot store the notice: {e}"))?;
    Ok(queued(&stored.envelope, queued_dsn, dsn))
}

/// One destination's results in the message's trace.
fn trace_attempt(stored: &Stored, destination: &str, tls: Option<String>, results: &Results) {
    let results = results
        .iter()
        .map(|(i, result, _)| {
            let (outcome, detail) = match result {
                Ok(d) => ("delivered", &d.detail),
                Err(f) if f.temporary => ("deferred", &f.detail),
                Err(f) => ("failed", &f.detail),
            };
            let recipient = stored.envelope.recipients[*i].address.clone();
            trace::RcptResult { recipient, outcome: outcome.into(), detail: detail.clone() }
        })
        .collect();
    trace::emit(&stored.envelope.id, Event::Attempt { destination: destination.into(), tls, results });
}

/// The final state of a message whose recipients are all final.
fn trace_finished(stored: &Stored) {
    let recipients = &stored.envelope.recipients;
    let delivered = recipients.iter().filter(|r| matches!(r.state, RcptState::Delivered { .. })).count();
    let bounced = recipients.len() - delivered;
    let state = match (delivered, bounced) {
        (_, 0) => "delivered",
        (0, _) => "bounced",
        _ => "partly bounced",
    };
    trace::emit(&stored.envelope.id, Event::Finished { state: state.into(), delivered, bounced });
}

/// A notice queued for `envelope`: in its trace, and as the notice's own first events.
fn trace_notice(envelope: &Envelope, notice: &Envelope) {
    trace::emit(&envelope.id, Event::Notice { notice: notice.id.clone(), to: envelope.sender.clone() });
    let recipients = notice.recipients.iter().map(|r| r.address.clone()).collect();
    let reason = format!("delivery status notification for {}", envelope.id);
    trace::emit(&notice.id, Event::Created { reason, recipients, size: notice.size });
    trace::emit(&notice.id, Event::Stored);
}

#[cfg(test)]
mod tests {
    use super::count_received;

    #[test]
    fn counts_received_in_header_only() {
        assert_eq!(count_received(b"Received: a\r\nreceived: b\r\n\tcont\r\nSubject: x\r\n\r\nReceived: body\r\n"), 2);
    }
}
