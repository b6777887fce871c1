//! The operations of the admin API, shared by its HTTP routes and the control socket
//! that `tern queue …` and `tern status` use: one request type, one [`execute`].

use super::view::{self, DEFAULT_LIMIT, MAX_LIMIT};
use crate::queue::{Action, Filter, ManageError, Queue, Selection, Summary};
use crate::spool::Store;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A page of the queue.
    List {
        #[serde(default)]
        filter: Filter,
        #[serde(default)]
        cursor: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// One message in full.
    Show {
        id: String,
    },
    /// Flush, hold, release, bounce or delete; answers `{"affected": N}`.
    Manage {
        selection: Selection,
        action: Action,
    },
    Status,
    /// Reads the configuration file again ([`crate::server::reload`]); answers what
    /// changed.
    Reload,
    /// A message's trace, in order; kept after the message left the queue.
    Trace {
        id: String,
    },
    /// The console's live counters and per-domain health.
    Activity,
    /// Sends the aggregate reports counted so far; answers the reports queued.
    ReportsSend,
    /// What the aggregate reports hold now.
    ReportsShow,
}

/// `{"id": …, "events": […]}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub id: String,
    pub events: Vec<super::trace::Entry>,
}

/// Why a request failed, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
}

impl ApiError {
    pub fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError { status: 400, error: error.into() }
    }

    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError { status: 404, error: error.into() }
    }

    fn internal(error: impl Into<String>) -> ApiError {
        ApiError { status: 500, error: error.into() }
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> ApiError {
        let status = match e {
            ManageError::NotFound(_) => 404,
            ManageError::Conflict(_) => 409,
            ManageError::Failed(_) => 503,
        };
        ApiError { status, error: e.to_string() }
    }
}

/// `{"affected": N}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Affected {
    pub affected: usize,
}

/// What `GET /api/v1/status` and `tern status` show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// Unix seconds.
    pub started_at: u64,
    pub uptime_seconds: u64,
    pub listeners: Vec<ListenerInfo>,
    /// The admin HTTP listener, when on.
    pub admin: Option<SocketAddr>,
    /// The configuration file (none: the embedded default) and when it was read.
    pub config_file: Option<PathBuf>,
    pub config_loaded_at: Option<u64>,
    pub data_dir: PathBuf,
    pub queue: Summary,
    /// The certificates the TLS listeners may serve.
    #[serde(default)]
    pub certificates: Vec<crate::acme::CertificateInfo>,
    /// ACME orders, when `[acme]` is set.
    #[serde(default)]
    pub acme: Option<crate::acme::AcmeStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerInfo {
    pub addr: SocketAddr,
    pub mode: String,
}

/// What the operations work on: the running server's queue and store.
pub struct State {
    pub queue: Queue,
    pub store: Arc<dyn Store>,
    pub started: (Instant, SystemTime),
    /// The running server: its listeners and configuration as they are now, and reloads.
    pub live: crate::server::Live,
    pub admin: std::sync::OnceLock<SocketAddr>,
    pub data_dir: PathBuf,
    pub spool_dir: PathBuf,
    /// Listeners accept and the server is not stopping.
    pub ready: AtomicBool,
}

