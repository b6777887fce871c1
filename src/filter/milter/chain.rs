//! The milters of one SMTP connection, called in order at each stage as Postfix calls
//! its `smtpd_milters`: the first that refuses decides; one that accepts is not
//! called again for the message (or the connection, at connect and HELO); one that
//! fails follows its `on_error`.
//!
//! At the end of a message each milter is sent the message as received (with Tern's
//! trace header fields), not as earlier milters edited it, and all their edits are
//! applied in milter order afterwards: what Postfix does.

use super::body::Body;
use super::client::{Connection, Error};
use super::headers::Fields;
use super::packet::{BODY_CHUNK, Command};
use super::protocol::{self, Edit, Step, Verdict};
use crate::admin::trace::Event;
use crate::config::{Milter, MilterAddress, OnError, Stage};
use crate::smtp::Reply;
use crate::smtp::address::Mailbox;
use std::fs::File;
use std::io::{Seek, Write};
use std::net::SocketAddr;

/// What the macros are made of.
#[derive(Debug, Clone, Default)]
pub struct Info {
    /// Tern's host name (`j`).
    pub hostname: String,
    /// The listener mode (`{daemon_name}`).
    pub daemon: String,
    pub client: Option<SocketAddr>,
    /// The address the client connected to (`{if_addr}`).
    pub local: Option<SocketAddr>,
    pub helo: String,
    /// `TLSv1.3 with cipher …`.
    pub tls: Option<String>,
    /// The authenticated user (`{auth_authen}`).
    pub user: Option<String>,
    /// The SASL mechanism it authenticated with (`{auth_type}`); none for a local user.
    pub auth_type: Option<&'static str>,
}

/// The result of the milters at the end of a message.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Accept and deliver nothing.
    pub discard: bool,
    /// Header, recipient, sender and quarantine edits, in the order to apply them.
    pub edits: Vec<Edit>,
    /// The new body, written to a file, and its length.
    pub body: Option<(File, u64)>,
}

enum State {
    /// Not connected yet: the connection opens at the first MAIL.
    New,
    Open(Box<Connection>),
    /// Accepted the connection: not called again.
    Accepted,
    /// Failed: `refusal` (per `on_error`) answers each later transaction, if any.
    Failed,
}

struct Slot {
    config: Milter,
    target: MilterAddress,
    state: State,
    /// A refusal for the whole connection (at connect or HELO, or after a failure).
    refusal: Option<Reply>,
    /// Accepted the message: not called again until the next one.
    done_with_message: bool,
    /// MAIL was sent and the message has not ended: an SMFIC_ABORT is owed.
    in_transaction: bool,
}

/// The milters of one connection.
pub struct Milters {
    slots: Vec<Slot>,
    pub info: Info,
    /// A milter discarded the message at MAIL or RCPT.
    discard: bool,
    /// Trace events of the transaction, to write once it has a queue id.
    notes: Vec<Event>,
    /// The queue id of the message at its end, for the log.
    queue_id: String,
}

/// A failure, per `on_error`: the refusal, if any.
fn on_error(config: &Milter) -> Option<Reply> {
    match config.on_error {
        OnError::Accept => None,
        OnError::Tempfail => Some(protocol::tempfail()),
        OnError::Reject => Some(protocol::reject()),
    }
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Continue | Verdict::Skip => "continue",
        Verdict::Accept => "accept",
        Verdict::Reject(_) => "reject",
        Verdict::Tempfail(_) => "tempfail",
        Verdict::Discard => "discard",
    }
}

impl Milters {
    /// The milters of `configs` that apply to `mode`; `None` when there are none.
    pub fn new(configs: &[Milter], mode: crate::config::ListenMode, info: Info) -> Option<Milters> {
        let slots: Vec<Slot> = configs
            .iter()
            .filter(|m| m.applies_to.contains(&mode))
            .filter_map(|m| {
                let target = m.target().ok()?;
                Some(Slot {
                    config: m.clone(),
                    target,
                    state: State::New,
                    refusal: None,
                    done_with_message: false,
                    in_transaction: false,
                })
            })
            .collect();
        (!slots.is_empty()).then_some(Milters {
            slots,
            info,
            discard: false,
            notes: Vec::new(),
            queue_id: String::new(),
        })
    }

