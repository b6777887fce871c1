//! One mail transaction on an open connection: EHLO, MAIL, RCPT…, DATA or BDAT; or,
//! for LMTP (RFC 2033), LHLO and one reply per accepted recipient after the content.

use super::client::{Client, ConnError, RemoteReply, Stuffer};
use super::fold::{Count, Folder};
use super::tls::TlsLevel;
use super::{Job, Outcome, RemoteConfig, TlsPolicy};
use crate::delivery::{Delivered, Detail, Failure, ServerReply};
use crate::reports::tls::ResultType;
use crate::spool::{Content, PIECE};
use crate::tls_policy::dane::{DaneCheck, DaneFailure};
use std::io;
use std::net::IpAddr;

/// What the server offered in its EHLO reply.
#[derive(Debug, Default)]
struct Capabilities {
    pipelining: bool,
    size: Option<u64>,
    eight_bit: bool,
    smtputf8: bool,
    chunking: bool,
    dsn: bool,
    starttls: bool,
    /// RFC 8689 §3.
    requiretls: bool,
    auth: Vec<String>,
}

fn capabilities(ehlo: &RemoteReply) -> Capabilities {
    let mut caps = Capabilities::default();
    for line in ehlo.lines.iter().skip(1) {
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or("").to_ascii_uppercase();
        match keyword.as_str() {
            "PIPELINING" => caps.pipelining = true,
            "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
            "8BITMIME" => caps.eight_bit = true,
            "SMTPUTF8" => caps.smtputf8 = true,
            "CHUNKING" => caps.chunking = true,
            "DSN" => caps.dsn = true,
            "STARTTLS" => caps.starttls = true,
            "REQUIRETLS" => caps.requiretls = true,
            "AUTH" => caps.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
            _ => {}
        }
    }
    caps
}

/// A failure carrying the remote server's own words.
fn remote_failure(host: &str, ip: IpAddr, reply: &RemoteReply) -> Failure {
    let detail = Detail::from_server(server_reply(host, ip, reply), "");
    Failure { temporary: reply.is_temporary(), detail }
}

fn server_reply(host: &str, ip: IpAddr, reply: &RemoteReply) -> ServerReply {
    ServerReply { host: host.to_string(), ip, code: reply.code, text: reply.lines.join(" / ") }
}

fn everyone(job: &Job<'_>, result: Result<Delivered, Failure>) -> Outcome {
    job.recipients.iter().map(|(i, _)| (*i, result.clone())).collect()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The connection a transaction runs on.
pub struct Session<'a> {
    /// `host [ip]`, for messages.
    pub peer: &'a str,
    /// The name the certificate must match.
    pub host: &'a str,
    pub ip: IpAddr,
    pub policy: TlsPolicy,
    /// TLS already in place (implicit TLS), and its version and cipher.
    pub level: TlsLevel,
    pub cipher: Option<String>,
    /// Speak LMTP (RFC 2033) rather than SMTP.
    pub lmtp: bool,
    /// The host's DANE records, with policy `Dane` or `Encrypt`: where their failures
    /// are noted.
    pub dane: Option<&'a DaneCheck>,
    /// Where a TLS failure that stops the connection is noted, for TLS-RPT.
    pub probe: Option<&'a TlsProbe>,
}

/// What opening a connection learned for TLS reports (RFC 8460): the local address,
/// and the TLS failure that stopped it, if one did.
#[derive(Debug, Default)]
pub struct TlsProbe {
    pub failure: std::sync::Mutex<Option<ResultType>>,
    pub local_ip: std::sync::Mutex<Option<IpAddr>>,
}

impl TlsProbe {
    fn fail(probe: Option<&TlsProbe>, result: ResultType) {
        if let Some(p) = probe {
            *p.failure.lock().unwrap() = Some(result);
        }
    }
}

