//! The spam filter at the end of a message: rspamd's verdict (`filter::rspamd`)
//! becomes the reply to the client or the message's header edits, a trace event and
//! a count in `tern_spam_results_total`.

use super::local_submit::LocalUser;
use super::spill::Received;
use crate::admin::trace::{self, Event, Symbol};
use crate::config::{ListenMode, OnError, Origin, Rspamd};
use crate::filter::rspamd::{Action, Answer, Client, Content, Envelope, edit};
use crate::log_limit::{self, LogLimit};
use crate::metrics::{self, Refusal, SpamResult};
use crate::smtp::Reply;
use crate::smtp::session::Message;
use std::net::IpAddr;

/// Longest text of rspamd's put in a reply to the client.
const MAX_REPLY_TEXT: usize = 200;

/// A message rspamd let through.
pub struct Passed {
    /// The whole header block, with rspamd's edits.
    pub header: Vec<u8>,
    /// To the recipients' Junk folder (rspamd's custom `quarantine` action).
    pub quarantine: bool,
    /// The trace event, recorded once the message is stored.
    pub event: Event,
}

/// Where a message came from, as `[rspamd] applies_to` names it.
pub fn origin(mode: ListenMode, local: Option<&LocalUser>) -> Origin {
    match (local, mode) {
        (Some(_), _) => Origin::Local,
        (None, ListenMode::Smtp) => Origin::Smtp,
        (None, ListenMode::Submission) => Origin::Submission,
        (None, ListenMode::Submissions) => Origin::Submissions,
        // No mail arrives over HTTP.
        (None, ListenMode::Http | ListenMode::Https) => Origin::Smtp,
    }
}

/// The message rspamd is asked about, and where it came from.
pub struct Asked<'a> {
    pub message: &'a Message,
    pub id: &'a str,
    pub peer: IpAddr,
    pub local: Option<&'a LocalUser>,
}

/// Asks rspamd about the message whose header block (with Tern's own fields) is
/// `header` and whose rest is in `received`; a refusal is the reply for the client.
/// `hostname` is Tern's own.
pub async fn scan(
    config: &Rspamd,
    hostname: &str,
    asked: Asked<'_>,
    header: Vec<u8>,
    received: &Received<'_>,
) -> Result<Passed, Reply> {
    let Asked { message, id, peer, local } = asked;
    let from = message.from.as_ref().map(ToString::to_string).unwrap_or_default();
    let envelope = Envelope {
        client: peer,
        helo: &message.hello.name,
        from: &from,
        rcpts: message.rcpts.iter().map(|r| r.to.to_string()).collect(),
        queue_id: id,
        user: message.user.as_deref().or(local.map(|l| l.login.as_str())),
        // Tern looks up no client host names yet.
        hostname: None,
        mta_name: hostname,
    };
    let (body, file) = received.body();
    let mut head = Vec::with_capacity(header.len() + 2 + body.len());
    head.extend_from_slice(&header);
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(body);
    let content = Content { head, file };
    let verdict = match Client::new(config) {
        Ok(client) => client.check(&envelope, content).await,
        Err(e) => Err(e),
    };
    match verdict {
        Ok(answer) => judge(answer, header, id, peer),
        Err(error) => failed(config.on_error, error, header, id, peer),
    }
}

/// rspamd's text for the client (printable ASCII, short), or `default`.
fn reply_text(answer: &Answer, default: &str) -> String {
    let text: String = answer
        .smtp_message
        .as_deref()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { ' ' })
        .take(MAX_REPLY_TEXT)
        .collect();
    match text.trim() {
        "" => default.to_string(),
        text => text.to_string(),
    }
}

fn judge(answer: Answer, header: Vec<u8>, id: &str, peer: IpAddr) -> Result<Passed, Reply> {
    let result = match answer.action {
        Action::NoAction => SpamResult::NoAction,
        Action::AddHeader | Action::Quarantine => SpamResult::AddHeader,
        Action::RewriteSubject => SpamResult::RewriteSubject,
        Action::Greylist => SpamResult::Greylist,
        Action::SoftReject => SpamResult::SoftReject,
        Action::Reject | Action::Discard => SpamResult::Reject,
    };
    metrics::get().spam_result(result);
    tracing::info!(
        id,
        client = %peer,
        action = answer.action.name(),
        score = answer.score,
        required = answer.required_score,
        "rspamd verdict"
    );
    let refusal = match answer.action {
        Action::Reject | Action::Discard => {
            Some(Reply::new(550, (5, 7, 1), reply_text(&answer, "Spam message rejected")))
        }
        Action::SoftReject => Some(Reply::new(451, (4, 7, 1), reply_text(&answer, "Try again later"))),
        Action::Greylist => Some(Reply::new(451, (4, 7, 1), reply_text(&answer, "Greylisted, try again later"))),
        Action::NoAction | Action::AddHeader | Action::RewriteSubject | Action::Quarantine => None,
    };
    let event = |outcome: String| Event::Scanned {
        action: answer.action.name().to_string(),
        score: Some(answer.score),
        required_score: answer.required_score.is_finite().then_some(answer.required_score),
        symbols: answer.symbols.iter().map(|(name, score)| Symbol { name: name.clone(), score: *score }).collect(),
        error: None,
        outcome,
    };
    if let Some(reply) = refusal {
        let reply = reply.because(Refusal::Spam);
        trace::emit(id, event(format!("refused with {reply}")));
        return Err(reply);
    }
    let outcome = match answer.action {
        Action::Quarantine => "delivered marked, to the Junk folder",
        a if edit::marks(a) => "delivered marked",
        _ => "delivered",
    };
    let event = event(outcome.to_string());
    Ok(Passed { header: edit::apply(&header, &answer), quarantine: answer.action == Action::Quarantine, event })
}

/// rspamd gave no verdict: `on_error` decides.
fn failed(on_error: OnError, error: String, header: Vec<u8>, id: &str, peer: IpAddr) -> Result<Passed, Reply> {
    metrics::get().spam_result(SpamResult::Error);
    // rspamd down fails every message; one line per period says so.
    static FAILED: LogLimit = LogLimit::new(log_limit::PERIOD);
    if let Some(repeats) = FAILED.admit() {
        tracing::warn!(id, client = %peer, error, %on_error, repeats, "rspamd gave no verdict");
    }
    let reply = match on_error {
        OnError::Accept => None,
        OnError::Tempfail => Some(Reply::new(451, (4, 7, 1), "Spam filter unavailable, try again later")),
        OnError::Reject => Some(Reply::new(550, (5, 7, 1), "Spam filter unavailable, message refused")),
    };
    let event = |outcome: String| Event::Scanned {
        action: "error".into(),
        score: None,
        required_score: None,
        symbols: Vec::new(),
        error: Some(error.clone()),
        outcome,
    };
    match reply {
        Some(reply) => {
            let reply = reply.because(Refusal::Spam);
            trace::emit(id, event(format!("refused with {reply} (on_error = {on_error})")));
            Err(reply)
        }
        None => Ok(Passed { header, quarantine: false, event: event("delivered unmarked (on_error = accept)".into()) }),
    }
}
