//! The local submission socket (`[sendmail] socket`, by default
//! `<data_dir>/submit.sock`): SMTP from programs on this machine through
//! `tern sendmail`, the client known by the kernel's word (`SO_PEERCRED`) instead of a
//! password. Its mail is submitted mail like that of an authenticated user on port 587:
//! the `Date` and `Message-ID` it lacks are added, it is DKIM-signed, and 250 comes
//! only after it is on disk.
//!
//! Who may send as whom: root and the user the server runs as may use any envelope
//! sender (Postfix's "trusted users"); any other user only its own login at `hostname`
//! or at a local domain. Who may connect at all is up to where the socket lives: in the
//! private data directory (the default) only root and the server's user reach it.

use super::connection;
use super::{Context, control};
use crate::config::ListenMode;
use crate::metrics::Refusal;
use crate::net::Stream;
use crate::smtp::Reply;
use crate::smtp::address::Mailbox;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

/// A local user on the other end of the socket.
#[derive(Debug, Clone)]
pub struct LocalUser {
    pub uid: u32,
    pub login: String,
    /// Root or the server's own user: any envelope sender.
    pub trusted: bool,
}

impl LocalUser {
    /// The session's stand-in for a client address: local submissions count as
    /// loopback in limits and logs.
    pub const ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

    /// May this user use `sender` as envelope sender? Trusted users any; others
    /// `login@hostname` or `login@<local domain>` (with a subaddress), never `<>`.
    pub fn may_send_as(&self, ctx: &Context, sender: Option<&Mailbox>) -> bool {
        if self.trusted {
            return true;
        }
        let Some(sender) = sender else { return false };
        let local = sender.local_unquoted().to_lowercase();
        let sep = ctx.config.local.subaddress_separator.as_str();
        let base = match sep {
            "" => local.as_str(),
            sep => local.split_once(sep).map_or(local.as_str(), |(b, _)| b),
        };
        let hostname = crate::smtp::address::canonical_domain(&ctx.config.hostname);
        let domain_ok = ctx.policy.is_local(sender) || sender.canonical_domain().is_some_and(|d| Some(d) == hostname);
        base == self.login.to_lowercase() && domain_ok
    }
}

/// Binds the socket: owner-only in the data directory, like everything there (root
/// reaches it too); elsewhere mode 0666, who may reach it being up to its directory.
pub fn bind(path: &Path, data_dir: &Path) -> std::io::Result<UnixListener> {
    let in_data_dir = path.parent() == Some(data_dir);
    control::bind_socket(path, if in_data_dir { 0o600 } else { 0o666 })
}

/// Takes local submissions until `stop`.
pub async fn serve(
    current: Arc<ArcSwap<Context>>,
    listener: UnixListener,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Each submission takes the configuration in force when it came.
                    let (ctx, stop, alive) = (current.load_full(), stop.clone(), alive.clone());
                    tokio::spawn(async move {
                        handle(ctx, stream, stop).await;
                        drop(alive);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "local submission: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}

async fn handle(ctx: Arc<Context>, stream: UnixStream, stop: watch::Receiver<bool>) {
    let uid = stream.peer_cred().map(|c| c.uid());
    let mut stream: Box<dyn Stream> = Box::new(stream);
    let user = match uid {
        Ok(uid) => identify(uid),
        Err(e) => {
            tracing::warn!(error = %e, "local submission: cannot tell who connected");
            None
        }
    };
    let Some(user) = user else {
        let _ =
            refuse(&mut stream, Reply::new(554, (5, 7, 1), "Unknown local user").because(Refusal::AuthFailed)).await;
        return;
    };
    let limits = &ctx.config.limits;
    let Some(_slot) = ctx.connections.open(LocalUser::ADDR.ip(), limits.max_connections, None) else {
        tracing::info!(user = %user.login, "local submission refused: too many connections");
        let _ = refuse(
            &mut stream,
            Reply::new(421, (4, 7, 0), "Too many connections, try again later").because(Refusal::ConnectionLimit),
        )
        .await;
        return;
    };
    tracing::info!(user = %user.login, uid = user.uid, trusted = user.trusted, "local submission");
    let counters = crate::metrics::get().listener("local");
    counters.connection(crate::metrics::ConnectionResult::Accepted);
    counters.active.inc();
    let client = connection::Client {
        peer: LocalUser::ADDR,
        own: None,
        mode: ListenMode::Submission,
        allowlisted: false,
        local: Some(&user),
        counters: &counters,
    };
    let end = connection::converse(&ctx, &mut stream, client, stop).await;
    let _ = stream.shutdown().await;
    counters.active.dec();
    connection::log_end(&format!("local user {}", user.login), end);
}

/// The local user with this uid; `None` for a uid without an account.
fn identify(uid: u32) -> Option<LocalUser> {
    let Some(account) = crate::passwd::by_uid(uid) else {
        tracing::warn!(uid, "local submission from a uid without an account; refused");
        return None;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    Some(LocalUser { uid, login: account.login, trusted: uid == 0 || uid == own })
}

async fn refuse(stream: &mut Box<dyn Stream>, reply: Reply) -> std::io::Result<()> {
    connection::count_refusal(&reply);
    let mut out = Vec::new();
    reply.encode(&mut out);
    stream.write_all(&out).await?;
    stream.shutdown().await
}