async fn hello(config: &RemoteConfig, client: &mut Client, lmtp: bool) -> Result<Capabilities, ConnError> {
    // RFC 2033 §4.1: LHLO replaces HELO and EHLO; there is nothing to fall back to.
    if lmtp {
        let lhlo = client.command(&format!("LHLO {}", config.hostname)).await?;
        if !lhlo.is_positive() {
            return Err(ConnError(format!("LHLO refused: {}", lhlo.text())));
        }
        return Ok(capabilities(&lhlo));
    }
    let ehlo = client.command(&format!("EHLO {}", config.hostname)).await?;
    if ehlo.is_positive() {
        return Ok(capabilities(&ehlo));
    }
    let helo = client.command(&format!("HELO {}", config.hostname)).await?;
    if !helo.is_positive() {
        return Err(ConnError(format!("HELO refused: {}", helo.text())));
    }
    Ok(Capabilities::default())
}

/// An open, greeted connection ready for mail transactions.
pub struct Connection {
    pub client: Client,
    caps: Capabilities,
    level: TlsLevel,
    /// Why the certificate did not verify, when encrypted but not verified.
    tls_problem: Option<ResultType>,
    /// Verified TLS to a server the policy named: REQUIRETLS mail may go.
    authenticated: bool,
    /// Version and cipher, like `TLSv1.3/TLS13_AES_256_GCM_SHA384`, once encrypted.
    cipher: Option<String>,
    /// `host [ip]`, for messages.
    peer: String,
    host: String,
    ip: IpAddr,
    /// Tern's own address on it (TLS-RPT's `sending-mta-ip`).
    local_ip: Option<IpAddr>,
    /// An LMTP connection: one reply per recipient after the content.
    lmtp: bool,
    /// Between transactions, with nothing unanswered: only then may the connection
    /// carry another message.
    ready: bool,
}

impl Connection {
    /// How well the connection is protected.
    pub fn tls_level(&self) -> TlsLevel {
        self.level
    }

    /// True when the last transaction ended cleanly (a final reply to the end of
    /// the content, or a successful RSET), so the connection may be reused.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Why the certificate did not verify (RFC 8460 §4.3.2), when it did not.
    pub fn tls_problem(&self) -> Option<ResultType> {
        self.tls_problem
    }

    /// Tern's own address on the connection, when known.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.local_ip
    }

    /// The TLS version and cipher, or `none`.
    pub fn tls(&self) -> &str {
        self.cipher.as_deref().unwrap_or("none")
    }
}

