//! The milter conversation without I/O: what is negotiated (SMFIC_OPTNEG), which
//! steps are sent and answered, and what each answer means at each step.

use super::packet::Response;
use crate::metrics::Refusal;
use crate::smtp::Reply;
use crate::smtp::reply::Status;

/// The protocol version Tern speaks (Sendmail 8.14, libmilter's current one).
pub const VERSION: u32 = 6;

// Actions (SMFIF_*) a milter may take.
pub const ADD_HEADERS: u32 = 0x01;
pub const CHANGE_BODY: u32 = 0x02;
pub const ADD_RCPT: u32 = 0x04;
pub const DELETE_RCPT: u32 = 0x08;
pub const CHANGE_HEADERS: u32 = 0x10;
pub const QUARANTINE: u32 = 0x20;
pub const CHANGE_FROM: u32 = 0x40;
pub const ADD_RCPT_PARAMS: u32 = 0x80;

// Protocol steps (SMFIP_*) a milter may leave out, or not answer (NR).
pub const NO_CONNECT: u32 = 0x01;
pub const NO_HELO: u32 = 0x02;
pub const NO_MAIL: u32 = 0x04;
pub const NO_RCPT: u32 = 0x08;
pub const NO_BODY: u32 = 0x10;
pub const NO_HEADERS: u32 = 0x20;
pub const NO_EOH: u32 = 0x40;
pub const NR_HEADER: u32 = 0x80;
pub const NO_UNKNOWN: u32 = 0x100;
pub const NO_DATA: u32 = 0x200;
pub const SKIP: u32 = 0x400;
pub const NR_CONNECT: u32 = 0x1000;
pub const NR_HELO: u32 = 0x2000;
pub const NR_MAIL: u32 = 0x4000;
pub const NR_RCPT: u32 = 0x8000;
pub const NR_DATA: u32 = 0x1_0000;
pub const NR_UNKNOWN: u32 = 0x2_0000;
pub const NR_EOH: u32 = 0x4_0000;
pub const NR_BODY: u32 = 0x8_0000;
/// Header values are sent with the whitespace after the colon.
pub const HEADER_LEADING_SPACE: u32 = 0x10_0000;

/// Everything Tern can do for a milter.
pub const OFFERED_ACTIONS: u32 =
    ADD_HEADERS | CHANGE_BODY | ADD_RCPT | DELETE_RCPT | CHANGE_HEADERS | QUARANTINE | CHANGE_FROM | ADD_RCPT_PARAMS;
/// Every step Tern can leave out or not wait for. Tern never sends SMFIC_UNKNOWN,
/// nor rejected recipients (SMFIP_RCPT_REJ), nor body chunks over 64 KiB.
pub const OFFERED_PROTOCOL: u32 = NO_CONNECT
    | NO_HELO
    | NO_MAIL
    | NO_RCPT
    | NO_BODY
    | NO_HEADERS
    | NO_EOH
    | NR_HEADER
    | NO_UNKNOWN
    | NO_DATA
    | SKIP
    | NR_CONNECT
    | NR_HELO
    | NR_MAIL
    | NR_RCPT
    | NR_DATA
    | NR_UNKNOWN
    | NR_EOH
    | NR_BODY
    | HEADER_LEADING_SPACE;

/// One step of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    EndOfHeaders,
    Body,
    EndOfMessage,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Helo => "helo",
            Step::Mail => "mail",
            Step::Rcpt => "rcpt",
            Step::Data => "data",
            Step::Header => "header",
            Step::EndOfHeaders => "eoh",
            Step::Body => "body",
            Step::EndOfMessage => "eom",
        }
    }

    /// The (SMFIP_NO*, SMFIP_NR_*) flags of the step.
    fn flags(self) -> (u32, u32) {
        match self {
            Step::Connect => (NO_CONNECT, NR_CONNECT),
            Step::Helo => (NO_HELO, NR_HELO),
            Step::Mail => (NO_MAIL, NR_MAIL),
            Step::Rcpt => (NO_RCPT, NR_RCPT),
            Step::Data => (NO_DATA, NR_DATA),
            Step::Header => (NO_HEADERS, NR_HEADER),
            Step::EndOfHeaders => (NO_EOH, NR_EOH),
            Step::Body => (NO_BODY, NR_BODY),
            Step::EndOfMessage => (0, 0),
        }
    }

    /// The command byte that SMFIC_MACRO names for the step.
    pub fn command(self) -> u8 {
        match self {
            Step::Connect => b'C',
            Step::Helo => b'H',
            Step::Mail => b'M',
            Step::Rcpt => b'R',
            Step::Data => b'T',
            Step::Header => b'L',
            Step::EndOfHeaders => b'N',
            Step::Body => b'B',
            Step::EndOfMessage => b'E',
        }
    }
}

/// What was agreed with one milter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub actions: u32,
    pub protocol: u32,
}

