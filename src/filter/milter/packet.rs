//! Milter packets: a 4-byte big-endian length, then a command byte and its data
//! (the length counts the command byte). Strings are NUL-terminated; numbers are
//! 32-bit big-endian (the port is 16-bit).

/// The largest packet accepted from a milter: the 1 MB of SMFIP_MDS_1M and room for
/// a header. A longer length is taken for garbage.
pub const MAX_PACKET: usize = (1 << 20) + 4096;
/// The most body bytes sent in one SMFIC_BODY (libmilter's MILTER_CHUNK_SIZE).
pub const BODY_CHUNK: usize = 65535;

/// What Tern sends (SMFIC_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `O`: version, the actions and protocol steps Tern offers.
    OptNeg { version: u32, actions: u32, protocol: u32 },
    /// `D`: macros for the stage whose command byte is `stage`.
    Macro { stage: u8, pairs: &'a [(&'a str, String)] },
    /// `C`: the client's name, address family (`4`, `6`, `U`), port and address.
    Connect { hostname: &'a str, family: u8, port: u16, address: &'a str },
    /// `H`
    Helo(&'a str),
    /// `M`: `<sender>` then its ESMTP parameters.
    Mail(&'a [String]),
    /// `R`: `<recipient>` then its ESMTP parameters.
    Rcpt(&'a [String]),
    /// `T`
    Data,
    /// `L`: one header field; the value without the space after the colon.
    Header { name: &'a str, value: &'a str },
    /// `N`
    EndOfHeaders,
    /// `B`: at most [`BODY_CHUNK`] bytes.
    Body(&'a [u8]),
    /// `E`
    EndOfBody,
    /// `A`: the transaction ends without its message.
    Abort,
    /// `Q`
    Quit,
}

impl Command<'_> {
    /// Appends the packet to `out`. NUL bytes within strings become spaces.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Command::OptNeg { version, actions, protocol } => {
                out.push(b'O');
                for n in [version, actions, protocol] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
            }
            Command::Macro { stage, pairs } => {
                out.push(b'D');
                out.push(*stage);
                for (name, value) in pairs.iter() {
                    string(out, name);
                    string(out, value);
                }
            }
            Command::Connect { hostname, family, port, address } => {
                out.push(b'C');
                string(out, hostname);
                out.push(*family);
                if *family != b'U' {
                    out.extend_from_slice(&port.to_be_bytes());
                } else {
                    out.extend_from_slice(&[0, 0]);
                }
                string(out, address);
            }
            Command::Helo(name) => {
                out.push(b'H');
                string(out, name);
            }
            Command::Mail(args) | Command::Rcpt(args) => {
                out.push(if matches!(self, Command::Mail(_)) { b'M' } else { b'R' });
                for arg in args.iter() {
                    string(out, arg);
                }
            }
            Command::Data => out.push(b'T'),
            Command::Header { name, value } => {
                out.push(b'L');
                string(out, name);
                string(out, value);
            }
            Command::EndOfHeaders => out.push(b'N'),
            Command::Body(bytes) => {
                debug_assert!(bytes.len() <= BODY_CHUNK);
                out.push(b'B');
                out.extend_from_slice(bytes);
            }
            Command::EndOfBody => out.push(b'E'),
            Command::Abort => out.push(b'A'),
            Command::Quit => out.push(b'Q'),
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().map(|b| if b == 0 { b' ' } else { b }));
    out.push(0);
}