/// EHLO, STARTTLS when wanted, AUTH at a smarthost; for LMTP, LHLO alone.
pub async fn open(config: &RemoteConfig, mut client: Client, session: Session<'_>) -> Result<Connection, ConnError> {
    let lmtp = session.lmtp;
    let mut caps = hello(config, &mut client, lmtp).await?;
    let (mut level, mut cipher, mut tls_problem) = (session.level, session.cipher, None);
    let probe = session.probe;
    // An LMTP server is local: no TLS or AUTH.
    let policy = session.policy;
    // The TLSA records are checked in the handshake only when they are to be matched.
    let verify = session.dane.filter(|_| policy == TlsPolicy::Dane);
    let no_starttls = |why: String| {
        TlsProbe::fail(probe, ResultType::StarttlsNotSupported);
        if let Some(check) = session.dane {
            check.fail(DaneFailure::StarttlsNotSupported);
            return ConnError(format!("DANE: {why}; TLS is mandatory for this host (RFC 7672 §2.2)"));
        }
        ConnError(why)
    };
    if !lmtp && level == TlsLevel::None && caps.starttls && policy != TlsPolicy::Off {
        let reply = client.command("STARTTLS").await?;
        if reply.code == 220 {
            let (l, c, p) = client.start_tls(&config.tls, session.host, verify).await.inspect_err(|_| {
                // RFC 8460 §4.3.2: a handshake that fails is a validation failure.
                TlsProbe::fail(probe, ResultType::ValidationFailure);
            })?;
            (level, cipher, tls_problem) = (l, Some(c), p);
            // RFC 3207 §4.2: everything learned before TLS is forgotten.
            caps = hello(config, &mut client, false).await?;
        } else if policy.is_mandatory() {
            return Err(no_starttls(format!("STARTTLS refused: {}", reply.text())));
        }
    }
    if !lmtp && policy.is_mandatory() && level == TlsLevel::None {
        let _ = client.command("QUIT").await;
        return Err(no_starttls("STARTTLS not offered".to_string()));
    }
    let wanted = match policy {
        TlsPolicy::Required | TlsPolicy::MtaSts => TlsLevel::Verified,
        TlsPolicy::Dane => TlsLevel::Dane,
        _ => TlsLevel::None,
    };
    if !lmtp && wanted != TlsLevel::None && level != wanted {
        TlsProbe::fail(probe, tls_problem.unwrap_or(ResultType::ValidationFailure));
        let _ = client.command("QUIT").await;
        let what = if wanted == TlsLevel::Dane { "matching the TLSA records" } else { "verified" };
        return Err(ConnError(format!("TLS with a {what} certificate is required, got: {level}")));
    }
    if let Some((user, password)) = config.auth.as_ref().filter(|_| !lmtp) {
        authenticate(&mut client, &caps, user, password).await?;
    }
    Ok(Connection {
        client,
        caps,
        level,
        tls_problem,
        authenticated: !lmtp && session.policy.is_authenticated() && level.is_authenticated(),
        cipher,
        peer: session.peer.to_string(),
        host: session.host.to_string(),
        ip: session.ip,
        local_ip: probe.and_then(|p| *p.local_ip.lock().unwrap()),
        lmtp,
        ready: true,
    })
}

