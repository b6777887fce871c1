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
