//! The control socket (`<data_dir>/control.sock`, mode 0600) through which
//! `tern queue …` and `tern status` reach the running server: one request line, one
//! answer line, both JSON. A request is an [`ops::Request`], carried out by the same
//! [`ops::execute`] as the HTTP API; the answer is `{"ok": …}` or an
//! [`ops::ApiError`] (`{"status": 404, "error": "…"}`).

use crate::admin::ops::{self, ApiError};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line taken.
const MAX_REQUEST: u64 = 64 << 10;

/// Listens on the control socket until the task is dropped.
pub fn start(data_dir: &Path, state: Arc<ops::State>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = bind_private(data_dir)?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read.take(MAX_REQUEST));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match serde_json::from_str::<ops::Request>(&line) {
                    Ok(request) => ops::execute(&state, request).await,
                    Err(e) => Err(ApiError::bad_request(format!("bad request: {e}"))),
                };
                let answer = match answer {
                    Ok(value) => serde_json::json!({ "ok": value }),
                    Err(e) => serde_json::to_value(e).expect("errors serialize"),
                };
                let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
            });
        }
    }))
}

/// Binds `<data_dir>/control.sock` with mode 0600. Only the owner (the mail
/// administrator) may control the queue, so the socket is bound in a private directory,
/// given its mode there and only then moved into place: it is never reachable with the
/// mode the umask would give it.
fn bind_private(data_dir: &Path) -> std::io::Result<UnixListener> {
    let staging = data_dir.join(".control");
    // Anything found here was left by a server that died: the data directory is ours.
    let _ = std::fs::remove_dir_all(&staging);
    crate::files::create_dir(&staging, crate::files::Access::PRIVATE)?;
    let bound = staging.join(SOCKET_NAME);
    let listener = UnixListener::bind(&bound)?;
    std::fs::set_permissions(&bound, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::rename(&bound, data_dir.join(SOCKET_NAME))?;
    std::fs::remove_dir(&staging)?;
    Ok(listener)
}