/// One mail transaction. The connection is left between transactions (never QUIT);
/// [`Connection::is_ready`] then tells whether it can carry the next message.
pub async fn send(config: &RemoteConfig, conn: &mut Connection, job: &Job<'_>) -> Result<Outcome, ConnError> {
    let (client, caps, level, peer) = (&mut conn.client, &conn.caps, conn.level, conn.peer.as_str());
    let (host, ip, lmtp) = (conn.host.as_str(), conn.ip, conn.lmtp);
    // The LMTP server puts the message in a mailbox: Tern keeps the duty of reporting
    // on it, and passes on no DSN request (RFC 3461 §4 parameters).
    let dsn = caps.dsn && !lmtp;
    // RFC 6531 §3.4: a message that needs SMTPUTF8 cannot go to a server without it.
    // An LMTP server stores the content as it is: there the message needs SMTPUTF8
    // only when an address of its envelope is not ASCII (Dovecot does not offer it).
    let ascii_envelope = || job.sender.is_ascii() && job.recipients.iter().all(|(_, r)| r.address.is_ascii());
    let smtputf8 = job.smtputf8 && (caps.smtputf8 || !lmtp || !ascii_envelope());
    if smtputf8 && !caps.smtputf8 {
        let f = Failure::permanent((5, 6, 7), format!("{peer} does not support SMTPUTF8, needed by this message"));
        return Ok(everyone(job, Err(f)));
    }
    // RFC 5321 §4.5.3.1.6: no line the next hop receives is longer than 998 octets.
    // The size once folded is needed before the content goes (SIZE, BDAT): a first
    // pass over the content counts it.
    let (size, fold) = match folded_size(job.content).await {
        Ok(counted) => counted,
        Err(e) => return Ok(everyone(job, Err(unreadable(&e)))),
    };
    if caps.size.is_some_and(|max| size > max) {
        let f = Failure::permanent(
            (5, 3, 4),
            format!("message too big for {peer} (limit {} bytes)", caps.size.unwrap_or(0)),
        );
        return Ok(everyone(job, Err(f)));
    }

    // RFC 8689 §4.2.1: a REQUIRETLS message goes only over authenticated TLS, to a
    // server that offers REQUIRETLS. An LMTP server delivers locally: no condition.
    if job.requiretls && !lmtp {
        let missing = if !conn.authenticated {
            Some(format!("TLS to {peer} is not authenticated (TLS: {level})"))
        } else if !caps.requiretls {
            Some(format!("{peer} does not offer REQUIRETLS"))
        } else {
            None
        };
        if let Some(missing) = missing {
            return Ok(everyone(job, Err(crate::tls_policy::requiretls::refused(missing))));
        }
    }
    let mut mail = format!("MAIL FROM:<{}>", job.sender);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={size}"));
    }
    if job.eight_bit && caps.eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if job.requiretls && !lmtp {
        mail.push_str(" REQUIRETLS");
    }
    if dsn {
        if let Some(ret) = job.ret {
            mail.push_str(&format!(" RET={ret}"));
        }
        if let Some(envid) = job.envid {
            mail.push_str(&format!(" ENVID={envid}"));
        }
    }
    let mut commands = vec![mail];
    for (_, r) in &job.recipients {
        let mut rcpt = format!("RCPT TO:<{}>", r.address);
        if dsn {
            if let Some(notify) = &r.notify {
                rcpt.push_str(&format!(" NOTIFY={notify}"));
            }
            if let Some(orcpt) = &r.orcpt {
                rcpt.push_str(&format!(" ORCPT={orcpt}"));
            }
        }
        commands.push(rcpt);
    }
    let use_bdat = caps.chunking;
    // RFC 2920 §3.1: with PIPELINING, MAIL, every RCPT and DATA go in one write.
    if !use_bdat {
        commands.push("DATA".into());
    }
    conn.ready = false;
    let replies = if caps.pipelining {
        let batch: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
        client.write(batch.as_bytes()).await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in &commands {
            replies.push(client.read_reply().await?);
        }
        replies
    } else {
        let mut replies: Vec<RemoteReply> = Vec::with_capacity(commands.len());
        for (n, c) in commands.iter().enumerate() {
            let is_data = !use_bdat && n == commands.len() - 1;
            // RFC 5321 §3.3: no DATA when no recipient was accepted.
            if is_data && !replies[1..].iter().any(RemoteReply::is_positive) {
                break;
            }
            let reply = client.command(c).await?;
            let stop = !reply.is_positive() && n == 0;
            replies.push(reply);
            if stop {
                break;
            }
        }
        replies
    };
    // The reply to DATA, when DATA was sent.
    let data_reply = (!use_bdat && replies.len() == commands.len()).then(|| &replies[replies.len() - 1]);

    let mail_reply = &replies[0];
    if !mail_reply.is_positive() {
        conn.ready = settle(client, data_reply).await;
        return Ok(everyone(job, Err(remote_failure(host, ip, mail_reply))));
    }
    let mut outcome = Vec::new();
    let mut accepted = Vec::new();
    for ((i, _), reply) in job.recipients.iter().zip(&replies[1..]) {
        if reply.is_positive() {
            accepted.push(*i);
        } else {
            outcome.push((*i, Err(remote_failure(host, ip, reply))));
        }
    }
    if accepted.is_empty() {
        conn.ready = settle(client, data_reply).await;
        return Ok(outcome);
    }
    let prefix = if use_bdat {
        format!("BDAT {size} LAST\r\n").into_bytes()
    } else {
        match data_reply {
            Some(reply) if reply.code == 354 => {}
            Some(refused) => {
                outcome.extend(accepted.iter().map(|i| (*i, Err(remote_failure(host, ip, refused)))));
                conn.ready = settle(client, data_reply).await;
                return Ok(outcome);
            }
            // DATA goes out whenever a recipient is accepted.
            None => return Err(ConnError("DATA was not sent".into())),
        }
        Vec::new()
    };
    match send_content(client, job.content, prefix, fold, !use_bdat).await {
        Ok(()) => {}
        // Part of the content is out: the connection can only be closed (by dropping
        // it, not ready), so that the server drops the incomplete message.
        Err(Sending::Read(e)) => {
            outcome.extend(accepted.iter().map(|i| (*i, Err(unreadable(&e)))));
            return Ok(outcome);
        }
        Err(Sending::Conn(e)) => return Err(e),
    }
    if lmtp {
        let ready = per_recipient(client, config, &mut outcome, &accepted, (host, ip)).await;
        conn.ready = ready;
        return Ok(outcome);
    }
    let final_reply = client.read_reply_within(config.data_timeout).await?;
    // A final reply to the content ends the transaction, whatever it says.
    conn.ready = true;
    let result = if final_reply.is_positive() {
        let detail = Detail::from_server(server_reply(host, ip, &final_reply), format!("(TLS: {level})"));
        Ok(Delivered { detail, relayed: true, dsn_passed_on: caps.dsn })
    } else {
        Err(remote_failure(host, ip, &final_reply))
    };
    outcome.extend(accepted.iter().map(|i| (*i, result.clone())));
    Ok(outcome)
}

