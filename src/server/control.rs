//! The control socket (`<data_dir>/control.sock`) through which `tern queue flush`,
//! `tern queue delete` and `tern reload` reach the running server. One request line,
//! one answer line: `flush [ID]`, `delete ID [bounce]`, `reload` → `ok …` or `error …`.

use super::reload::{Live, reload};
use crate::queue::Queue;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

pub const SOCKET_NAME: &str = "control.sock";

/// Listens on the control socket until the task is dropped.
pub fn start(data_dir: &Path, queue: Queue, live: Live) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = bind_private(data_dir)?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (queue, live) = (queue.clone(), live.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read.take(1024));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = answer(&queue, &live, line.trim()).await;
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

async fn answer(queue: &Queue, live: &Live, request: &str) -> String {
    let words: Vec<&str> = request.split_whitespace().collect();
    match words.as_slice() {
        ["flush"] => format!("ok {} message(s) scheduled for immediate delivery", queue.flush(None).await),
        ["flush", id] => match queue.flush(Some(id.to_string())).await {
            0 => format!("error {id} is not waiting for a retry"),
            _ => format!("ok {id} scheduled for immediate delivery"),
        },
        ["delete", id] | ["delete", id, "bounce"] => match queue.delete(id.to_string(), words.len() == 3).await {
            Ok(()) => format!("ok {id} deleted"),
            Err(e) => format!("error {e}"),
        },
        ["reload"] => match reload(live).await {
            Ok(summary) => format!("ok {summary}"),
            Err(e) => format!("error {}", e.to_string().replace('\n', " ")),
        },
        _ => "error unknown request".into(),
    }
}
