//! The running listeners and their accept loops. A reload adds and removes listeners
//! without touching the others: a removed listener stops accepting at once, and the
//! sessions it accepted finish on their own.

use super::{Context, connection, listen, web};
use crate::config::{Listen, ListenMode};
use crate::log_limit::{self, LogLimit};
use crate::metrics::ListenerMetrics;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// A listener bound from `[[listen]]`, not yet accepting.
pub struct Bound {
    pub listen: Listen,
    pub socket: std::net::TcpListener,
}

/// `127.0.0.1:25 (smtp), …` for listeners not yet accepting.
pub fn describe(bound: &[Bound]) -> String {
    let each: Vec<String> = bound
        .iter()
        .map(|b| format!("{} ({})", b.socket.local_addr().map_or(b.listen.addr, |a| a), b.listen.mode))
        .collect();
    each.join(", ")
}

/// Binds every listener of `wanted`; the first failure is the error.
pub fn bind_all(wanted: &[Listen]) -> Result<Vec<Bound>, String> {
    let all: Vec<SocketAddr> = wanted.iter().map(|l| l.addr).collect();
    wanted.iter().map(|l| bind_one(l, &all)).collect()
}

fn bind_one(l: &Listen, all: &[SocketAddr]) -> Result<Bound, String> {
    let v6only = listen::needs_v6only(l.addr, all);
    match listen::bind(l.addr, v6only) {
        Ok(socket) => Ok(Bound { listen: l.clone(), socket }),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "cannot listen on {}: {e} (ports below 1024 need root or CAP_NET_BIND_SERVICE; a server that \
             dropped its privileges binds them only at start: restart it)",
            l.addr
        )),
        Err(e) => Err(format!("cannot listen on {}: {e}", l.addr)),
    }
}

/// One accepting listener.
struct Running {
    /// As configured (its port may be 0).
    addr: SocketAddr,
    /// Where it is bound.
    local: SocketAddr,
    mode: watch::Sender<ListenMode>,
    /// Dropping it ends the accept loop, which closes the socket.
    _close: oneshot::Sender<()>,
}

/// What a reload changes: listeners bound and waiting to accept, listeners to close,
/// and new modes for listeners that stay.
pub struct Plan {
    added: Vec<Bound>,
    removed: Vec<SocketAddr>,
    modes: Vec<(SocketAddr, ListenMode)>,
}

impl Plan {
    /// Where the new listeners are bound.
    pub fn bound_addrs(&self) -> Vec<SocketAddr> {
        self.added.iter().filter_map(|b| b.socket.local_addr().ok()).collect()
    }
}

pub struct Listeners {
    running: Vec<Running>,
    /// The context each new session takes.
    current: Arc<ArcSwap<Context>>,
    /// The server's shutdown signal.
    stop: watch::Receiver<bool>,
    /// Every session holds a clone; the server waits for all of them to go.
    alive: mpsc::Sender<()>,
}

impl Listeners {
    /// No listener yet: [`Listeners::start`] adds those bound at start.
    pub fn new(current: Arc<ArcSwap<Context>>, stop: watch::Receiver<bool>, alive: mpsc::Sender<()>) -> Listeners {
        Listeners { running: Vec::new(), current, stop, alive }
    }

    /// Starts accepting on the listeners bound at start.
    pub fn start(&mut self, bound: Vec<Bound>) -> Result<(), String> {
        for b in bound {
            self.accept(b)?;
        }
        Ok(())
    }