    /// Whether any milter is told of the message (so the message is held for them).
    pub fn wants_message(&self) -> bool {
        self.slots.iter().any(|s| s.config.told(Stage::Data) && !matches!(s.state, State::Accepted | State::Failed))
    }

    /// The trace events of the transaction so far.
    pub fn take_notes(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.notes)
    }

    /// Puts back events taken with [`Milters::take_notes`].
    pub fn restore_notes(&mut self, notes: Vec<Event>) {
        self.notes = notes;
    }

    fn note(&mut self, i: usize, stage: &str, result: String) {
        let milter = self.slots[i].config.name.clone();
        self.notes.push(Event::Milter { milter, stage: stage.to_string(), result });
    }

    fn count(&self, i: usize, result: &'static str) {
        crate::metrics::get().milter(&self.slots[i].config.name, result);
    }

    /// Milter `i` failed at `stage`: logged once, counted, traced; it is not called
    /// again on this connection. Returns the refusal its `on_error` gives.
    fn failed(&mut self, i: usize, stage: &str, error: &Error) -> Option<Reply> {
        let slot = &mut self.slots[i];
        let refusal = on_error(&slot.config);
        let action = slot.config.on_error;
        let client = self.info.client.map(|c| c.to_string()).unwrap_or_default();
        let id = &self.queue_id;
        tracing::warn!(milter = %slot.config.name, stage, %error, on_error = %action, %client, id, "milter failed");
        slot.state = State::Failed;
        slot.refusal = refusal.clone();
        slot.in_transaction = false;
        self.count(i, "error");
        self.note(i, stage, format!("error ({error}), on_error {action}"));
        refusal
    }

    fn macros(&self, step: Step, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let info = &self.info;
        let mut pairs = Vec::new();
        match step {
            Step::Connect => {
                pairs.push(("j", info.hostname.clone()));
                pairs.push(("{daemon_name}", info.daemon.clone()));
                pairs.push(("v", "Tern".to_string()));
                if let Some(client) = info.client {
                    let ip = client.ip().to_string();
                    pairs.push(("_", format!("[{ip}] [{ip}]")));
                    pairs.push(("{client_addr}", ip.clone()));
                    pairs.push(("{client_port}", client.port().to_string()));
                    // Tern looks up no client names, like Postfix's `unknown`.
                    pairs.push(("{client_name}", format!("[{ip}]")));
                }
                if let Some(local) = info.local {
                    pairs.push(("{if_addr}", local.ip().to_string()));
                    pairs.push(("{daemon_addr}", local.ip().to_string()));
                    pairs.push(("{daemon_port}", local.port().to_string()));
                }
            }
            Step::Helo => {
                if let Some(tls) = &info.tls {
                    let (version, cipher) = tls.split_once(" with cipher ").unwrap_or((tls, ""));
                    pairs.push(("{tls_version}", version.to_string()));
                    pairs.push(("{cipher}", cipher.to_string()));
                }
            }
            Step::Mail => {
                if let Some(user) = &info.user {
                    pairs.push(("{auth_authen}", user.clone()));
                }
                if let Some(mechanism) = info.auth_type {
                    pairs.push(("{auth_type}", mechanism.to_string()));
                }
            }
            _ => {}
        }
        pairs.extend(extra.iter().cloned());
        pairs
    }

    /// The packets of one step: its macros, then its command.
    fn packets(&self, step: Step, extra: &[(&'static str, String)], command: Command) -> Vec<u8> {
        let mut out = Vec::new();
        let pairs = self.macros(step, extra);
        if !pairs.is_empty() {
            Command::Macro { stage: step.command(), pairs: &pairs }.encode(&mut out);
        }
        command.encode(&mut out);
        out
    }

    /// Opens milter `i` and tells it of the connection and the HELO. `Err` is a
    /// refusal for the transaction; `Ok(false)` when it is not to be called further.
    async fn open(&mut self, i: usize) -> Result<bool, Reply> {
        let (target, limit) = (self.slots[i].target.clone(), self.slots[i].config.timeout);
        let mut conn = match Connection::open(&target, limit).await {
            Ok(conn) => conn,
            Err(e) => return self.failed(i, "connect", &e).map_or(Ok(false), Err),
        };
        let client = self.info.client;
        let ip = client.map(|c| c.ip().to_string()).unwrap_or_default();
        let hostname = format!("[{ip}]");
        let connect = Command::Connect {
            hostname: &hostname,
            family: match client {
                Some(SocketAddr::V4(_)) => b'4',
                Some(SocketAddr::V6(_)) => b'6',
                None => b'U',
            },
            port: client.map_or(0, |c| c.port()),
            address: &ip,
        };
        let helo = self.info.helo.clone();
        let steps = [
            (Step::Connect, Stage::Connect, self.packets(Step::Connect, &[], connect)),
            (Step::Helo, Stage::Helo, self.packets(Step::Helo, &[], Command::Helo(&helo))),
        ];
        for (step, stage, bytes) in steps {
            if !conn.agreed.sends(step) || !self.slots[i].config.told(stage) {
                continue;
            }
            let verdict = conn.ask(step, &bytes, &mut |_| Ok(())).await;
            match verdict {
                Err(e) => return self.failed(i, step.name(), &e).map_or(Ok(false), Err),
                Ok(v) => {
                    self.count(i, verdict_name(&v));
                    match v {
                        Verdict::Continue | Verdict::Skip => {}
                        Verdict::Accept => {
                            self.slots[i].state = State::Accepted;
                            return Ok(false);
                        }
                        Verdict::Reject(reply) | Verdict::Tempfail(reply) => {
                            self.note(i, step.name(), format!("refused the connection: {reply}"));
                            self.slots[i].refusal = Some(reply.clone());
                            self.slots[i].state = State::Open(Box::new(conn));
                            return Err(reply);
                        }
                        Verdict::Discard => self.discard = true,
                    }
                }
            }
        }
        self.slots[i].state = State::Open(Box::new(conn));
        Ok(true)
    }

    /// MAIL: a new transaction; the milters are connected at the first one.
    pub async fn mail(&mut self, from: Option<&Mailbox>, params: Vec<String>) -> Result<(), Reply> {
        self.discard = false;
        self.notes.clear();
        self.queue_id.clear();
        let addr = from.map(Mailbox::to_string).unwrap_or_default();
        let mut args = vec![format!("<{addr}>")];
        args.extend(params);
        for i in 0..self.slots.len() {
            self.slots[i].done_with_message = false;
            if let Some(refusal) = self.slots[i].refusal.clone() {
                return Err(refusal);
            }
            match self.slots[i].state {
                State::Accepted | State::Failed => continue,
                State::New => {
                    if !self.open(i).await? {
                        continue;
                    }
                }
                State::Open(_) => {}
            }
            if self.slots[i].in_transaction {
                // The last transaction ended without its message (RSET, refusals).
                let mut abort = Vec::new();
                Command::Abort.encode(&mut abort);
                if let Err(e) = self.conn(i).send(&abort, "abort").await {
                    self.failed(i, "abort", &e).map_or(Ok(()), Err)?;
                    continue;
                }
            }
            self.slots[i].in_transaction = true;
            let bytes = self.packets(Step::Mail, &[("{mail_addr}", addr.clone())], Command::Mail(&args));
            self.step(i, Step::Mail, Stage::Mail, bytes).await?;
        }
        Ok(())
    }

    /// RCPT: a refusal refuses this recipient only.
    pub async fn rcpt(&mut self, to: &Mailbox, local: bool) -> Result<(), Reply> {
        let addr = to.to_string();
        let args = vec![format!("<{addr}>")];
        let mailer = if local { "local" } else { "smtp" };
        let extra =
            [("{rcpt_addr}", addr.clone()), ("{rcpt_host}", to.domain.clone()), ("{rcpt_mailer}", mailer.into())];
        for i in 0..self.slots.len() {
            let bytes = self.packets(Step::Rcpt, &extra, Command::Rcpt(&args));
            self.step(i, Step::Rcpt, Stage::Rcpt, bytes).await?;
        }
        Ok(())
    }

    fn conn(&mut self, i: usize) -> &mut Connection {
        match &mut self.slots[i].state {
            State::Open(conn) => conn,
            _ => unreachable!("milter {i} is open"),
        }
    }

    /// Whether milter `i` is to be told of `step` of the message.
    fn active(&self, i: usize, step: Step, stage: Stage) -> bool {
        let slot = &self.slots[i];
        match &slot.state {
            State::Open(conn) => !slot.done_with_message && slot.config.told(stage) && conn.agreed.sends(step),
            _ => false,
        }
    }

    /// One step of MAIL or RCPT with milter `i`.
    async fn step(&mut self, i: usize, step: Step, stage: Stage, bytes: Vec<u8>) -> Result<(), Reply> {
        if !self.active(i, step, stage) || self.discard {
            return Ok(());
        }
        match self.conn(i).ask(step, &bytes, &mut |_| Ok(())).await {
            Err(e) => self.failed(i, step.name(), &e).map_or(Ok(()), Err),
            Ok(v) => self.verdict(i, step, v),
        }
    }

    fn verdict(&mut self, i: usize, step: Step, v: Verdict) -> Result<(), Reply> {
        self.count(i, verdict_name(&v));
        match v {
            Verdict::Continue | Verdict::Skip => Ok(()),
            Verdict::Accept => {
                self.slots[i].done_with_message = true;
                Ok(())
            }
            Verdict::Discard => {
                self.note(i, step.name(), "discard".into());
                self.discard = true;
                Ok(())
            }
            Verdict::Reject(reply) | Verdict::Tempfail(reply) => {
                self.note(i, step.name(), format!("refused: {reply}"));
                Err(reply)
            }
        }
    }

    /// The end of the message: each milter is sent the header `fields` and the
    /// `body`, and its verdict and edits are gathered. A replacement body is written
    /// to a file from `new_file`, at most `max_body` bytes.
    pub async fn message(
        &mut self,
        id: &str,
        fields: &Fields,
        body: &Body<'_>,
        new_file: &(dyn Fn() -> std::io::Result<File> + Sync),
        max_body: u64,
    ) -> Result<Outcome, Reply> {
        let mut outcome = Outcome { discard: self.discard, ..Outcome::default() };
        self.queue_id = id.to_string();
        let queue_id = [("i", id.to_string())];
        for i in 0..self.slots.len() {
            if outcome.discard {
                break;
            }
            if !self.active(i, Step::EndOfMessage, Stage::Data) {
                continue;
            }
            self.slots[i].in_transaction = false;
            match self.one_message(i, &queue_id, fields, body, new_file, max_body, &mut outcome).await {
                Ok(()) => {}
                Err(Ok(reply)) => return Err(reply),
                Err(Err((stage, e))) => {
                    if let Some(refusal) = self.failed(i, stage, &e) {
                        return Err(refusal);
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// The message with milter `i`: `Err(Ok(reply))` when it refused it,
    /// `Err(Err(..))` when it failed.
    #[allow(clippy::too_many_arguments)]
    async fn one_message(
        &mut self,
        i: usize,
        queue_id: &[(&'static str, String)],
        fields: &Fields,
        body: &Body<'_>,
        new_file: &(dyn Fn() -> std::io::Result<File> + Sync),
        max_body: u64,
        outcome: &mut Outcome,
    ) -> Result<(), Result<Reply, (&'static str, Error)>> {
        let name = self.slots[i].config.name.clone();
        let agreed = self.conn(i).agreed;
        let leading_space = self.conn(i).leading_space();
        let mut steps = Vec::new();
        if agreed.sends(Step::Data) {
            steps.push((Step::Data, self.packets(Step::Data, queue_id, Command::Data)));
        }
        // The header fields and their end are small: their packets are made at once.
        if agreed.sends(Step::Header) {
            for (field_name, value) in fields.for_milter(leading_space) {
                let mut out = Vec::new();
                Command::Header { name: &field_name, value: &value }.encode(&mut out);
                steps.push((Step::Header, out));
            }
        }
        if agreed.sends(Step::EndOfHeaders) {
            steps.push((Step::EndOfHeaders, self.packets(Step::EndOfHeaders, queue_id, Command::EndOfHeaders)));
        }
        // Whether to go on with the next step; a refusal or a failure otherwise.
        let mut settle = |this: &mut Milters, step: Step, v: Result<Verdict, Error>| {
            let v = v.map_err(|e| Err((step.name(), e)))?;
            if step == Step::EndOfMessage || !matches!(v, Verdict::Continue | Verdict::Skip) {
                this.count(i, verdict_name(&v));
            }
            match v {
                Verdict::Discard => {
                    this.note(i, step.name(), "discard".into());
                    outcome.discard = true;
                    Ok(false)
                }
                Verdict::Accept => {
                    this.slots[i].done_with_message = true;
                    Ok(false)
                }
                Verdict::Skip => Ok(false),
                Verdict::Continue => Ok(true),
                Verdict::Reject(reply) | Verdict::Tempfail(reply) => {
                    this.note(i, step.name(), format!("refused: {reply}"));
                    Err(Ok(reply))
                }
            }
        };
        // Packets of steps the milter does not answer (SMFIP_NR_*) go out together
        // with the next one it answers, or once they fill a write.
        let mut pending = Vec::new();
        for (step, bytes) in steps {
            pending.extend_from_slice(&bytes);
            if !agreed.answers(step) {
                continue;
            }
            let v = self.conn(i).ask(step, &std::mem::take(&mut pending), &mut |_| Ok(())).await;
            if !settle(self, step, v)? {
                return Ok(());
            }
        }
        if agreed.sends(Step::Body) {
            let mut at = 0;
            while at < body.len() {
                let chunk = body.read(at, BODY_CHUNK).await.map_err(|e| Err(("body", Error::Io(e.to_string()))))?;
                at += chunk.len() as u64;
                Command::Body(&chunk).encode(&mut pending);
                if !agreed.answers(Step::Body) {
                    if pending.len() >= 4 * BODY_CHUNK {
                        let sent = self.conn(i).send(&std::mem::take(&mut pending), "body").await;
                        sent.map_err(|e| Err(("body", e)))?;
                    }
                    continue;
                }
                let v = self.conn(i).ask(Step::Body, &std::mem::take(&mut pending), &mut |_| Ok(())).await;
                let skip = matches!(v, Ok(Verdict::Skip));
                if !settle(self, Step::Body, v)? {
                    if skip {
                        break;
                    }
                    return Ok(());
                }
            }
        }
        // End of message: the edits come before the verdict.
        pending.extend(self.packets(Step::EndOfMessage, queue_id, Command::EndOfBody));
        let end = pending;
        let mut edits = Vec::new();
        let mut replaced: Option<(File, u64)> = None;
        // The last byte of the new body so far, to make its line ends CRLF.
        let mut last = 0u8;
        let mut collect = |edit: Edit| -> Result<(), String> {
            match edit {
                Edit::ReplaceBody(piece) => {
                    let piece = crlf(&piece, &mut last);
                    let (file, len) = match &mut replaced {
                        Some(r) => r,
                        None => {
                            let mut file = new_file().map_err(|e| format!("cannot keep the new body: {e}"))?;
                            file.rewind().map_err(|e| e.to_string())?;
                            replaced.insert((file, 0))
                        }
                    };
                    *len += piece.len() as u64;
                    if *len > max_body {
                        return Err(format!("replaced the body with more than {max_body} bytes"));
                    }
                    file.write_all(&piece).map_err(|e| format!("cannot keep the new body: {e}"))
                }
                other => {
                    edits.push(with_leading_space(other, leading_space));
                    Ok(())
                }
            }
        };
        let mut v = self.conn(i).ask(Step::EndOfMessage, &end, &mut collect).await;
        if let Some((file, len)) = replaced.as_mut().filter(|(_, len)| *len > 0 && last != b'\n') {
            // The content ends with a line end, as SMTP carries it.
            if let Err(e) = file.write_all(b"\r\n") {
                v = Err(Error::Io(format!("cannot keep the new body: {e}")));
            }
            *len += 2;
        }
        let accepted = matches!(v, Ok(Verdict::Accept));
        // Edits that come with an accept stand too (libmilter sends them first).
        if settle(self, Step::EndOfMessage, v)? || accepted {
            let changes = edits.len() + usize::from(replaced.is_some());
            if changes > 0 {
                tracing::info!(milter = %name, changes, "milter edited the message");
                let replacement = replaced.iter().map(|(_, n)| format!("body replaced ({n} bytes)"));
                let summary: Vec<String> = edits.iter().map(describe).chain(replacement).collect();
                self.note(i, "eom", summary.join("; "));
            }
            if edits.iter().any(|e| matches!(e, Edit::Quarantine(_))) {
                self.count(i, "quarantine");
            }
            outcome.edits.extend(edits);
            if replaced.is_some() {
                outcome.body = replaced;
            }
        }
        Ok(())
    }

    /// Ends every conversation (SMFIC_QUIT).
    pub async fn quit(self) {
        for slot in self.slots {
            if let State::Open(conn) = slot.state {
                conn.quit().await;
            }
        }
    }
}

/// Header edits with their values as they follow the colon: milters that did not
/// negotiate SMFIP_HDR_LEADSPC send them without the usual space.
fn with_leading_space(edit: Edit, leading_space: bool) -> Edit {
    let space = |value: String| if leading_space || value.is_empty() { value } else { format!(" {value}") };
    match edit {
        Edit::AddHeader { name, value } => Edit::AddHeader { name, value: space(value) },
        Edit::InsertHeader { index, name, value } => Edit::InsertHeader { index, name, value: space(value) },
        Edit::ChangeHeader { index, name, value } => Edit::ChangeHeader { index, name, value: space(value) },
        other => other,
    }
}

/// `piece` with each bare LF made CRLF; `last` is the byte before it, and is updated.
fn crlf(piece: &[u8], last: &mut u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(piece.len() + piece.len() / 32);
    for &b in piece {
        if b == b'\n' && *last != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        *last = b;
    }
    out
}

/// An edit, for the trace.
fn describe(edit: &Edit) -> String {
    match edit {
        Edit::AddHeader { name, .. } => format!("header {name} added"),
        Edit::InsertHeader { name, index, .. } => format!("header {name} inserted at {index}"),
        Edit::ChangeHeader { name, index, value } if value.is_empty() => format!("header {name} #{index} deleted"),
        Edit::ChangeHeader { name, index, .. } => format!("header {name} #{index} changed"),
        Edit::ReplaceBody(_) => "body replaced".into(),
        Edit::AddRcpt { address, .. } => format!("recipient {address} added"),
        Edit::DeleteRcpt(address) => format!("recipient {address} removed"),
        Edit::ChangeFrom { address, .. } => format!("sender changed to {address}"),
        Edit::Quarantine(reason) => format!("quarantined ({reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_bodies_get_crlf_line_ends_across_pieces() {
        let mut last = 0;
        let mut out = crlf(b"a\nb\r", &mut last);
        out.extend(crlf(b"\nc\n", &mut last));
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn header_values_are_kept_as_they_follow_the_colon() {
        let add = |value: &str| Edit::AddHeader { name: "X".into(), value: value.into() };
        assert_eq!(with_leading_space(add("v"), false), add(" v"));
        assert_eq!(with_leading_space(add(" v"), true), add(" v"));
        let delete = Edit::ChangeHeader { index: 1, name: "X".into(), value: String::new() };
        assert_eq!(with_leading_space(delete.clone(), false), delete, "a deletion stays one");
    }

    #[test]
    fn milters_apply_to_their_listener_modes() {
        use crate::config::ListenMode;
        let config: crate::config::Config = toml::from_str(
            "[[milter]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\napplies_to = [\"submission\"]\n\
             [[milter]]\nname = \"b\"\naddress = \"unix:/x\"\n",
        )
        .unwrap();
        let names = |mode| Milters::new(&config.milter, mode, Info::default()).map(|m| m.slots.len());
        assert_eq!(names(ListenMode::Submission), Some(2));
        assert_eq!(names(ListenMode::Smtp), Some(1));
        assert!(Milters::new(&[], ListenMode::Smtp, Info::default()).is_none());
    }
}
