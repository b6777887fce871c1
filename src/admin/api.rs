//! The HTTP routes: `/healthz` and `/readyz` for anyone, `/api/v1/…` with the bearer
//! token, `/metrics` (OpenMetrics text) with it unless `metrics_public`. Every other
//! answer is JSON; every error is `{"error": "..."}`.

use super::ops::{self, ApiError, Request};
use super::token::Token;
use crate::queue::{Action, Filter, MessageState, Selection};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, extract};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// What the routes share.
pub struct App {
    pub ops: Arc<ops::State>,
    pub token: Token,
    /// `/metrics` without the token.
    pub metrics_public: bool,
}

type Shared = State<Arc<App>>;

/// The largest request body taken, in bytes: no route reads more than a small JSON
/// document. A larger one is refused with 413 before the route runs.
pub const MAX_BODY: usize = 64 * 1024;
type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

pub fn router(app: Arc<App>) -> Router {
    let auth = || middleware::from_fn_with_state(app.clone(), require_token);
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/queue", get(list))
        .route("/api/v1/queue/{target}", get(show).post(bulk).delete(delete))
        .route("/api/v1/queue/{id}/{action}", post(act))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/messages/{id}/trace", get(trace))
        .route("/api/v1/activity", get(activity))
        .route_layer(auth());
    let metrics = Router::new().route("/metrics", get(metrics));
    let metrics = if app.metrics_public { metrics } else { metrics.route_layer(auth()) };
    Router::new()
        .route("/", get(super::console::page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .merge(metrics)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn(limit_body))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({ "error": self.error }))).into_response()
    }
}

/// A body announced larger than [`MAX_BODY`] is refused with 413 before the token is
/// looked at, and the connection closed rather than the body read (RFC 9110 §15.5.14).
/// A chunked body is bounded where it is read ([`DefaultBodyLimit`]).
async fn limit_body(request: extract::Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(n) if n > MAX_BODY as u64 => {
            let error = format!("request body of {n} bytes; at most {MAX_BODY} are taken");
            let mut response = ApiError { status: 413, error }.into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => next.run(request).await,
    }
}

/// `Authorization: Bearer <token>`, or 401.
async fn require_token(State(app): Shared, request: extract::Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if app.token.verify(token) => next.run(request).await,
        _ => {
            let error = if presented.is_some() { "wrong bearer token" } else { "a bearer token is needed" };
            let mut response = ApiError { status: 401, error: error.into() }.into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

async fn run(app: &App, request: Request) -> Result<Json<serde_json::Value>, ApiError> {
    ops::execute(&app.ops, request).await.map(Json)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the listeners accept and the spool takes writes.
async fn readyz(State(app): Shared) -> Response {
    let mut problems = Vec::new();
    if !app.ops.is_ready() {
        problems.push("listeners are not accepting (starting or stopping)".to_string());
    }
    let dir = app.ops.spool_dir.clone();
    let writable = tokio::task::spawn_blocking(move || probe_write(&dir)).await;
    if let Err(e) = writable.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
        problems.push(format!("spool {} is not writable: {e}", app.ops.spool_dir.display()));
    }
    if problems.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not ready", "problems": problems }))).into_response()
    }
}

/// Writes a byte to a file without a name in `dir` (gone when closed); where the file
/// system has no such files, to a named file removed at once.
fn probe_write(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(0o600);
        options
    };
    let mut file = match open().custom_flags(libc::O_TMPFILE).open(dir) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
            let path = dir.join(format!(".ready-{}", std::process::id()));
            let file = open().create(true).truncate(true).open(&path);
            let _ = std::fs::remove_file(&path);
            file?
        }
        other => other?,
    };
    file.write_all(b"r")
}

/// Every series, the queue's gauges brought up to date first.
async fn metrics(State(app): Shared) -> Response {
    let queue = app.ops.queue.summary().await;
    let oldest = queue.oldest_arrival.map_or(0, |arrival| (crate::queue::now() - arrival).max(0));
    let metrics = crate::metrics::get();
    metrics.set_queue(queue.queued, queue.deferred, queue.held, oldest);
    let content_type = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], metrics.encode()).into_response()
}

async fn status(State(app): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    run(&app, Request::Status).await
}

