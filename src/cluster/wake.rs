//! What keeps a node in the cluster while it runs: the heartbeat (which renews its
//! leases and learns of a drain) and the `LISTEN` connection that wakes the
//! scheduler when another node queues mail or hands some back.

use super::node::{self, Load};
use super::writer::Counters;
use super::{Cluster, Error};
use crate::log_limit::{self, LogLimit};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a node looks for due work without being woken: often enough that a
/// dead node's mail moves soon after its leases run out.
pub fn poll_interval(lease: Duration) -> Duration {
    (lease / 2).clamp(Duration::from_millis(500), Duration::from_secs(10))
}

/// How often the heartbeat runs: a lease survives two missed beats.
pub fn heartbeat_interval(lease: Duration) -> Duration {
    (lease / 3).clamp(Duration::from_millis(300), Duration::from_secs(20))
}

/// Beats until the runtime ends.
pub fn heartbeat(
    cluster: Cluster,
    draining: Arc<AtomicBool>,
    in_flight: Arc<AtomicI32>,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
) {
    tokio::spawn(async move {
        static FAILED: LogLimit = LogLimit::new(log_limit::PERIOD);
        let mut ticks = tokio::time::interval(heartbeat_interval(cluster.lease));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let load = Load {
                in_flight: in_flight.load(Ordering::Relaxed),
                stored: counters.stored.load(Ordering::Relaxed),
                commits: counters.commits.load(Ordering::Relaxed),
            };
            match super::answered(node::heartbeat(&cluster, load)).await {
                Ok(beat) => {
                    super::share::set_live_nodes(beat.live_nodes);
                    let was = draining.swap(beat.draining, Ordering::Relaxed);
                    if was != beat.draining {
                        tracing::info!(node = %cluster.node, draining = beat.draining, "cluster drain changed");
                        wake.notify_one();
                    }
                }
                Err(e) => {
                    if let Some(repeats) = FAILED.admit() {
                        tracing::error!(error = %e, repeats, "cluster heartbeat failed; leases run out unless it recovers");
                    }
                }
            }
        }
    });
}

/// Listens for `tern_queue` notifications, reconnecting after a loss; each one
/// wakes the scheduler.
pub fn start(cluster: &Cluster, wake: Arc<Notify>) {
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(200);
        loop {
            match listen(&cluster, &wake).await {
                Ok(()) => wait = Duration::from_millis(200),
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection lost; polling meanwhile");
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
            tokio::time::sleep(wait).await;
        }
    });
}

async fn listen(cluster: &Cluster, wake: &Notify) -> Result<(), Error> {
    let (client, mut messages) = cluster.dedicated().await?;
    client.batch_execute("LISTEN tern_queue").await?;
    // Whatever was notified while no one listened is found by this first look.
    wake.notify_one();
    while let Some(message) = messages.recv().await {
        if let tokio_postgres::AsyncMessage::Notification(_) = message {
            wake.notify_one();
        }
    }
    Ok(())
}