/// RFC 2033 §4.2: after the content, one reply for each recipient whose RCPT was
/// accepted, in the order of the RCPTs. A recipient whose reply never comes (the
/// connection closes or times out, or the reply is garbage) is deferred: the server
/// may or may not have delivered it, and a duplicate beats a loss. True when every
/// reply came, so the connection may carry another transaction.
async fn per_recipient(
    client: &mut Client,
    config: &RemoteConfig,
    outcome: &mut Outcome,
    accepted: &[usize],
    (host, ip): (&str, IpAddr),
) -> bool {
    for (n, i) in accepted.iter().enumerate() {
        let reply = match client.read_reply_within(config.data_timeout).await {
            Ok(reply) => reply,
            Err(e) => {
                let f = Failure::temporary(
                    (4, 4, 2),
                    format!("{host}: no reply for this recipient ({n} of {} came): {}", accepted.len(), e.0),
                );
                outcome.extend(accepted[n..].iter().map(|i| (*i, Err(f.clone()))));
                return false;
            }
        };
        let result = if reply.is_positive() {
            let detail = Detail::from_server(server_reply(host, ip, &reply), "");
            Ok(Delivered { detail, relayed: false, dsn_passed_on: false })
        } else {
            Err(remote_failure(host, ip, &reply))
        };
        outcome.push((*i, result));
    }
    true
}

/// A message whose content cannot be read from the store: tried again later.
fn unreadable(e: &io::Error) -> Failure {
    Failure::temporary((4, 3, 0), format!("cannot read the message from the spool: {e}"))
}

/// The content's size once long lines are folded, and whether any are.
async fn folded_size(content: &Content) -> io::Result<(u64, bool)> {
    let (mut folder, mut count) = (Folder::default(), Count::default());
    let mut pieces = content.pieces();
    while let Some(piece) = pieces.next().await? {
        folder.push(piece, &mut count);
    }
    folder.finish(&mut count);
    Ok((count.0, folder.folded()))
}

/// What stopped the content on its way.
enum Sending {
    Read(io::Error),
    Conn(ConnError),
}