/// What a milter sends (SMFIR_*, and its SMFIC_OPTNEG answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `O`: the milter's version, the actions it may take and the protocol steps it
    /// wants left out; then the macros it asks for, by stage (ignored: Tern sends
    /// its own set).
    OptNeg { version: u32, actions: u32, protocol: u32 },
    /// `a`: no more calls for this message (or connection, at connect and HELO).
    Accept,
    /// `c`
    Continue,
    /// `d`: accept, and deliver nothing.
    Discard,
    /// `r`: 5xx.
    Reject,
    /// `t`: 4xx.
    Tempfail,
    /// `y`: reject or tempfail with this reply (`550 5.7.1 text`).
    ReplyCode(String),
    /// `k`: send no more of the body (SMFIP_SKIP).
    Skip,
    /// `p`: still working.
    Progress,
    /// `f`: the milter lost its connection.
    ConnFail,
    /// `q`: put the message on hold with this reason.
    Quarantine(String),
    /// `+`
    AddRcpt(String),
    /// `2`: recipient and its ESMTP parameters.
    AddRcptPar(String, String),
    /// `-`
    DelRcpt(String),
    /// `e`: new sender and its ESMTP parameters.
    ChgFrom(String, String),
    /// `b`: a piece of the new body.
    ReplBody(Vec<u8>),
    /// `h`
    AddHeader { name: String, value: String },
    /// `i`: at position `index` (0 is the top).
    InsHeader { index: u32, name: String, value: String },
    /// `m`: the `index`th (from 1) field of that name; an empty value deletes it.
    ChgHeader { index: u32, name: String, value: String },
}

/// Why bytes from a milter are not a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A length of zero or over [`MAX_PACKET`].
    Length(u32),
    /// A command byte Tern does not know.
    Unknown(u8),
    /// A known command whose data is wrong.
    Malformed(u8, &'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Length(n) => write!(f, "packet length {n} out of bounds"),
            DecodeError::Unknown(c) => write!(f, "unknown reply {:?}", char::from(*c)),
            DecodeError::Malformed(c, why) => write!(f, "malformed reply {:?}: {why}", char::from(*c)),
        }
    }
}

/// The packet at the start of `buf` and the bytes it took, or `None` while it is
/// incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Response, usize)>, DecodeError> {
    let Some(len) = buf.get(..4) else { return Ok(None) };
    let len = u32::from_be_bytes(len.try_into().expect("four bytes"));
    if len == 0 || len as usize > MAX_PACKET {
        return Err(DecodeError::Length(len));
    }
    let Some(packet) = buf.get(4..4 + len as usize) else { return Ok(None) };
    let (cmd, data) = (packet[0], &packet[1..]);
    Ok(Some((parse(cmd, data)?, 4 + len as usize)))
}

fn parse(cmd: u8, data: &[u8]) -> Result<Response, DecodeError> {
    let bad = |why| DecodeError::Malformed(cmd, why);
    let empty = |r: Response| if data.is_empty() { Ok(r) } else { Err(bad("unexpected data")) };
    match cmd {
        b'O' => {
            if data.len() < 12 {
                return Err(bad("shorter than 12 bytes"));
            }
            let n = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().expect("four bytes"));
            Ok(Response::OptNeg { version: n(0), actions: n(4), protocol: n(8) })
        }
        b'a' => empty(Response::Accept),
        b'c' => empty(Response::Continue),
        b'd' => empty(Response::Discard),
        b'r' => empty(Response::Reject),
        b't' => empty(Response::Tempfail),
        b'k' => empty(Response::Skip),
        b'p' => empty(Response::Progress),
        b'f' => empty(Response::ConnFail),
        b'y' => Ok(Response::ReplyCode(strings::<1>(data).ok_or(bad("not one string"))?[0].clone())),
        b'q' => Ok(Response::Quarantine(strings::<1>(data).ok_or(bad("not one string"))?[0].clone())),
        b'+' => Ok(Response::AddRcpt(strings::<1>(data).ok_or(bad("not one string"))?[0].clone())),
        b'-' => Ok(Response::DelRcpt(strings::<1>(data).ok_or(bad("not one string"))?[0].clone())),
        b'2' | b'e' => {
            // The parameters may be left out.
            let [addr, params] = match strings::<2>(data) {
                Some(two) => two,
                None => [strings::<1>(data).ok_or(bad("not one or two strings"))?[0].clone(), String::new()],
            };
            Ok(if cmd == b'2' { Response::AddRcptPar(addr, params) } else { Response::ChgFrom(addr, params) })
        }
        b'b' => Ok(Response::ReplBody(data.to_vec())),
        b'h' => {
            let [name, value] = strings::<2>(data).ok_or(bad("not two strings"))?;
            Ok(Response::AddHeader { name, value })
        }
        b'i' | b'm' => {
            if data.len() < 4 {
                return Err(bad("no index"));
            }
            let index = u32::from_be_bytes(data[..4].try_into().expect("four bytes"));
            let [name, value] = strings::<2>(&data[4..]).ok_or(bad("not two strings"))?;
            Ok(if cmd == b'i' {
                Response::InsHeader { index, name, value }
            } else {
                Response::ChgHeader { index, name, value }
            })
        }
        other => Err(DecodeError::Unknown(other)),
    }
}

