//! One connection to one milter over TCP or a unix socket: every connect, read and
//! write bounded by the milter's `timeout`.

use super::packet::{self, Command, Response};
use super::protocol::{self, Edit, Negotiated, Reaction, Step, Verdict};
use crate::config::MilterAddress;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, timeout, timeout_at};

/// SMFIR_PROGRESS may stretch the wait for one answer to this many timeouts, no more.
pub const PROGRESS_LIMIT: u32 = 10;

/// Why a milter could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Connect(String),
    /// No answer (or no room to write) within the timeout, at this step.
    Timeout(&'static str),
    /// The connection broke.
    Io(String),
    /// It said something that is not the protocol.
    Protocol(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "cannot connect: {e}"),
            Error::Timeout(step) => write!(f, "timed out at {step}"),
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// An open, negotiated milter connection.
pub struct Connection {
    stream: Stream,
    /// Bytes read and not yet decoded.
    buf: Vec<u8>,
    limit: Duration,
    pub agreed: Negotiated,
    /// Whether the SMFIC_QUIT was sent.
    quit: bool,
}

impl Connection {
    /// Connects and negotiates (SMFIC_OPTNEG).
    pub async fn open(target: &MilterAddress, limit: Duration) -> Result<Connection, Error> {
        let stream = match target {
            MilterAddress::Unix(path) => timeout(limit, UnixStream::connect(path)).await.map(|r| r.map(Stream::Unix)),
            MilterAddress::Inet(hop) => timeout(limit, TcpStream::connect(hop.as_str())).await.map(|r| {
                r.map(|tcp| {
                    let _ = tcp.set_nodelay(true);
                    Stream::Tcp(tcp)
                })
            }),
        };
        let stream = match stream {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(Error::Connect(e.to_string())),
            Err(_) => return Err(Error::Timeout("connect")),
        };
        let unknown = Negotiated { actions: 0, protocol: 0 };
        let mut conn = Connection { stream, buf: Vec::new(), limit, agreed: unknown, quit: false };
        let mut offer = Vec::new();
        let (actions, protocol) = (protocol::OFFERED_ACTIONS, protocol::OFFERED_PROTOCOL);
        Command::OptNeg { version: protocol::VERSION, actions, protocol }.encode(&mut offer);
        conn.send(&offer, "negotiation").await?;
        let answer = conn.receive("negotiation", Instant::now() + limit).await?;
        conn.agreed = Negotiated::from_answer(&answer).map_err(Error::Protocol)?;
        Ok(conn)
    }

    /// Whether header values go with their leading space (SMFIP_HDR_LEADSPC).
    pub fn leading_space(&self) -> bool {
        self.agreed.protocol & protocol::HEADER_LEADING_SPACE != 0
    }

    pub async fn send(&mut self, bytes: &[u8], step: &'static str) -> Result<(), Error> {
        let write = async {
            match &mut self.stream {
                Stream::Tcp(s) => s.write_all(bytes).await,
                Stream::Unix(s) => s.write_all(bytes).await,
            }
        };
        match timeout(self.limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Io(e.to_string())),
            Err(_) => Err(Error::Timeout(step)),
        }
    }

    /// The next packet, read within `self.limit` and before `deadline`.
    async fn receive(&mut self, step: &'static str, deadline: Instant) -> Result<Response, Error> {
        loop {
            if let Some((response, used)) = packet::decode(&self.buf).map_err(|e| Error::Protocol(e.to_string()))? {
                self.buf.drain(..used);
                return Ok(response);
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = async {
                match &mut self.stream {
                    Stream::Tcp(s) => s.read(&mut chunk).await,
                    Stream::Unix(s) => s.read(&mut chunk).await,
                }
            };
            let until = deadline.min(Instant::now() + self.limit);
            match timeout_at(until, read).await {
                Ok(Ok(0)) => return Err(Error::Io(format!("closed the connection at {step}"))),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(Error::Io(e.to_string())),
                Err(_) => return Err(Error::Timeout(step)),
            }
        }
    }

    /// Sends `bytes` (the step's packets) and, if the milter answers this step, waits
    /// for its verdict, passing each edit to `edit` (which may refuse it).
    pub async fn ask(
        &mut self,
        step: Step,
        bytes: &[u8],
        edit: &mut (dyn FnMut(Edit) -> Result<(), String> + Send),
    ) -> Result<Verdict, Error> {
        self.send(bytes, step.name()).await?;
        if !self.agreed.answers(step) {
            return Ok(Verdict::Continue);
        }
        let deadline = Instant::now() + self.limit * PROGRESS_LIMIT;
        loop {
            let answer = self.receive(step.name(), deadline).await?;
            match protocol::react(&self.agreed, step, answer).map_err(Error::Protocol)? {
                Reaction::Wait => continue,
                Reaction::Edit(e) => edit(e).map_err(Error::Protocol)?,
                Reaction::Done(verdict) => return Ok(verdict),
            }
        }
    }

    /// Ends the conversation (SMFIC_QUIT), without waiting long.
    pub async fn quit(mut self) {
        let mut out = Vec::new();
        Command::Quit.encode(&mut out);
        self.quit = self.send(&out, "quit").await.is_ok();
    }
}

impl Drop for Connection {
    /// A connection dropped without [`Connection::quit`] says SMFIC_QUIT if its socket
    /// takes the five bytes at once; else it just closes.
    fn drop(&mut self) {
        if self.quit {
            return;
        }
        let mut out = Vec::new();
        Command::Quit.encode(&mut out);
        let _ = match &self.stream {
            Stream::Tcp(s) => s.try_write(&out),
            Stream::Unix(s) => s.try_write(&out),
        };
    }
}