impl State {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Carries out one request; the answer as JSON.
pub async fn execute(state: &State, request: Request) -> Result<serde_json::Value, ApiError> {
    match request {
        Request::List { filter, cursor, limit } => {
            let filter = filter.normalized().map_err(ApiError::bad_request)?;
            let limit = check_limit(limit)?;
            if let Some(c) = &cursor {
                check_id("cursor", c)?;
            }
            let messages =
                state.store.load().await.map_err(|e| ApiError::internal(format!("cannot read the queue: {e}")))?;
            let cursor = cursor.map(|c| c.to_ascii_uppercase());
            Ok(json(&view::page(messages, &filter, cursor.as_deref(), limit, crate::queue::now())))
        }
        Request::Show { id } => {
            check_id("id", &id)?;
            let messages =
                state.store.load().await.map_err(|e| ApiError::internal(format!("cannot read the queue: {e}")))?;
            let found = messages.iter().find(|m| m.envelope.id.eq_ignore_ascii_case(&id));
            let found = found.ok_or_else(|| ApiError::not_found(format!("{id} is not in the queue")))?;
            Ok(json(&view::detail(found)))
        }
        Request::Manage { selection, action } => {
            let selection = check_selection(selection, action)?;
            let affected = state.queue.manage(selection, action).await?;
            Ok(json(&Affected { affected }))
        }
        Request::Trace { id } => {
            check_id("id", &id)?;
            let wanted = id.clone();
            let events = match crate::cluster::shared::get() {
                Some(shared) => crate::cluster::shared::trace::read(&shared.cluster, &wanted).await.map_err(|e| {
                    ApiError::internal(format!("cannot read the trace from the cluster's database: {e}"))
                })?,
                None => tokio::task::spawn_blocking(move || super::trace::read(&wanted))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(|e| ApiError::internal(format!("cannot read the trace: {e}")))?,
            };
            if events.is_empty() {
                return Err(ApiError::not_found(format!("no trace of {id}")));
            }
            Ok(json(&Trace { id: id.to_ascii_uppercase(), events }))
        }
        Request::Activity => Ok(json(&super::activity::get().snapshot())),
        Request::ReportsSend => {
            let ctx = state.live.context();
            let sent = crate::reports::send_now(&ctx).await.map_err(|error| ApiError { status: 503, error })?;
            Ok(json(&sent))
        }
        Request::ReportsShow => Ok(json(&crate::reports::show().await)),
        Request::Status => {
            let (since, started_at) = state.started;
            let ctx = state.live.context();
            let config_source = ctx.config.source.clone();
            let certificates = ctx.tls.as_ref().map(|t| t.certificates()).unwrap_or_default();
            drop(ctx);
            Ok(json(&Status {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                started_at: unix(started_at),
                uptime_seconds: since.elapsed().as_secs(),
                listeners: (state.live.listeners().await.iter())
                    .map(|(addr, mode)| ListenerInfo { addr: *addr, mode: mode.to_string() })
                    .collect(),
                admin: state.admin.get().copied(),
                config_file: config_source.as_ref().map(|(p, _)| p.clone()),
                config_loaded_at: config_source.as_ref().map(|(_, t)| unix(*t)),
                data_dir: state.data_dir.clone(),
                queue: state.queue.summary().await,
                certificates,
                acme: crate::acme::live().status(),
            }))
        }
        Request::Reload => match crate::server::reload(&state.live).await {
            Ok(summary) => {
                let names = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect();
                Ok(json(&Reloaded {
                    reloaded: summary.to_string(),
                    changed: names(&summary.changed),
                    listening: summary.added.clone(),
                    closed: summary.removed.clone(),
                    needs_restart: names(&summary.need_restart),
                }))
            }
            Err(e) => {
                use crate::server::ReloadError;
                let status = match e {
                    ReloadError::Invalid(_) => 422,
                    ReloadError::Listen(_) => 500,
                    ReloadError::Stopping => 503,
                };
                Err(ApiError { status, error: e.to_string() })
            }
        },
    }
}

/// The answer to [`Request::Reload`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    /// One line: `reloaded FILE: changed …`.
    pub reloaded: String,
    /// Sections whose settings changed.
    pub changed: Vec<String>,
    /// Listeners opened and closed.
    pub listening: Vec<SocketAddr>,
    pub closed: Vec<SocketAddr>,
    /// Keys that changed but need a restart (their old value stays).
    pub needs_restart: Vec<String>,
}

/// An answer as JSON (these types always serialize).
fn json<T: Serialize>(answer: &T) -> serde_json::Value {
    serde_json::to_value(answer).expect("answers serialize")
}

fn check_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit: {n} is not between 1 and {MAX_LIMIT}"))),
    }
}

/// Queue ids are 16 hex digits.
fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{what}: {id:?} is not a queue id (16 hex digits)")))
    }
}

/// A filter is checked; only a flush may take every message without one (as
/// Postfix asks for `ALL`, an empty filter is not taken to mean "everything").
fn check_selection(selection: Selection, action: Action) -> Result<Selection, ApiError> {
    match selection {
        Selection::Id(id) => check_id("id", &id).map(|_| Selection::Id(id.to_ascii_uppercase())),
        Selection::Filter(filter) => {
            let filter = filter.normalized().map_err(ApiError::bad_request)?;
            if filter.is_empty() && action != Action::Flush {
                return Err(ApiError::bad_request(format!(
                    "{}: give a filter (state, domain, sender or older_than); older_than=0s selects every message",
                    action.name()
                )));
            }
            Ok(Selection::Filter(filter))
        }
    }
}