impl Negotiated {
    /// The agreement from the milter's answer to Tern's offer. A milter of version 2
    /// or later is accepted (older ones know no SMFIC_OPTNEG); one that asks for a
    /// step Tern did not offer is refused, as libmilter refuses the converse.
    pub fn from_answer(answer: &Response) -> Result<Negotiated, String> {
        let Response::OptNeg { version, actions, protocol } = *answer else {
            return Err(format!("answered the negotiation with {answer:?}"));
        };
        if !(2..=VERSION).contains(&version) {
            return Err(format!("speaks milter version {version}"));
        }
        if protocol & !OFFERED_PROTOCOL != 0 {
            return Err(format!(
                "asked for protocol steps {:#x} that Tern does not offer",
                protocol & !OFFERED_PROTOCOL
            ));
        }
        Ok(Negotiated { actions: actions & OFFERED_ACTIONS, protocol })
    }

    /// Whether the milter wants to be told of `step`.
    pub fn sends(&self, step: Step) -> bool {
        self.protocol & step.flags().0 == 0
    }

    /// Whether the milter answers `step` (Tern waits for the answer).
    pub fn answers(&self, step: Step) -> bool {
        self.protocol & step.flags().1 == 0
    }

    pub fn may(&self, action: u32) -> bool {
        self.actions & action == action
    }
}

/// A milter's final word on a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Accept without calling this milter again for the message (or the connection,
    /// at connect and HELO).
    Accept,
    Reject(Reply),
    Tempfail(Reply),
    /// Accept and deliver nothing.
    Discard,
    /// Send no more of the body.
    Skip,
}

/// A change to the message, asked for at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    AddHeader {
        name: String,
        value: String,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// A piece of the new body (the pieces are concatenated).
    ReplaceBody(Vec<u8>),
    AddRcpt {
        address: String,
        params: String,
    },
    DeleteRcpt(String),
    ChangeFrom {
        address: String,
        params: String,
    },
    Quarantine(String),
}

/// What an answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaction {
    /// SMFIR_PROGRESS: keep waiting.
    Wait,
    Edit(Edit),
    Done(Verdict),
}

/// The default refusals (RFC 3463 §3.8: 5.7.1 and 4.7.1, "delivery not authorized").
pub fn reject() -> Reply {
    Reply::new(550, (5, 7, 1), "Command rejected").because(Refusal::Milter)
}

pub fn tempfail() -> Reply {
    Reply::new(451, (4, 7, 1), "Service unavailable - try again later").because(Refusal::Milter)
}

/// The meaning of `answer` at `step`, or why it is a protocol error.
pub fn react(agreed: &Negotiated, step: Step, answer: Response) -> Result<Reaction, String> {
    let at_end = step == Step::EndOfMessage;
    let message_level = !matches!(step, Step::Connect | Step::Helo);
    let edit = |action: u32, edit: Edit| {
        if !at_end {
            Err(format!("sent an edit at {}", step.name()))
        } else if !agreed.may(action) {
            Err(format!("sent an edit it did not negotiate: {edit:?}"))
        } else {
            Ok(Reaction::Edit(edit))
        }
    };
    let done = |v| Ok(Reaction::Done(v));
    match answer {
        Response::Continue => done(Verdict::Continue),
        Response::Accept => done(Verdict::Accept),
        Response::Reject => done(Verdict::Reject(reject())),
        Response::Tempfail => done(Verdict::Tempfail(tempfail())),
        Response::ReplyCode(text) => match parse_reply(&text) {
            Some(reply) if reply.code >= 500 => done(Verdict::Reject(reply)),
            Some(reply) => done(Verdict::Tempfail(reply)),
            None => Err(format!("sent a bad reply code {text:?}")),
        },
        Response::Discard if message_level => done(Verdict::Discard),
        Response::Skip if step == Step::Body && agreed.protocol & SKIP != 0 => done(Verdict::Skip),
        Response::Progress => Ok(Reaction::Wait),
        Response::Quarantine(reason) => edit(QUARANTINE, Edit::Quarantine(reason)),
        Response::AddHeader { name, value } => edit(ADD_HEADERS, Edit::AddHeader { name, value }),
        Response::InsHeader { index, name, value } => edit(ADD_HEADERS, Edit::InsertHeader { index, name, value }),
        Response::ChgHeader { index, name, value } => edit(CHANGE_HEADERS, Edit::ChangeHeader { index, name, value }),
        Response::ReplBody(bytes) => edit(CHANGE_BODY, Edit::ReplaceBody(bytes)),
        Response::AddRcpt(address) => edit(ADD_RCPT, Edit::AddRcpt { address, params: String::new() }),
        Response::AddRcptPar(address, params) => edit(ADD_RCPT_PARAMS, Edit::AddRcpt { address, params }),
        Response::DelRcpt(address) => edit(DELETE_RCPT, Edit::DeleteRcpt(address)),
        Response::ChgFrom(address, params) => edit(CHANGE_FROM, Edit::ChangeFrom { address, params }),
        other => Err(format!("answered {} with {other:?}", step.name())),
    }
}