/// Sends `prefix` (a BDAT command, or nothing) and the content, read a piece at a
/// time: folded when `fold`, and dot-stuffed and terminated when `stuff` (DATA). A
/// small message goes in one write with its prefix and terminator, as it did whole.
async fn send_content(
    client: &mut Client,
    content: &Content,
    prefix: Vec<u8>,
    fold: bool,
    stuff: bool,
) -> Result<(), Sending> {
    let mut folder = fold.then(Folder::default);
    let mut stuffer = stuff.then(Stuffer::default);
    let (mut folded, mut wire) = (Vec::new(), prefix);
    wire.reserve(content.len().min(PIECE as u64) as usize + PIECE / 32 + 8);
    let (mut pieces, mut read) = (content.pieces(), 0);
    loop {
        let piece = pieces.next().await.map_err(Sending::Read)?;
        read += piece.map_or(0, |p| p.len() as u64);
        let done = read >= content.len();
        folded.clear();
        let mut text = piece.unwrap_or_default();
        if let Some(folder) = &mut folder {
            folder.push(text, &mut folded);
            if done {
                folder.finish(&mut folded);
            }
            text = &folded;
        }
        match &mut stuffer {
            Some(stuffer) => {
                stuffer.push(text, &mut wire);
                if done {
                    stuffer.finish(&mut wire);
                }
            }
            None => wire.extend_from_slice(text),
        }
        if !wire.is_empty() {
            client.write(&wire).await.map_err(Sending::Conn)?;
            wire.clear();
        }
        if done {
            return Ok(());
        }
    }
}

/// Ends a transaction that sent no content; true when the connection is ready for
/// another one. Failures here only cost the connection: the recipients' results are
/// already known.
async fn settle(client: &mut Client, data_reply: Option<&RemoteReply>) -> bool {
    if data_reply.is_some_and(|r| r.code == 354) {
        // RFC 2920 §3.1: a pipelined DATA was accepted although no recipient was;
        // a lone dot ends the empty content. A server that breaks RFC 5321 §3.3 like
        // this is not trusted with another transaction: the connection is closed.
        if client.write(b".\r\n").await.is_ok() && client.read_reply().await.is_ok() {
            let _ = client.command("QUIT").await;
        }
        return false;
    }
    client.command("RSET").await.is_ok_and(|r| r.code == 250)
}

/// AUTH PLAIN, or LOGIN, at a smarthost (RFC 4954).
async fn authenticate(client: &mut Client, caps: &Capabilities, user: &str, password: &str) -> Result<(), ConnError> {
    let refused = |r: &RemoteReply| ConnError(format!("authentication failed: {}", r.text()));
    if caps.auth.iter().any(|m| m == "PLAIN") || !caps.auth.iter().any(|m| m == "LOGIN") {
        let token = base64(format!("\0{user}\0{password}").as_bytes());
        let reply = client.command(&format!("AUTH PLAIN {token}")).await?;
        return if reply.code == 235 { Ok(()) } else { Err(refused(&reply)) };
    }
    let reply = client.command("AUTH LOGIN").await?;
    if reply.code != 334 {
        return Err(refused(&reply));
    }
    let reply = client.command(&base64(user.as_bytes())).await?;
    if reply.code != 334 {
        return Err(refused(&reply));
    }
    let reply = client.command(&base64(password.as_bytes())).await?;
    if reply.code == 235 { Ok(()) } else { Err(refused(&reply)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, lines: &[&str]) -> RemoteReply {
        RemoteReply { code, lines: lines.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn parses_capabilities() {
        let caps = capabilities(&reply(
            250,
            &["mx hello", "PIPELINING", "SIZE 1000", "8BITMIME", "AUTH PLAIN login", "CHUNKING"],
        ));
        assert!(caps.pipelining && caps.eight_bit && caps.chunking && !caps.smtputf8);
        assert_eq!(caps.size, Some(1000));
        assert_eq!(caps.auth, ["PLAIN", "LOGIN"]);
    }

    #[test]
    fn status_codes() {
        let status = |r: RemoteReply| remote_failure("mx", [127, 0, 0, 2].into(), &r).detail.status.to_string();
        assert_eq!(status(reply(550, &["5.1.1 no such user"])), "5.1.1");
        assert_eq!(status(reply(550, &["no such user"])), "5.0.0");
        assert_eq!(status(reply(451, &["5.1.1 confused"])), "4.0.0");
    }
}
