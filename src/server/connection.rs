//! One client connection: feeds bytes to the SMTP session, answers its questions and
//! writes its replies; upgrades to TLS on STARTTLS (or at once for implicit TLS).

use super::local_submit::LocalUser;
use super::spill::Spill;
use super::{Context, checks};
use crate::config::ListenMode;
use crate::filter::milter;
use crate::metrics::{ConnectionResult, ListenerMetrics, Refusal};
use crate::net::Stream;
use crate::policy::auth::SpfCheck;
use crate::policy::dnsbl;
use crate::smtp::Reply;
use crate::smtp::reply::common;
use crate::smtp::session::{Check, Event, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

const READ_BUFFER: usize = 16 * 1024;
/// The data rate is judged only after a message has been arriving this long.
const DATA_RATE_GRACE: Duration = Duration::from_secs(30);
/// The TLS handshake of a client refused on an implicit TLS listener must be done
/// within this: a refused client gets little time, however it was refused.
const REFUSAL_TLS_TIMEOUT: Duration = Duration::from_secs(5);

/// When the command line being received began. A line must be complete within
/// `command_timeout` of its first byte however slowly its bytes arrive (RFC 5321
/// §4.5.3.2.7 times the wait for a command as a whole), or a client sending a byte
/// now and then would hold the connection until the session limit.
#[derive(Default)]
struct LineTimer {
    started: Option<Instant>,
}

impl LineTimer {
    /// Notes bytes read at `at`: they begin a line unless they continue one. Bytes
    /// after a line end begin the next line now.
    fn received(&mut self, bytes: &[u8], at: Instant) {
        if self.started.is_none() || memchr::memchr(b'\n', bytes).is_some() {
            self.started = Some(at);
        }
    }

    /// Forgets the start once the session holds no incomplete command line.
    fn settle(&mut self, partial: bool) {
        if !partial {
            self.started = None;
        }
    }

    /// When the incomplete line, if any, runs out of time.
    fn deadline(&self, limit: Duration) -> Option<Instant> {
        self.started.map(|start| start + limit)
    }
}

/// Why a connection ended, for the log.
pub(super) enum End {
    Closed,
    ClientGone,
    Timeout,
    Shutdown,
    Error(String),
}

pub async fn handle(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    mode: ListenMode,
    stop: watch::Receiver<bool>,
    counters: Arc<ListenerMetrics>,
) {
    let limits = &ctx.config.limits;
    let ip = peer.ip();
    let trusted = ctx.trusted(ip);
    let per_ip = (!trusted).then_some(limits.max_connections_per_ip);
    let Some(_slot) = ctx.connections.open(ip, limits.max_connections, per_ip) else {
        counters.connection(ConnectionResult::RefusedLimit);
        tracing::info!(client = %peer, "refused: too many connections");
        let _ = refuse(
            &ctx,
            tcp,
            mode,
            Reply::new(421, (4, 7, 0), "Too many connections, try again later").because(Refusal::ConnectionLimit),
        )
        .await;
        return;
    };
    if ctx.auth_failures.is_banned(ip).await {
        counters.connection(ConnectionResult::RefusedBanned);
        tracing::info!(client = %peer, "refused: too many failed authentications");
        let reply =
            Reply::new(421, (4, 7, 0), "Too many failed authentications, try again later").because(Refusal::Banned);
        let _ = refuse(&ctx, tcp, mode, reply).await;
        return;
    }
    tracing::info!(client = %peer, %mode, "connect");
    // DNS lists are asked about strangers on port 25 while the greeting is held back.
    let lists = async {
        if mode != ListenMode::Smtp || trusted {
            return dnsbl::Verdict::Clean;
        }
        let antispam = &ctx.config.antispam;
        dnsbl::check(&ctx.dns, ip, &antispam.dnswl, &antispam.dnsbl).await
    };
    // With implicit TLS the client speaks first (its ClientHello).
    let early = async { mode != ListenMode::Submissions && pregreet(&tcp, limits.greeting_delay).await };
    let (talked_first, listed) = tokio::join!(early, lists);
    let end = match (talked_first, listed) {
        (true, _) => {
            counters.connection(ConnectionResult::RefusedEarlyTalker);
            tracing::info!(client = %peer, "client sent data before the greeting");
            let _ = refuse(&ctx, tcp, mode, common::pipelining_violation()).await;
            End::Closed
        }
        (false, dnsbl::Verdict::Blocked { zone, .. }) => {
            counters.connection(ConnectionResult::RefusedDnsbl);
            let text = format!("Service unavailable; client [{}] blocked using {zone}", ip);
            let _ = refuse(&ctx, tcp, mode, Reply::new(554, (5, 7, 1), text).because(Refusal::Dnsbl)).await;
            End::Closed
        }
        (false, listed) => {
            counters.connection(ConnectionResult::Accepted);
            counters.active.inc();
            let _ = tcp.set_nodelay(true);
            let own = tcp.local_addr().ok();
            let mut stream: Box<dyn Stream> = Box::new(tcp);
            let allowlisted = matches!(listed, dnsbl::Verdict::Allowed { .. });
            let client = Client { peer, own, mode, allowlisted, local: None, counters: &counters };
            let end = converse(&ctx, &mut stream, client, stop).await;
            let _ = stream.shutdown().await;
            counters.active.dec();
            end
        }
    };
    log_end(&peer, end);
}

/// Logs how a connection ended.
pub(super) fn log_end(client: &dyn std::fmt::Display, end: End) {
    match end {
        End::Closed => tracing::info!(%client, "disconnect"),
        End::ClientGone => tracing::info!(%client, "disconnect: client closed the connection"),
        End::Timeout => tracing::info!(%client, "disconnect: timeout"),
        End::Shutdown => tracing::info!(%client, "disconnect: server shutting down"),
        End::Error(e) => tracing::info!(%client, error = %e, "disconnect: connection error"),
    }
}

/// Answers with one reply and hangs up. On an implicit TLS listener nothing is said
/// in plaintext (RFC 8314 §3.3: TLS begins at once): the handshake comes first,
/// within [`REFUSAL_TLS_TIMEOUT`], and a client that does not complete it is
/// dropped without a word.
async fn refuse(ctx: &Context, tcp: TcpStream, mode: ListenMode, reply: Reply) -> std::io::Result<()> {
    count_refusal(&reply);
    let mut out = Vec::new();
    reply.encode(&mut out);
    let mut stream: Box<dyn Stream> = Box::new(tcp);
    if mode == ListenMode::Submissions {
        let Some(tls) = ctx.tls.as_ref() else { return Ok(()) };
        match timeout(REFUSAL_TLS_TIMEOUT, tls.accept(stream)).await {
            Ok(Ok((encrypted, _))) => stream = encrypted,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    timeout(Duration::from_secs(10), async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await?
}

/// True when the client talks before the greeting (RFC 5321 §3.1), waiting up to
/// `delay` for it to give itself away.
async fn pregreet(tcp: &TcpStream, delay: Duration) -> bool {
    let mut byte = [0u8; 1];
    if delay.is_zero() {
        return matches!(tcp.try_read(&mut byte), Ok(n) if n > 0);
    }
    matches!(timeout(delay, tcp.peek(&mut byte)).await, Ok(Ok(n)) if n > 0)
}

async fn send(stream: &mut Box<dyn Stream>, out: &mut Vec<u8>, limit: Duration) -> Result<(), End> {
    if out.is_empty() {
        return Ok(());
    }
    let result = timeout(limit, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await;
    out.clear();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Error(e.to_string())),
        Err(_) => Err(End::Timeout),
    }
}

async fn say(stream: &mut Box<dyn Stream>, reply: Reply, limit: Duration) -> Result<(), End> {
    let mut out = Vec::new();
    reply.encode(&mut out);
    send(stream, &mut out, limit).await
}

/// Upgrades the connection to TLS; returns the description for the session.
async fn start_tls(ctx: &Context, stream: &mut Box<dyn Stream>) -> Result<String, End> {
    let tls = ctx.tls.as_ref().ok_or_else(|| End::Error("TLS is not configured".into()))?;
    let plain = std::mem::replace(stream, crate::net::closed());
    match timeout(ctx.config.limits.command_timeout, tls.accept(plain)).await {
        Ok(Ok((encrypted, description))) => {
            *stream = encrypted;
            Ok(description)
        }
        Ok(Err(e)) => Err(End::Error(format!("TLS handshake failed: {e}"))),
        Err(_) => Err(End::Timeout),
    }
}

/// What is known of a client when the conversation starts.
pub(super) struct Client<'a> {
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub own: Option<SocketAddr>,
    pub mode: ListenMode,
    /// On a DNS allow list.
    pub allowlisted: bool,
    /// A local user on the submission socket, who needs neither TLS nor AUTH.
    pub local: Option<&'a LocalUser>,
    /// The series of the listener it came through.
    pub counters: &'a ListenerMetrics,
}

/// Speaks SMTP with one client until the connection ends.
pub(super) async fn converse(
    ctx: &Arc<Context>,
    stream: &mut Box<dyn Stream>,
    client: Client<'_>,
    mut stop: watch::Receiver<bool>,
) -> End {
    let Client { peer, own, mode, allowlisted, local, counters } = client;
    let limits = &ctx.config.limits;
    let deadline = Instant::now() + limits.session_timeout;
    let mut config = ctx.session_config(mode, peer.ip());
    if local.is_some() {
        (config.starttls, config.auth, config.auth_without_tls) = (false, false, false);
    }
    let mut session = Session::new(config);
    if let Some(local) = local {
        session.set_user(local.login.clone());
    }
    let info = milter::Info {
        hostname: ctx.config.hostname.clone(),
        daemon: mode.to_string(),
        client: Some(peer),
        local: own,
        ..Default::default()
    };
    let mut milters = milter::Milters::new(&ctx.config.milter, mode, info);
    if mode == ListenMode::Submissions {
        match start_tls(ctx, stream).await {
            Ok(description) => {
                if let Some(m) = milters.as_mut() {
                    m.info.tls = Some(description.clone());
                }
                session.tls_started(description)
            }
            Err(end) => return end,
        }
    }
    if let Err(end) = say(stream, session.greeting(), limits.command_timeout).await {
        return end;
    }
    let mut buf = vec![0u8; READ_BUFFER];
    let mut out = Vec::new();
    // (start, bytes) of the message content being received, for the minimum data rate.
    let mut transfer: Option<(Instant, u64)> = None;
    // The SPF check of the open transaction, for mail that is checked.
    let mut spf: Option<tokio::task::JoinHandle<SpfCheck>> = None;
    let mut line = LineTimer::default();
    // The content of the message being received.
    let mut spill: Option<Spill> = None;
    // Held while the content arrives (see `Store::incoming`).
    let mut incoming = None;
    loop {
        while let Some(event) = session.poll() {
            match event {
                Event::Reply(reply) => {
                    if reply.code >= 400 {
                        tracing::info!(client = %peer, reply = %reply, "refused");
                        count_refusal(&reply);
                    }
                    reply.encode(&mut out);
                }
                Event::ContentStart => {
                    let sign = checks::SignPlan::new(ctx, peer.ip(), session.user());
                    // Mail whose SPF is checked has its DKIM and ARC body hashes made as
                    // it arrives.
                    let checked = spf.is_some();
                    spill = Some(Spill::new(&ctx.spill_files, limits.max_header_size, &ctx.budget, sign, checked));
                    incoming = ctx.store.incoming();
                }
                Event::Content(piece) => {
                    if let Some(spill) = spill.as_mut() {
                        spill.push(&piece);
                    }
                }
                Event::Close => {
                    return send(stream, &mut out, limits.command_timeout).await.err().unwrap_or(End::Closed);
                }
                Event::StartTls => {
                    if let Err(end) = send(stream, &mut out, limits.command_timeout).await {
                        return end;
                    }
                    match start_tls(ctx, stream).await {
                        Ok(description) => {
                            if let Some(m) = milters.as_mut() {
                                m.info.tls = Some(description.clone());
                            }
                            session.tls_started(description)
                        }
                        Err(end) => return end,
                    }
                }
                Event::Check(Check::Mail { from, params, user }) => {
                    tracing::debug!(client = %peer, from = ?from.as_ref().map(|m| m.to_string()), size = ?params.size, "MAIL");
                    let mut verdict = checks::sender(ctx, from.as_ref(), user.as_deref(), peer.ip(), local).await;
                    if let Some(m) = milters.as_mut().filter(|_| verdict.is_ok()) {
                        m.info.helo = session.hello_name().unwrap_or_default().to_string();
                        m.info.user = user.clone().or_else(|| local.map(|l| l.login.clone()));
                        m.info.auth_type = session.auth_mechanism();
                        verdict = m.mail(from.as_ref(), mail_args(&params)).await;
                    }
                    if let Some(earlier) = spf.take() {
                        earlier.abort();
                    }
                    // RFC 7208 §2.4: SPF starts at MAIL and runs while the recipients and
                    // the message arrive; its verdict is needed at the end of the message.
                    if verdict.is_ok() && ctx.checks_mail_from(mode, peer.ip(), user.as_deref()).is_some() {
                        let (ctx, helo) = (ctx.clone(), session.hello_name().unwrap_or_default().to_string());
                        spf = Some(tokio::spawn(async move {
                            let checker = ctx.auth.as_ref().expect("checks are on");
                            checker.spf(peer.ip(), &helo, from.as_ref()).await
                        }));
                    }
                    session.answer_mail(verdict);
                }
                Event::Check(Check::Rcpt { to }) => {
                    let user = session.user().map(str::to_string);
                    // Greylisting is for strangers on port 25, not for clients on an allow list.
                    let greylist = mode == ListenMode::Smtp && !allowlisted;
                    let mut verdict =
                        checks::recipient(ctx, &to, peer.ip(), user.as_deref(), greylist, session.sender(), local)
                            .await;
                    if let (Some(m), Ok(routes)) = (milters.as_mut(), &verdict) {
                        let local = routes.iter().all(|r| r.local);
                        if let Err(reply) = m.rcpt(&to, local).await {
                            verdict = Err(reply);
                        }
                    }
                    session.answer_rcpt(verdict);
                }
                Event::Check(Check::Auth { user, password }) => {
                    session.answer_auth(checks::authenticate(ctx, user, password, peer.ip()).await);
                }
                Event::Check(Check::Message(message)) => {
                    let content_end = Instant::now();
                    drop(incoming.take());
                    let spf = match spf.take() {
                        None => None,
                        Some(task) => match task.await {
                            Ok(check) => Some(check),
                            Err(e) => {
                                tracing::error!(client = %peer, error = %e, "SPF check failed to run");
                                session.answer_message(Err(Reply::new(451, (4, 3, 0), "Local error, try again later")));
                                continue;
                            }
                        },
                    };
                    let outcome = match spill.take().map(Spill::finish) {
                        Some(Ok(received)) if received.len() == message.size => {
                            let source = checks::Source { peer: peer.ip(), local, mode };
                            checks::message(ctx, *message, received, source, spf, milters.as_mut()).await
                        }
                        Some(Err(reply)) => Err(reply),
                        _ => {
                            tracing::error!(client = %peer, "message content went missing");
                            Err(Reply::new(451, (4, 3, 0), "Local error, try again later"))
                        }
                    };
                    if outcome.is_ok() {
                        counters.received.inc();
                        crate::metrics::get().receive_latency.observe(content_end.elapsed().as_secs_f64());
                    }
                    session.answer_message(outcome);
                }
            }
        }
        if !session.holds_content() {
            // Refused, reset or finished: what was received goes at once.
            spill = None;
        }
        // RFC 2920 §3.2: replies are flushed once the pipelined input is used up.
        if let Err(end) = send(stream, &mut out, limits.command_timeout).await {
            return end;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ =
                say(stream, Reply::new(421, (4, 4, 2), "Session time limit exceeded, closing"), limits.command_timeout)
                    .await;
            return End::Timeout;
        }
        if !session.in_message() {
            transfer = None;
        } else if let Some((start, bytes)) = transfer {
            let elapsed = start.elapsed();
            if elapsed > DATA_RATE_GRACE && bytes < limits.min_data_rate * elapsed.as_secs() {
                let _ =
                    say(stream, Reply::new(421, (4, 4, 2), "Data rate too low, closing"), limits.command_timeout).await;
                return End::Timeout;
            }
        }
        line.settle(session.partial_line());
        let mut wait = limits.command_timeout.min(left);
        if let Some(line_deadline) = line.deadline(limits.command_timeout) {
            let line_left = line_deadline.saturating_duration_since(Instant::now());
            if line_left.is_zero() {
                let _ = say(stream, timeout_reply(), limits.command_timeout).await;
                return End::Timeout;
            }
            wait = wait.min(line_left);
        }
        tokio::select! {
            read = timeout(wait, stream.read(&mut buf)) => match read {
                Ok(Ok(0)) => return End::ClientGone,
                Ok(Ok(n)) => {
                    if session.in_message() {
                        let t = transfer.get_or_insert((Instant::now(), 0));
                        t.1 += n as u64;
                    }
                    // Content bytes too: the end of a message may share a read with
                    // the start of the next command.
                    line.received(&buf[..n], Instant::now());
                    session.receive(&buf[..n]);
                }
                Ok(Err(e)) => return End::Error(e.to_string()),
                Err(_) => {
                    let _ = say(stream, timeout_reply(), limits.command_timeout).await;
                    return End::Timeout;
                }
            },
            // Between transactions a shutdown closes at once; a message being received
            // is finished first (within the grace period).
            _ = stop.changed(), if !session.in_message() => {
                let _ = say(stream, Reply::new(421, (4, 3, 2), "Service shutting down, try again later"), limits.command_timeout).await;
                return End::Shutdown;
            }
        }
    }
}

/// The ESMTP parameters of MAIL as milters are told of them.
fn mail_args(params: &crate::smtp::params::MailParams) -> Vec<String> {
    use crate::smtp::params::Body;
    let mut args = Vec::new();
    if let Some(size) = params.size {
        args.push(format!("SIZE={size}"));
    }
    if params.body == Body::EightBitMime {
        args.push("BODY=8BITMIME".into());
    }
    if params.smtputf8 {
        args.push("SMTPUTF8".into());
    }
    if let Some(envid) = &params.envid {
        args.push(format!("ENVID={envid}"));
    }
    args
}

/// Counts a 4xx or 5xx reply in `tern_messages_refused_total` (and the console's
/// counters) under its reason.
pub(super) fn count_refusal(reply: &Reply) {
    if let Some(reason) = reply.refusal() {
        crate::metrics::get().refused(reason);
    }
}

/// The reply to a client that took too long over a command.
fn timeout_reply() -> Reply {
    Reply::new(421, (4, 4, 2), "Timeout, closing connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_timer_starts_at_the_first_byte_of_each_line() {
        let limit = Duration::from_secs(2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut line = LineTimer::default();
        assert_eq!(line.deadline(limit), None);
        line.received(b"EH", at(0));
        line.settle(true);
        line.received(b"L", at(500));
        line.settle(true);
        assert_eq!(line.deadline(limit), Some(at(2000)), "trickling does not move the deadline");
        // The line ends and the next one begins in the same read.
        line.received(b"O x\r\nMA", at(900));
        line.settle(true);
        assert_eq!(line.deadline(limit), Some(at(2900)));
        line.received(b"IL FROM:<>\r\n", at(1000));
        line.settle(false);
        assert_eq!(line.deadline(limit), None);
    }
}
