//! The control socket (`<data_dir>/control.sock`, mode 0600) through which
//! `tern queue …`, `tern status` and `tern reload` reach the running server: one request line, one
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

/// Binds `<data_dir>/control.sock` with mode 0600: only the owner (the mail
/// administrator) may control the queue.
fn bind_private(data_dir: &Path) -> std::io::Result<UnixListener> {
    bind_socket(&data_dir.join(SOCKET_NAME), 0o600)
}

/// Binds a Unix socket at `path` with `mode`. It is bound in a private directory
/// beside it, given its mode there and only then moved into place: it is never
/// reachable with the mode the umask would give it, and one left by a server that died
/// is replaced.
pub(super) fn bind_socket(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or(std::io::ErrorKind::InvalidInput)?;
    let staging = dir.join(format!(".{}.new", name.to_string_lossy()));
    // Anything found here was left by a server that died.
    let _ = std::fs::remove_dir_all(&staging);
    crate::files::create_dir(&staging, crate::files::Access::PRIVATE)?;
    let bound = staging.join(name);
    let result = (|| {
        let listener = UnixListener::bind(&bound)?;
        std::fs::set_permissions(&bound, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        std::fs::rename(&bound, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}
