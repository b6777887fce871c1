//! Reloading the configuration while the server runs (SIGHUP, `tern reload`, the
//! admin API). The file is read and checked as `tern config check` does, the
//! certificate and DKIM keys are read, new listeners are bound; only when all of that
//! worked does anything change. Sessions keep the context they started with; new
//! sessions and delivery attempts get the new one.

use super::context::{self, Keys, Lasting};
use super::listeners::Listeners;
use super::{Context, notify};
use crate::config::{Config, line_of};
use arc_swap::ArcSwap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The running server, for reloads; cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<Inner>);

struct Inner {
    /// The configuration file; `None` for the embedded default.
    origin: Option<PathBuf>,
    current: Arc<ArcSwap<Context>>,
    lasting: Lasting,
    /// The listeners (gone once the server stops); the lock also keeps reloads one at
    /// a time.
    listeners: tokio::sync::Mutex<Option<Listeners>>,
}

impl Live {
    pub(super) fn new(
        origin: Option<PathBuf>,
        current: Arc<ArcSwap<Context>>,
        lasting: Lasting,
        listeners: Listeners,
    ) -> Live {
        Live(Arc::new(Inner { origin, current, lasting, listeners: tokio::sync::Mutex::new(Some(listeners)) }))
    }

    /// The context new sessions get.
    pub fn context(&self) -> Arc<Context> {
        self.0.current.load_full()
    }

    /// Where the context new sessions get is kept.
    pub(super) fn current(&self) -> Arc<ArcSwap<Context>> {
        self.0.current.clone()
    }

    /// Starts accepting on the listeners bound at start.
    pub(super) async fn start_listeners(&self, bound: Vec<super::listeners::Bound>) -> Result<(), String> {
        let mut listeners = self.0.listeners.lock().await;
        listeners.as_mut().ok_or("the server is stopping")?.start(bound)
    }

    /// Where the server listens now, and in which mode.
    pub async fn listeners(&self) -> Vec<(SocketAddr, crate::config::ListenMode)> {
        self.0.listeners.lock().await.as_ref().map(Listeners::list).unwrap_or_default()
    }

    /// Stops every listener for good (shutdown); later reloads fail.
    pub(super) async fn close_listeners(&self) {
        self.0.listeners.lock().await.take();
    }

    fn origin(&self) -> String {
        self.0.origin.as_ref().map_or("embedded default".to_string(), |p| p.display().to_string())
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read, does not parse or is not valid (the message names the
    /// key and, where the file gives one, the line), or a key file is bad.
    #[error("{0}")]
    Invalid(String),
    /// A new listener cannot be bound.
    #[error("{0}")]
    Listen(String),
    /// The server is shutting down.
    #[error("the server is stopping")]
    Stopping,
}

/// What a reload did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The file read.
    pub origin: String,
    /// Sections (top-level keys) whose settings changed.
    pub changed: Vec<&'static str>,
    /// Listeners opened and closed.
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    /// Keys that changed but take effect only at the next start (their old value stays).
    pub need_restart: Vec<&'static str>,
}

/// One line: `reloaded FILE: changed local, relay; listening on …; closed …; needs a
/// restart: data_dir`.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |addrs: &[SocketAddr]| addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        write!(f, "reloaded {}: ", self.origin)?;
        match self.changed.is_empty() {
            true => write!(f, "no settings changed (certificate and keys read again)")?,
            false => write!(f, "changed {}", self.changed.join(", "))?,
        }
        if !self.added.is_empty() {
            write!(f, "; now listening on {}", list(&self.added))?;
        }
        if !self.removed.is_empty() {
            write!(f, "; no longer listening on {}", list(&self.removed))?;
        }
        if !self.need_restart.is_empty() {
            write!(f, "; needs a restart (old value kept): {}", self.need_restart.join(", "))?;
        }
        Ok(())
    }
}

/// Reads the configuration file again and puts it in force, or changes nothing and
/// says why. The outcome is logged either way.
pub async fn reload(live: &Live) -> Result<Summary, Error> {
    let mut listeners = live.0.listeners.lock().await;
    let Some(listeners) = listeners.as_mut() else { return Err(Error::Stopping) };
    notify::reloading();
    let result = apply(live, listeners).await;
    match &result {
        Ok(summary) => {
            tracing::info!(summary = %summary, "configuration reloaded");
            for key in &summary.need_restart {
                tracing::warn!(key, "changed in the configuration file, but needs a restart; the old value stays");
            }
        }
        Err(e) => tracing::error!(error = %e, "reload failed; the running configuration stays"),
    }
    notify::ready(&format!("listening on {}", listeners.describe()));
    result
}