/// Exactly `N` NUL-terminated strings filling `data` (text that is not UTF-8 is
/// taken lossily: header values may be 8-bit).
fn strings<const N: usize>(data: &[u8]) -> Option<[String; N]> {
    let body = data.strip_suffix(&[0])?;
    let parts: Vec<String> = body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
        let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(cmd);
        out.extend_from_slice(data);
        out
    }

    fn one(cmd: u8, data: &[u8]) -> Result<Response, DecodeError> {
        let bytes = packet(cmd, data);
        let (r, used) = decode(&bytes)?.expect("complete");
        assert_eq!(used, bytes.len());
        Ok(r)
    }

    #[test]
    fn commands_encode_as_libmilter_reads_them() {
        let mut out = Vec::new();
        Command::OptNeg { version: 6, actions: 0x1ff, protocol: 0x1fffff }.encode(&mut out);
        assert_eq!(out, [0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]);
        let macros = [("j", "mx.test".to_string()), ("{daemon_name}", "tern".to_string())];
        let (mail, rcpt) = (["<a@b>".to_string(), "SIZE=10".to_string()], ["<c@d>".to_string()]);
        let cases: Vec<(Command, &[u8])> = vec![
            (Command::Macro { stage: b'C', pairs: &macros }, b"DCj\0mx.test\0{daemon_name}\0tern\0"),
            (
                Command::Connect { hostname: "[1.2.3.4]", family: b'4', port: 25, address: "1.2.3.4" },
                b"C[1.2.3.4]\x004\x00\x191.2.3.4\0",
            ),
            (Command::Helo("client.test"), b"Hclient.test\0"),
            (Command::Mail(&mail), b"M<a@b>\0SIZE=10\0"),
            (Command::Rcpt(&rcpt), b"R<c@d>\0"),
            (Command::Data, b"T"),
            (Command::Header { name: "Subject", value: "hi\0there" }, b"LSubject\0hi there\0"),
            (Command::EndOfHeaders, b"N"),
            (Command::Body(b"line\r\n"), b"Bline\r\n"),
            (Command::EndOfBody, b"E"),
            (Command::Abort, b"A"),
            (Command::Quit, b"Q"),
        ];
        for (command, want) in cases {
            let mut out = Vec::new();
            command.encode(&mut out);
            assert_eq!(&out[4..], want, "{command:?}");
            assert_eq!(u32::from_be_bytes(out[..4].try_into().unwrap()) as usize, want.len());
        }
    }

    #[test]
    fn every_reply_decodes() {
        let optneg = [&6u32.to_be_bytes()[..], &0x3fu32.to_be_bytes(), &0x10u32.to_be_bytes()].concat();
        assert_eq!(one(b'O', &optneg), Ok(Response::OptNeg { version: 6, actions: 0x3f, protocol: 0x10 }));
        let with_macros = [&optneg[..], &1u32.to_be_bytes(), b"{auth_authen}\0"].concat();
        assert!(matches!(one(b'O', &with_macros), Ok(Response::OptNeg { version: 6, .. })));
        for (cmd, r) in [
            (b'a', Response::Accept),
            (b'c', Response::Continue),
            (b'd', Response::Discard),
            (b'r', Response::Reject),
            (b't', Response::Tempfail),
            (b'k', Response::Skip),
            (b'p', Response::Progress),
            (b'f', Response::ConnFail),
        ] {
            assert_eq!(one(cmd, b""), Ok(r));
            assert_eq!(one(cmd, b"x"), Err(DecodeError::Malformed(cmd, "unexpected data")));
        }
        assert_eq!(one(b'y', b"554 5.7.9 custom\0"), Ok(Response::ReplyCode("554 5.7.9 custom".into())));
        assert_eq!(one(b'q', b"spam\0"), Ok(Response::Quarantine("spam".into())));
        assert_eq!(one(b'+', b"<x@y>\0"), Ok(Response::AddRcpt("<x@y>".into())));
        assert_eq!(one(b'-', b"<x@y>\0"), Ok(Response::DelRcpt("<x@y>".into())));
        assert_eq!(
            one(b'2', b"<x@y>\0NOTIFY=NEVER\0"),
            Ok(Response::AddRcptPar("<x@y>".into(), "NOTIFY=NEVER".into()))
        );
        assert_eq!(one(b'e', b"<x@y>\0"), Ok(Response::ChgFrom("<x@y>".into(), String::new())));
        assert_eq!(one(b'b', b"new body\r\n"), Ok(Response::ReplBody(b"new body\r\n".to_vec())));
        assert_eq!(one(b'h', b"X-A\0v\0"), Ok(Response::AddHeader { name: "X-A".into(), value: "v".into() }));
        let index = 2u32.to_be_bytes();
        assert_eq!(
            one(b'i', &[&index[..], b"X-B\0w\0"].concat()),
            Ok(Response::InsHeader { index: 2, name: "X-B".into(), value: "w".into() })
        );
        assert_eq!(
            one(b'm', &[&index[..], b"Subject\0\0"].concat()),
            Ok(Response::ChgHeader { index: 2, name: "Subject".into(), value: String::new() })
        );
    }

    #[test]
    fn bad_packets_are_refused() {
        assert_eq!(one(b'Z', b""), Err(DecodeError::Unknown(b'Z')));
        assert_eq!(one(b'O', b"short"), Err(DecodeError::Malformed(b'O', "shorter than 12 bytes")));
        assert!(one(b'y', b"no terminator").is_err());
        assert!(one(b'h', b"only-name\0").is_err());
        assert!(one(b'h', b"a\0b\0c\0").is_err());
        assert!(one(b'm', b"\0\0").is_err());
        assert_eq!(decode(&[0, 0, 0, 0, b'c']), Err(DecodeError::Length(0)));
        assert_eq!(decode(&[0x7f, 0, 0, 0]), Err(DecodeError::Length(0x7f00_0000)));
        assert_eq!(decode(&((MAX_PACKET + 1) as u32).to_be_bytes()), Err(DecodeError::Length(MAX_PACKET as u32 + 1)));
    }

    proptest::proptest! {
        /// Any bytes: no panic; a packet takes exactly its declared length, and
        /// whatever its cut, a stream of packets decodes the same.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(Some((_, used))) = decode(&data) {
                let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                proptest::prop_assert_eq!(used, 4 + len);
            }
        }

        #[test]
        fn valid_packets_decode_whole(cmd in proptest::sample::select(b"acdrtkpfyq+-2ebhim".to_vec()),
                                      text in "[a-z]{0,5}", index in 0u32..5) {
            let data = match cmd {
                b'a' | b'c' | b'd' | b'r' | b't' | b'k' | b'p' | b'f' => Vec::new(),
                b'b' => text.clone().into_bytes(),
                b'h' => format!("{text}\0{text}\0").into_bytes(),
                b'i' | b'm' => [&index.to_be_bytes()[..], format!("{text}\0v\0").as_bytes()].concat(),
                b'y' => format!("550 5.7.1 {text}\0").into_bytes(),
                _ => format!("<{text}>\0").into_bytes(),
            };
            let bytes = packet(cmd, &data);
            proptest::prop_assert!(one(cmd, &data).is_ok());
            for cut in 0..bytes.len() {
                proptest::prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
            }
        }
    }

    #[test]
    fn truncated_packets_wait_for_more() {
        let whole = packet(b'h', b"X-A\0v\0");
        for cut in 0..whole.len() {
            assert_eq!(decode(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        let two = [whole.clone(), packet(b'c', b"")].concat();
        let (_, used) = decode(&two).unwrap().unwrap();
        assert_eq!(decode(&two[used..]), Ok(Some((Response::Continue, 5))));
    }
}
