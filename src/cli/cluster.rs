//! `tern cluster init|status|drain|resume`: the cluster's database, read and changed
//! directly with the `[cluster]` settings of the configuration file.

use crate::cluster::{Cluster, migrations, node, share, status};
use crate::config::Config;
use std::collections::BTreeSet;
use std::process::ExitCode;

/// Runs `work` on the cluster named by `[cluster]`.
pub(super) fn with_cluster<F>(config: &Config, work: impl FnOnce(Cluster) -> F) -> ExitCode
where
    F: Future<Output = Result<(), String>>,
{
    let Some(settings) = &config.cluster else {
        eprintln!("tern: no [cluster] section in the configuration: this server keeps its queue in its local spool");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let cluster = Cluster::new(settings)?;
        work(cluster).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tern cluster init`: creates or migrates the schema.
pub fn init(config: &Config) -> ExitCode {
    with_cluster(config, |cluster| async move {
        let applied = migrations::init(&cluster).await.map_err(|e| e.to_string())?;
        if applied.names.is_empty() {
            println!("database schema already at version {}: nothing to do", applied.to);
        } else {
            println!(
                "database schema migrated from version {} to {}: {}",
                applied.from,
                applied.to,
                applied.names.join(", ")
            );
        }
        Ok(())
    })
}

/// `tern cluster drain NODE` and `tern cluster resume NODE`.
pub fn drain(config: &Config, name: &str, draining: bool) -> ExitCode {
    with_cluster(config, |cluster| async move {
        migrations::check(&cluster).await.map_err(|e| e.to_string())?;
        if !node::set_draining(&cluster, name, draining).await.map_err(|e| e.to_string())? {
            return Err(format!("no node named {name:?} has joined the cluster"));
        }
        if draining {
            println!("node {name} drains: it claims no new deliveries and finishes those under way");
        } else {
            println!("node {name} resumes claiming deliveries");
        }
        Ok(())
    })
}

/// `tern cluster status`.
pub fn status(config: &Config) -> ExitCode {
    with_cluster(config, |cluster| async move {
        migrations::check(&cluster).await.map_err(|e| e.to_string())?;
        let o = status::overview(&cluster).await.map_err(|e| e.to_string())?;
        println!("queue: {} message(s), {} due, {} held", o.queued, o.due, o.held);
        let limit = config.outbound.max_connections_per_host;
        println!(
            "connections per host per node: {} of {limit} ({} live node(s))",
            share::share(limit, o.sharing.max(1)),
            o.sharing
        );
        println!(
            "{:<16} {:<8} {:<9} {:<12} {:<10} {:>9} {:>7} {:>8} {:>11}",
            "NODE", "STATE", "VERSION", "CONFIG", "HEARTBEAT", "IN-FLIGHT", "LEASED", "ACCEPTED", "COMMITS/MSG"
        );
        for n in &o.nodes {
            let state = match (n.live, n.draining) {
                (true, false) => "up",
                (true, true) => "draining",
                (false, _) => "down",
            };
            let per = if n.stored > 0 { format!("{:.3}", n.commits as f64 / n.stored as f64) } else { "-".into() };
            println!(
                "{:<16} {:<8} {:<9} {:<12} {:<10} {:>9} {:>7} {:>8} {:>11}",
                n.name,
                state,
                n.version,
                n.config_hash,
                format!("{:.0}s ago", n.heartbeat_ago.max(0.0)),
                n.in_flight,
                n.leased,
                n.accepted,
                per
            );
        }
        let live: Vec<_> = o.nodes.iter().filter(|n| n.live).collect();
        let versions: BTreeSet<_> = live.iter().map(|n| n.version.as_str()).collect();
        if versions.len() > 1 {
            println!(
                "warning: live nodes run different versions: {}",
                versions.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let hashes: BTreeSet<_> = live.iter().map(|n| n.config_hash.as_str()).collect();
        if hashes.len() > 1 {
            println!(
                "warning: live nodes run different configurations (hashes {})",
                hashes.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    })
}