async fn apply(live: &Live, listeners: &mut Listeners) -> Result<Summary, Error> {
    let origin = live.0.origin.clone();
    let previous = live.context();
    // Reading files may block: off the async threads.
    let read = tokio::task::spawn_blocking(move || -> Result<(Config, Keys), String> {
        let config = Config::load(origin.as_deref()).map_err(|e| e.to_string())?;
        let keys = Keys::load(&config).map_err(|(key, e)| {
            let (name, text) = match origin.as_deref() {
                Some(path) => (path.display().to_string(), std::fs::read_to_string(path).unwrap_or_default()),
                None => ("<embedded default>".to_string(), crate::config::EMBEDDED_DEFAULT.to_string()),
            };
            match line_of(&text, key) {
                Some(line) => format!("{name}: line {line}: {key}: {e}"),
                None => format!("{name}: {key}: {e}"),
            }
        })?;
        Ok((config, keys))
    });
    let (mut config, keys) = read.await.map_err(|e| Error::Invalid(e.to_string()))?.map_err(Error::Invalid)?;
    let need_restart = keep_restart_only(&previous.config, &mut config);
    let changed = changed_sections(&previous.config, &config);
    let plan = listeners.prepare(&config.listen).map_err(Error::Listen)?;
    // The queue must know every address Tern will listen on, so it never sends to itself.
    let mut own = listeners.local_addrs();
    own.extend(plan.bound_addrs());
    let (context, settings) =
        context::build(config, keys, &live.0.lasting, Some(&previous), own).map_err(Error::Invalid)?;
    let (added, removed) = listeners.commit(plan).map_err(Error::Listen)?;
    live.0.current.store(Arc::new(context));
    live.0.lasting.queue.reconfigure(settings);
    Ok(Summary { origin: live.origin(), changed, added, removed, need_restart })
}

/// Puts back the keys that cannot change while the server runs; returns those that
/// the file changed.
fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    if new.data_dir != running.data_dir {
        new.data_dir = running.data_dir.clone();
        kept.push("data_dir");
    }
    if new.spool.segment_size != running.spool.segment_size {
        new.spool = running.spool.clone();
        kept.push("spool");
    }
    if format!("{:?}", new.cluster) != format!("{:?}", running.cluster) {
        new.cluster = running.cluster.clone();
        kept.push("cluster");
    }
    if new.server != running.server {
        new.server = running.server.clone();
        kept.push("server");
    }
    if new.submit_socket() != running.submit_socket() {
        new.sendmail = running.sendmail.clone();
        kept.push("sendmail");
    }
    if format!("{:?}", new.admin) != format!("{:?}", running.admin) {
        new.admin = running.admin.clone();
        kept.push("admin");
    }
    kept
}

/// The top-level keys whose settings differ (compared by their debug form).
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! compare {
        ($($key:ident),*) => {
            $(if format!("{:?}", old.$key) != format!("{:?}", new.$key) {
                changed.push(stringify!($key));
            })*
        };
    }
    compare!(
        hostname,
        listen,
        local,
        limits,
        queue,
        relay,
        dns,
        outbound,
        tls,
        auth,
        auth_checks,
        dkim,
        antispam,
        rspamd
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_keep_their_value() {
        let running = Config::parse("data_dir = \"/a\"\n", "t").unwrap();
        let mut new =
            Config::parse("data_dir = \"/b\"\n[spool]\nsegment_size = 8192\n[local]\ndomains = [\"x.test\"]\n", "t")
                .unwrap();
        assert_eq!(keep_restart_only(&running, &mut new), ["data_dir", "spool"]);
        assert_eq!(new.data_dir, PathBuf::from("/a"));
        assert_eq!(new.spool.segment_size, running.spool.segment_size);
        assert_eq!(changed_sections(&running, &new), ["local"]);
    }

    #[test]
    fn the_summary_is_one_line() {
        let summary = Summary {
            origin: "/etc/tern/tern.toml".into(),
            changed: vec!["local", "listen"],
            added: vec!["127.0.0.1:2526".parse().unwrap()],
            removed: vec![],
            need_restart: vec!["data_dir"],
        };
        assert_eq!(
            summary.to_string(),
            "reloaded /etc/tern/tern.toml: changed local, listen; now listening on 127.0.0.1:2526; \
             needs a restart (old value kept): data_dir"
        );
    }
}
