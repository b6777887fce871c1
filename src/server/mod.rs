//! Listeners, connections and the life of the `serve` process.

mod checks;
mod connection;
mod received;

use crate::config::Config;
use crate::policy::LocalPolicy;
use crate::queue::{Queue, QueueConfig};
use crate::smtp::session::SessionConfig;
use crate::spool::Spool;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// What every connection shares.
pub struct Context {
    pub config: Config,
    pub policy: LocalPolicy,
    pub spool: Spool,
    pub queue: Queue,
    pub session_config: SessionConfig,
}

/// Runs the server until SIGTERM or SIGINT, then stops gracefully.
pub async fn serve(config: Config) -> Result<(), String> {
    let spool_dir = config.spool_dir();
    let (spool, pending) = Spool::open(&spool_dir)
        .map_err(|e| format!("cannot open spool {}: {e}", spool_dir.display()))?;
    let recovered = pending.len();
    let mut listeners = Vec::new();
    for l in &config.listen {
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", l.addr))?;
        listeners.push((listener, l.mode));
    }
    let queue_config = QueueConfig {
        retry: config.queue.retry.clone(),
        max_age: config.queue.max_age,
        concurrency: config.queue.concurrency,
        mail_root: config.mail_root(),
        hostname: config.hostname.clone(),
    };
    let (queue, queue_task) = Queue::start(spool.clone(), queue_config, pending);
    let session_config = SessionConfig {
        hostname: config.hostname.clone(),
        max_message_size: config.limits.max_message_size,
        max_recipients: config.limits.max_recipients,
        max_bad_commands: config.limits.max_bad_commands,
    };
    let grace = config.limits.shutdown_grace;
    let ctx = Arc::new(Context {
        policy: LocalPolicy::new(&config),
        config,
        spool,
        queue: queue.clone(),
        session_config,
    });

    let addrs: Vec<String> = listeners
        .iter()
        .map(|(l, mode)| {
            format!(
                "{} ({mode})",
                l.local_addr().map(|a| a.to_string()).unwrap_or_default()
            )
        })
        .collect();
    println!(
        "tern: listening on {}; mail for {} goes to {}; {recovered} queued message(s) recovered",
        addrs.join(", "),
        ctx.config.local.domains.join(", "),
        ctx.config.mail_root().display()
    );
    tracing::info!(listen = %addrs.join(", "), recovered, "started");

    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection holds a clone of `alive`; when all are gone, `all_gone` returns.
    let (alive, mut all_gone) = mpsc::channel::<()>(1);
    for (listener, _mode) in listeners {
        let (ctx, mut stop, alive) = (ctx.clone(), stop_rx.clone(), alive.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let (ctx, stop, alive) = (ctx.clone(), stop.clone(), alive.clone());
                            tokio::spawn(async move {
                                connection::handle(ctx, stream, peer, stop).await;
                                drop(alive);
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
        });
    }
    drop(alive);

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(grace, all_gone.recv()).await.is_err() {
        tracing::warn!("sessions still open after the grace period; closing them");
    }
    queue.stop();
    if tokio::time::timeout(grace, queue_task).await.is_err() {
        tracing::warn!(
            "deliveries still running after the grace period; they will be retried at next start"
        );
    }
    tracing::info!("stopped");
    Ok(())
}