    /// Where the listeners are bound (for loop detection of outbound mail).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.running.iter().map(|r| r.local).collect()
    }

    /// Where each listener is bound, and its mode.
    pub fn list(&self) -> Vec<(SocketAddr, ListenMode)> {
        self.running.iter().map(|r| (r.local, *r.mode.borrow())).collect()
    }

    /// `127.0.0.1:25 (smtp), …`, for the log.
    pub fn describe(&self) -> String {
        let each: Vec<String> = self.running.iter().map(|r| format!("{} ({})", r.local, *r.mode.borrow())).collect();
        each.join(", ")
    }

    /// Binds the listeners `wanted` has and the running ones lack; nothing changes yet,
    /// and on error the ones just bound are closed again.
    pub fn prepare(&self, wanted: &[Listen]) -> Result<Plan, String> {
        let all: Vec<SocketAddr> = wanted.iter().map(|l| l.addr).collect();
        let mut plan = Plan { added: Vec::new(), removed: Vec::new(), modes: Vec::new() };
        for l in wanted {
            match self.running.iter().find(|r| r.addr == l.addr) {
                Some(r) if *r.mode.borrow() != l.mode => plan.modes.push((l.addr, l.mode)),
                Some(_) => {}
                None => plan.added.push(bind_one(l, &all)?),
            }
        }
        plan.removed = self.running.iter().map(|r| r.addr).filter(|a| !all.contains(a)).collect();
        Ok(plan)
    }

    /// Carries out `plan`; returns the addresses now accepting and those closed.
    pub fn commit(&mut self, plan: Plan) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>), String> {
        let mut added = Vec::new();
        for b in plan.added {
            added.push(self.accept(b)?);
        }
        for (addr, mode) in plan.modes {
            if let Some(r) = self.running.iter().find(|r| r.addr == addr) {
                r.mode.send_replace(mode);
            }
        }
        let mut removed = Vec::new();
        self.running.retain(|r| {
            let keep = !plan.removed.contains(&r.addr);
            if !keep {
                removed.push(r.local);
            }
            keep
        });
        Ok((added, removed))
    }

    /// Starts the accept loop of one listener.
    fn accept(&mut self, bound: Bound) -> Result<SocketAddr, String> {
        let addr = bound.listen.addr;
        let listener = TcpListener::from_std(bound.socket).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let (mode, modes) = watch::channel(bound.listen.mode);
        let (close, closed) = oneshot::channel();
        let (current, stop, alive) = (self.current.clone(), self.stop.clone(), self.alive.clone());
        let counters = Arc::new(crate::metrics::get().listener(&addr.to_string()));
        tokio::spawn(accept_loop(listener, modes, closed, current, stop, alive, counters));
        self.running.push(Running { addr, local, mode, _close: close });
        Ok(local)
    }
}

/// Accepts connections until the server stops or the listener is removed. Each
/// session takes the context in force when it was accepted and keeps it to the end.
async fn accept_loop(
    listener: TcpListener,
    modes: watch::Receiver<ListenMode>,
    mut closed: oneshot::Receiver<()>,
    current: Arc<ArcSwap<Context>>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    counters: Arc<ListenerMetrics>,
) {
    loop {
        tokio::select! {
            // A closed or stopping listener accepts nothing more, even when a client waits.
            biased;
            _ = &mut closed => break,
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // An IPv4 client of a dual-stack listener is `::ffff:a.b.c.d`;
                    // everything after this (limits, relay networks, SPF, logs,
                    // Received) sees `a.b.c.d`.
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    let (ctx, mode) = (current.load_full(), *modes.borrow());
                    let (stop, alive, counters) = (stop.clone(), alive.clone(), counters.clone());
                    tokio::spawn(async move {
                        if mode.is_smtp() {
                            connection::handle(ctx, stream, peer, mode, stop, counters).await;
                        } else {
                            // HTTP connections end with the server, not after a grace period.
                            tokio::select! {
                                _ = web::handle(ctx, stream, peer, mode, counters) => {}
                                _ = wait_stop(stop) => {}
                            }
                        }
                        drop(alive);
                    });
                }
                Err(e) => accept_failed(&e).await,
            },
        }
    }
}

/// Returns once the server is stopping.
async fn wait_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Logs a failed `accept` (rate-limited: at the file-descriptor limit it fails for
/// every waiting client) and pauses the accept loop. Out of descriptors, the pause is
/// longer, so that connections being closed can free some instead of the loop
/// spinning.
async fn accept_failed(e: &std::io::Error) {
    static ACCEPT_FAILED: LogLimit = LogLimit::new(log_limit::PERIOD);
    if let Some(repeats) = ACCEPT_FAILED.admit() {
        tracing::warn!(error = %e, repeats, "accept failed");
    }
    let out_of_descriptors = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    let pause = if out_of_descriptors { 100 } else { 50 };
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
}
