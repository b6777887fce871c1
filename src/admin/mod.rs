//! The admin HTTP listener (`[admin]`): the JSON API under `/api/v1/`, the health
//! and readiness probes, and the Prometheus metrics (`crate::metrics`). On loopback
//! only (it has no TLS yet), with a bearer token.
//!
//! The API and the control socket behind `tern queue …` and `tern status` carry the
//! same [`ops::Request`] to the same [`ops::execute`].

pub mod activity;
mod api;
mod console;
mod listener;
pub mod ops;
mod token;
pub mod trace;
pub mod view;

use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Binds the admin listener, when `[admin] listen` is set, and serves it until the
/// task is aborted. Returns where it listens.
pub async fn start(config: &Config, state: Arc<ops::State>) -> Result<Option<(SocketAddr, JoinHandle<()>)>, String> {
    let Some(addr) = config.admin.listen else { return Ok(None) };
    let token = token::Token::load_or_create(&config.admin_token_file())?;
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
    let local = tcp.local_addr().map_err(|e| format!("admin listener: {e}"))?;
    let _ = state.admin.set(local);
    let app = Arc::new(api::App { ops: state, token, metrics_public: config.admin.metrics_public });
    let task = tokio::spawn(listener::serve(tcp, api::router(app), config.admin.header_timeout));
    Ok(Some((local, task)))
}
