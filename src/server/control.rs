//! The control socket (`<data_dir>/control.sock`) through which `tern queue flush`
//! and `tern queue delete` reach the running server. One request line, one answer
//! line: `flush [ID]`, `delete ID [bounce]` → `ok …` or `error …`.

use crate::queue::Queue;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

pub const SOCKET_NAME: &str = "control.sock";

/// Listens on the control socket until the task is dropped.
pub fn start(data_dir: &Path, queue: Queue) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = data_dir.join(SOCKET_NAME);
    // A socket found here was left by a server that died: the data directory is ours.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Only the owner (the mail administrator) may control the queue.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let queue = queue.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read.take(1024));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = answer(&queue, line.trim()).await;
                let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
            });
        }
    }))
}

async fn answer(queue: &Queue, request: &str) -> String {
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
        _ => "error unknown request".into(),
    }
}
