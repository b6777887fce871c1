//! Talking to the running server through its control socket: one JSON request (an
//! admin [`Request`]), one JSON answer, as `ops::execute` gives it to the HTTP API.

use crate::admin::ops::{ApiError, Request};
use crate::config::Config;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Sends `request` to the running server; its answer, or why there is none (for
/// `tern: …` on standard error).
pub fn ask<T: DeserializeOwned>(config: &Config, request: &Request) -> Result<T, String> {
    use std::io::{BufRead, BufReader, Write};
    let path = config.data_dir.join(crate::server::control::SOCKET_NAME);
    let line = std::os::unix::net::UnixStream::connect(&path)
        .and_then(|mut s| {
            let json = serde_json::to_string(request).map_err(std::io::Error::other)?;
            s.write_all(format!("{json}\n").as_bytes())?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line)
        })
        .map_err(|e| unreachable(config, &path, &e))?;
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Answer<T> {
        Ok { ok: T },
        Err(ApiError),
    }
    match serde_json::from_str::<Answer<T>>(&line) {
        Ok(Answer::Ok { ok }) => Ok(ok),
        Ok(Answer::Err(e)) => Err(e.error),
        Err(e) => Err(format!("cannot understand the server's answer ({e}): {}", line.trim())),
    }
}

/// Why the control socket could not be reached: no socket, or one that nobody listens
/// on (left by a server that was killed), means no server runs.
fn unreachable(config: &Config, path: &Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match e.kind() {
        NotFound | ConnectionRefused => format!(
            "no tern server is running for data directory {} (nothing listens on {}); start it with `tern serve`",
            config.data_dir.display(),
            path.display()
        ),
        _ => format!("cannot reach the running server at {}: {e}", path.display()),
    }
}