/// A milter's SMFIR_REPLYCODE text: `4xx` or `5xx`, an optional enhanced status of
/// the same class (RFC 3463), text; lines separated by CRLF, as smfi_setmlreply sends.
pub fn parse_reply(text: &str) -> Option<Reply> {
    let mut code = None;
    let mut status = None;
    let mut lines = Vec::new();
    for line in text.split("\r\n") {
        let digits = line.get(..3)?;
        let this: u16 = digits.parse().ok().filter(|c| (400..600).contains(c))?;
        if *code.get_or_insert(this) != this {
            return None;
        }
        let rest = match line.as_bytes().get(3) {
            None => "",
            Some(b' ' | b'-') => &line[4..],
            Some(_) => return None,
        };
        let (first, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let rest = match parse_status(first) {
            Some(s) if u16::from(s.0) == this / 100 => {
                status.get_or_insert(s);
                text
            }
            _ => rest,
        };
        if rest.chars().any(char::is_control) {
            return None;
        }
        lines.push(rest.to_string());
    }
    Some(Reply::with_lines(code?, status, lines).because(Refusal::Milter))
}

fn parse_status(s: &str) -> Option<Status> {
    let mut parts = s.split('.');
    let class: u8 = parts.next()?.parse().ok().filter(|c| *c == 4 || *c == 5)?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(Status(class, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(protocol: u32, actions: u32) -> Negotiated {
        Negotiated::from_answer(&Response::OptNeg { version: 6, actions, protocol }).unwrap()
    }

    #[test]
    fn negotiation_keeps_what_both_sides_know() {
        let a = agreed(NO_CONNECT | NR_RCPT | SKIP, 0xffff_ffff);
        assert_eq!(a.actions, OFFERED_ACTIONS, "actions Tern cannot do are dropped");
        assert!(!a.sends(Step::Connect) && a.sends(Step::Helo) && a.sends(Step::EndOfMessage));
        assert!(!a.answers(Step::Rcpt) && a.answers(Step::Mail));
        let refused =
            |protocol, version| Negotiated::from_answer(&Response::OptNeg { version, actions: 0, protocol }).is_err();
        assert!(refused(0x800, 6), "SMFIP_RCPT_REJ is not offered");
        assert!(refused(0, 7) && refused(0, 1));
        assert!(Negotiated::from_answer(&Response::Continue).is_err());
    }

    #[test]
    fn answers_mean_what_libmilter_says() {
        let all = agreed(SKIP, OFFERED_ACTIONS);
        let none = agreed(0, 0);
        assert_eq!(react(&all, Step::Mail, Response::Accept), Ok(Reaction::Done(Verdict::Accept)));
        assert_eq!(react(&all, Step::Rcpt, Response::Reject), Ok(Reaction::Done(Verdict::Reject(reject()))));
        assert_eq!(react(&all, Step::Helo, Response::Tempfail), Ok(Reaction::Done(Verdict::Tempfail(tempfail()))));
        assert_eq!(react(&all, Step::Body, Response::Skip), Ok(Reaction::Done(Verdict::Skip)));
        assert!(react(&none, Step::Body, Response::Skip).is_err(), "SKIP not negotiated");
        assert!(react(&all, Step::Connect, Response::Discard).is_err());
        assert_eq!(react(&all, Step::Rcpt, Response::Discard), Ok(Reaction::Done(Verdict::Discard)));
        assert_eq!(react(&all, Step::Header, Response::Progress), Ok(Reaction::Wait));
        let add = Response::AddHeader { name: "X".into(), value: "y".into() };
        assert!(matches!(react(&all, Step::EndOfMessage, add.clone()), Ok(Reaction::Edit(Edit::AddHeader { .. }))));
        assert!(react(&all, Step::Rcpt, add.clone()).is_err(), "edits only at the end");
        assert!(react(&none, Step::EndOfMessage, add).is_err(), "edits only as negotiated");
        assert!(react(&all, Step::Mail, Response::ConnFail).is_err());
        let custom = react(&all, Step::Rcpt, Response::ReplyCode("554 5.7.9 custom".into()));
        assert_eq!(custom, Ok(Reaction::Done(Verdict::Reject(Reply::new(554, (5, 7, 9), "custom")))));
        let temp = react(&all, Step::Mail, Response::ReplyCode("421 4.3.2 later".into()));
        assert_eq!(temp, Ok(Reaction::Done(Verdict::Tempfail(Reply::new(421, (4, 3, 2), "later")))));
    }

    #[test]
    fn reply_codes() {
        assert_eq!(parse_reply("550 rejected"), Some(Reply::plain(550, vec!["rejected".into()])));
        assert_eq!(
            parse_reply("550-5.7.1 one\r\n550 5.7.1 two"),
            Some(Reply::with_lines(550, Some(Status(5, 7, 1)), vec!["one".into(), "two".into()]))
        );
        // A status of another class is text.
        assert_eq!(parse_reply("550 4.7.1 x").unwrap().lines, ["4.7.1 x"]);
        for bad in ["250 ok", "abc", "55", "550x", "550 a\r\n551 b", "550 a\rb", ""] {
            assert_eq!(parse_reply(bad), None, "{bad:?}");
        }
    }
}
