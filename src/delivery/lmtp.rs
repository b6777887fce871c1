//! Delivery to an LMTP server (RFC 2033), such as Dovecot's: the remote SMTP
//! client's transaction over TCP or a unix socket, greeted with LHLO, with one reply
//! per recipient after the content. Connections are pooled like remote ones.

use super::Via;
use super::remote::transaction::Session;
use super::remote::{Broken, Job, Outcome, RemoteConfig, Stream, TlsLevel, TlsPolicy, greet, pooled};
use crate::delivery::Failure;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

/// Where an LMTP server listens: `[local] lmtp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `unix:/path`.
    Unix(String),
    /// `host:port`.
    Tcp(String),
}

impl Target {
    pub fn parse(text: &str) -> Target {
        match text.strip_prefix("unix:") {
            Some(path) => Target::Unix(path.to_string()),
            None => Target::Tcp(text.to_string()),
        }
    }

    /// The name in logs and reports: the socket path, or `host:port`.
    fn name(&self) -> &str {
        match self {
            Target::Unix(path) | Target::Tcp(path) => path,
        }
    }
}

/// Delivers `job` (local recipients, `mailbox@domain`) to the LMTP server at
/// `target` in one transaction; each recipient gets its own result. A server that
/// cannot be reached, or a connection that fails before the content is accepted,
/// defers every recipient.
pub async fn deliver(config: &RemoteConfig, target: &Target, job: &Job<'_>) -> (Outcome, Via) {
    let mut via = Via::starting(&format!("lmtp:{}", target.name()));
    let key = format!("lmtp|{}", target.name());
    let outcome = match pooled(config, &key, job, &mut via, connect(config, target)).await {
        Ok(outcome) => outcome,
        Err(broken) => {
            let status = match broken {
                Broken::Connect(_) => (4, 4, 1),
                Broken::Transaction(_) => (4, 4, 2),
            };
            let f = Failure::temporary(status, format!("LMTP server {}: {}", target.name(), broken.what()));
            job.recipients.iter().map(|(i, _)| (*i, Err(f.clone()))).collect()
        }
    };
    if via.transmission.is_zero() {
        via.setup = via.started.elapsed();
    }
    (outcome, via)
}

/// Opens a connection, reads the greeting and says LHLO.
async fn connect(config: &RemoteConfig, target: &Target) -> Result<super::remote::transaction::Connection, String> {
    let within = |d: Duration| format!("connection timed out after {}", humantime::format_duration(d));
    let (stream, ip): (Box<dyn Stream>, IpAddr) = match target {
        Target::Unix(path) => {
            let unix = timeout(config.connect_timeout, UnixStream::connect(path))
                .await
                .map_err(|_| within(config.connect_timeout))?
                .map_err(|e| format!("cannot connect to {path}: {e}"))?;
            // A unix socket is on this host.
            (Box::new(unix), IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        Target::Tcp(addr) => {
            let tcp = timeout(config.connect_timeout, TcpStream::connect(addr.as_str()))
                .await
                .map_err(|_| within(config.connect_timeout))?
                .map_err(|e| format!("cannot connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let ip = tcp.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            (Box::new(tcp), ip)
        }
    };
    let name = target.name();
    let session = Session {
        peer: name,
        host: name,
        ip,
        policy: TlsPolicy::Off,
        level: TlsLevel::None,
        cipher: None,
        lmtp: true,
        dane: None,
        probe: None,
    };
    greet(config, stream, session).await
}

#[cfg(test)]
#[path = "lmtp_tests.rs"]
mod tests;