async fn list(State(app): Shared, params: Params) -> Result<Json<serde_json::Value>, ApiError> {
    let mut params = QueryParams::new(params, &["state", "domain", "sender", "older_than", "limit", "cursor"])?;
    let filter = params.filter()?;
    let limit = match params.take("limit") {
        Some(n) => Some(n.parse().map_err(|_| ApiError::bad_request(format!("limit: {n:?} is not a number")))?),
        None => None,
    };
    run(&app, Request::List { filter, cursor: params.take("cursor"), limit }).await
}

async fn show(State(app): Shared, Path(id): Path<String>, params: Params) -> Result<Json<serde_json::Value>, ApiError> {
    QueryParams::new(params, &[])?;
    run(&app, Request::Show { id }).await
}

async fn delete(
    State(app): Shared,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    QueryParams::new(params, &[])?;
    run(&app, Request::Manage { selection: Selection::Id(id), action: Action::Delete }).await
}

/// `POST /api/v1/queue/{id}/{flush|hold|release|bounce}`
async fn act(
    State(app): Shared,
    Path((id, action)): Path<(String, String)>,
    params: Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    QueryParams::new(params, &[])?;
    let action = match parse_action(&action) {
        Some(Action::Delete) | None => {
            return Err(ApiError::not_found(format!(
                "no action {action:?} (flush, hold, release or bounce; DELETE /api/v1/queue/{{id}} deletes)"
            )));
        }
        Some(action) => action,
    };
    run(&app, Request::Manage { selection: Selection::Id(id), action }).await
}

/// `POST /api/v1/queue/{flush|hold|release|bounce|delete}?filter…`
async fn bulk(
    State(app): Shared,
    Path(action): Path<String>,
    params: Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(action) = parse_action(&action) else {
        return Err(ApiError::not_found(format!("no action {action:?} (flush, hold, release, bounce or delete)")));
    };
    let mut params = QueryParams::new(params, &["state", "domain", "sender", "older_than"])?;
    run(&app, Request::Manage { selection: Selection::Filter(params.filter()?), action }).await
}

async fn trace(
    State(app): Shared,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    QueryParams::new(params, &[])?;
    run(&app, Request::Trace { id }).await
}

async fn activity(State(app): Shared, params: Params) -> Result<Json<serde_json::Value>, ApiError> {
    QueryParams::new(params, &[])?;
    run(&app, Request::Activity).await
}

/// Reads the configuration file again: 200 with what changed, 422 when the file is
/// not valid (nothing changes), 500 when a new listener cannot be bound.
async fn reload(State(app): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    run(&app, Request::Reload).await
}

fn parse_action(name: &str) -> Option<Action> {
    [Action::Flush, Action::Hold, Action::Release, Action::Bounce, Action::Delete]
        .into_iter()
        .find(|a| a.name() == name)
}

/// Query parameters, each known and given at most once.
struct QueryParams(HashMap<String, String>);

impl QueryParams {
    fn new(params: Params, allowed: &[&str]) -> Result<QueryParams, ApiError> {
        let Query(pairs) = params.map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
        let mut map = HashMap::new();
        for (key, value) in pairs {
            if !allowed.contains(&key.as_str()) {
                let known = if allowed.is_empty() { "none are taken here".to_string() } else { allowed.join(", ") };
                return Err(ApiError::bad_request(format!("unknown parameter {key:?} ({known})")));
            }
            if value.trim().is_empty() {
                return Err(ApiError::bad_request(format!("{key}: empty")));
            }
            if map.insert(key.clone(), value).is_some() {
                return Err(ApiError::bad_request(format!("{key}: given twice")));
            }
        }
        Ok(QueryParams(map))
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// `state`, `domain`, `sender` and `older_than` (a duration such as `1h`).
    fn filter(&mut self) -> Result<Filter, ApiError> {
        let state =
            match self.take("state") {
                Some(s) => Some(MessageState::parse(&s).ok_or_else(|| {
                    ApiError::bad_request(format!("state: {s:?} is not one of queued, deferred, held"))
                })?),
                None => None,
            };
        let older_than = match self.take("older_than") {
            Some(d) => Some(
                humantime::parse_duration(&d)
                    .map_err(|e| {
                        ApiError::bad_request(format!("older_than: {d:?} is not a duration like 30m or 2d ({e})"))
                    })?
                    .as_secs(),
            ),
            None => None,
        };
        Ok(Filter { state, domain: self.take("domain"), sender: self.take("sender"), older_than })
    }
}
