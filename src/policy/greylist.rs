//! Greylisting: the first delivery attempt of an unknown (client network, sender,
//! recipient) triplet is deferred with 451 4.7.1; a well-behaved server retries
//! (RFC 5321 §4.5.4.1) and, once `delay` has passed, gets through. A passed triplet
//! is then let through at once for `expire` after it was last seen.
//!
//! The state lives in memory and in `<data_dir>/greylist`, an append-only file of
//! lines `<unix time in ms> <grey|pass> <key>`, where the key is the hex SHA-256 of
//! the triplet (so no address can break the format, and none is kept in clear).
//! `grey` lines carry the time the triplet was first seen, `pass` lines the time it
//! was last seen. On loading the last line of a key wins and expired entries are
//! dropped; the file is rewritten compactly (temporary file, fsync, rename) at start
//! and whenever it holds more than four lines per live entry. Trouble writing the
//! file is logged and never refuses mail.

use crate::config::Greylisting;
use crate::smtp::address::Mailbox;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// SHA-256 of a triplet.
pub type Key = [u8; 32];

/// The file is rewritten when it holds more than this many lines per live entry…
const COMPACT_FACTOR: usize = 4;
/// …counting at least this many entries, so that a small table is not rewritten often.
const COMPACT_FLOOR: usize = 64;
/// Expired entries are swept from memory at most this often (ms).
const SWEEP_INTERVAL: u64 = 60_000;
/// A passed triplet's last-seen time is written at most this often (ms): in memory
/// it is always exact; after a restart it may be this much older.
const REFRESH_WRITE: u64 = 3_600_000;

/// The decision on one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Deferred: the client may retry after this long.
    Defer(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// First seen (not yet passed) or last seen (passed), unix ms.
    time: u64,
    passed: bool,
    /// The time last written to the file for this entry.
    written: u64,
}

struct State {
    entries: HashMap<Key, Entry>,
    /// Append handle; reopened after a failure.
    file: Option<File>,
    /// Lines in the file.
    lines: usize,
    /// Last sweep of expired entries (unix ms).
    swept: u64,
}

pub struct Greylist {
    delay: u64,
    retry_window: u64,
    expire: u64,
    path: PathBuf,
    compact_floor: usize,
    state: Mutex<State>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(ms).unwrap_or(0)
}

/// The client's network: its /24 for IPv4, its /64 for IPv6 (a sending cluster or a
/// host with privacy addresses retries from a neighbouring address).
pub fn network(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
    }
}

/// The key of a triplet: SHA-256 of network, sender and recipient (lower-cased),
/// separated by line feeds, which no address in an SMTP command can contain.
pub fn triplet_key(client: IpAddr, sender: &str, recipient: &str) -> Key {
    let text = format!("{}\n{}\n{}", network(client), sender.to_lowercase(), recipient.to_lowercase());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Key> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

fn line(key: &Key, entry: &Entry) -> String {
    format!("{} {} {}\n", entry.time, if entry.passed { "pass" } else { "grey" }, hex(key))
}

/// One line of the file, or `None` if it is damaged.
fn parse_line(text: &str) -> Option<(Key, Entry)> {
    let mut parts = text.split(' ');
    let time: u64 = parts.next()?.parse().ok()?;
    let passed = match parts.next()? {
        "pass" => true,
        "grey" => false,
        _ => return None,
    };
    let key = unhex(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some((key, Entry { time, passed, written: time }))
}

impl Greylist {
    /// Loads the state from `path` (a missing file is an empty table) and rewrites
    /// it compactly. Never fails: trouble is logged and the table starts empty.
    pub fn open(path: PathBuf, config: &Greylisting) -> Greylist {
        Greylist::open_at(path, config, now_ms())
    }

    fn open_at(path: PathBuf, config: &Greylisting, now: u64) -> Greylist {
        let list = Greylist {
            delay: ms(config.delay),
            retry_window: ms(config.retry_window),
            expire: ms(config.expire),
            compact_floor: COMPACT_FLOOR,
            state: Mutex::new(State { entries: HashMap::new(), file: None, lines: 0, swept: now }),
            path,
        };
        let (entries, damaged) = match load(&list.path) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(path = %list.path.display(), error = %e, "cannot read the greylist; starting empty");
                (HashMap::new(), 0)
            }
        };
        if damaged > 0 {
            tracing::warn!(path = %list.path.display(), lines = damaged, "damaged greylist lines ignored");
        }
        {
            let mut state = list.state.lock().unwrap_or_else(|e| e.into_inner());
            state.entries = entries;
            list.sweep(&mut state, now);
            list.compact(&mut state);
            tracing::info!(path = %list.path.display(), triplets = state.entries.len(), "greylist loaded");
        }
        list
    }

    /// The decision for a recipient of a transaction from `client` with reverse-path
    /// `from` (`None`: the null sender).
    pub fn check(&self, client: IpAddr, from: Option<&Mailbox>, to: &Mailbox) -> Verdict {
        let sender = from.map(Mailbox::to_string).unwrap_or_default();
        self.check_at(triplet_key(client, &sender, &to.to_string()), now_ms())
    }

    fn check_at(&self, key: Key, now: u64) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_sub(state.swept) >= SWEEP_INTERVAL {
            self.sweep(&mut state, now);
        }
        let known = state.entries.get(&key).copied().filter(|e| !self.expired(e, now));
        let mut entry = known.unwrap_or(Entry { time: now, passed: false, written: 0 });
        let verdict = if entry.passed {
            entry.time = entry.time.max(now);
            Verdict::Pass
        } else {
            let elapsed = now.saturating_sub(entry.time);
            if elapsed >= self.delay {
                entry = Entry { time: now, passed: true, written: 0 };
                Verdict::Pass
            } else {
                Verdict::Defer(Duration::from_millis(self.delay - elapsed))
            }
        };
        let refresh = entry.passed && now.saturating_sub(entry.written) >= REFRESH_WRITE.min(self.expire / 4);
        let write = entry.written == 0 || refresh;
        if write {
            entry.written = now.max(1);
            self.append(&mut state, &line(&key, &entry));
        }
        state.entries.insert(key, entry);
        if state.lines > COMPACT_FACTOR * state.entries.len().max(self.compact_floor) {
            self.sweep(&mut state, now);
            self.compact(&mut state);
        }
        verdict
    }

    fn expired(&self, e: &Entry, now: u64) -> bool {
        let age = now.saturating_sub(e.time);
        if e.passed { age > self.expire } else { age > self.retry_window }
    }

    fn sweep(&self, state: &mut State, now: u64) {
        state.entries.retain(|_, e| !self.expired(e, now));
        state.swept = now;
    }

    fn append(&self, state: &mut State, text: &str) {
        if state.file.is_none() {
            match OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path) {
                Ok(f) => state.file = Some(f),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open the greylist for writing");
                    return;
                }
            }
        }
        if let Some(f) = state.file.as_mut() {
            match f.write_all(text.as_bytes()) {
                Ok(()) => state.lines += 1,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write the greylist");
                    state.file = None;
                }
            }
        }
    }

    /// Rewrites the file with one line per live entry.
    fn compact(&self, state: &mut State) {
        let mut text = String::with_capacity(state.entries.len() * 90);
        for (key, entry) in state.entries.iter_mut() {
            entry.written = entry.time.max(1);
            text.push_str(&line(key, entry));
        }
        match replace_file(&self.path, text.as_bytes()) {
            Ok(file) => {
                state.file = Some(file);
                state.lines = state.entries.len();
            }
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot rewrite the greylist"),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }

    #[cfg(test)]
    fn lines(&self) -> usize {
        self.state.lock().unwrap().lines
    }
}

/// The entries of the file (last line per key wins) and the number of damaged lines.
fn load(path: &Path) -> std::io::Result<(HashMap<Key, Entry>, usize)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((HashMap::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut entries = HashMap::new();
    let mut damaged = 0;
    for text in BufReader::new(file).split(b'\n') {
        let text = text?;
        // A line cut short by a crash, or anything else unreadable, is skipped.
        match std::str::from_utf8(&text).ok().and_then(parse_line) {
            Some((key, entry)) => {
                entries.insert(key, entry);
            }
            None if text.is_empty() => {}
            None => damaged += 1,
        }
    }
    Ok((entries, damaged))
}

/// Replaces `path` with `content` atomically (temporary file, fsync, rename, fsync
/// of the directory); returns the new file opened for appending.
fn replace_file(path: &Path, content: &[u8]) -> std::io::Result<File> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::files::create_dir_all(dir, crate::files::Access::PRIVATE)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = crate::files::create_file(&tmp, crate::files::Access::PRIVATE, false)?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1000;
    const T0: u64 = 1_700_000_000_000;

    fn config() -> Greylisting {
        Greylisting {
            enabled: true,
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(3600),
            expire: Duration::from_secs(86400),
        }
    }

    fn key(n: u8) -> Key {
        triplet_key(IpAddr::from([192, 0, 2, n]), &format!("s{n}@a.test"), "r@b.test")
    }

    fn open(dir: &Path, now: u64) -> Greylist {
        Greylist::open_at(dir.join("greylist"), &config(), now)
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(network("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(network("::ffff:192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(network("2001:db8:1:2:3:4:5:6".parse().unwrap()), "2001:db8:1:2::/64");
    }

    #[test]
    fn keys_ignore_case_and_the_host_within_the_network() {
        let a = triplet_key("192.0.2.1".parse().unwrap(), "Alice@Example.TEST", "Bob@x.test");
        let b = triplet_key("192.0.2.200".parse().unwrap(), "alice@example.test", "bob@X.TEST");
        assert_eq!(a, b);
        assert_ne!(a, triplet_key("192.0.3.1".parse().unwrap(), "alice@example.test", "bob@x.test"));
        assert_ne!(a, triplet_key("192.0.2.1".parse().unwrap(), "", "bob@x.test"));
        // Fields cannot run into each other.
        assert_ne!(
            triplet_key("192.0.2.1".parse().unwrap(), "a", "b@x"),
            triplet_key("192.0.2.1".parse().unwrap(), "a\nb", "@x")
        );
        assert_eq!(unhex(&hex(&a)), Some(a));
        assert_eq!(hex(&a).len(), 64);
    }

    #[test]
    fn damaged_lines_are_refused() {
        let k = hex(&key(1));
        assert!(parse_line(&format!("12 pass {k}")).is_some());
        for bad in [
            format!("12 pass {}", &k[..63]),
            format!("x pass {k}"),
            format!("12 white {k}"),
            format!("12 pass {k} extra"),
            format!("12 pass {}zz", &k[..62]),
            String::new(),
        ] {
            assert!(parse_line(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_triplet_passes_only_after_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let g = open(dir.path(), T0);
        let k = key(1);
        assert_eq!(g.check_at(k, T0), Verdict::Defer(Duration::from_secs(300)));
        assert_eq!(g.check_at(k, T0 + 100 * SEC), Verdict::Defer(Duration::from_secs(200)));
        assert_eq!(g.check_at(k, T0 + 299 * SEC), Verdict::Defer(Duration::from_secs(1)));
        assert_eq!(g.check_at(k, T0 + 300 * SEC), Verdict::Pass);
        // Passed: at once from now on, and each use keeps it alive.
        assert_eq!(g.check_at(k, T0 + 301 * SEC), Verdict::Pass);
        assert_eq!(g.check_at(k, T0 + 80_000 * SEC), Verdict::Pass);
        assert_eq!(g.check_at(k, T0 + 160_000 * SEC), Verdict::Pass);
        // Unused for longer than `expire`: greylisted again.
        assert_eq!(g.check_at(k, T0 + 250_000 * SEC), Verdict::Defer(Duration::from_secs(300)));
        // Other triplets are independent.
        assert_eq!(g.check_at(key(2), T0 + 250_000 * SEC), Verdict::Defer(Duration::from_secs(300)));
    }

    #[test]
    fn a_retry_after_the_window_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let g = open(dir.path(), T0);
        let k = key(1);
        assert!(matches!(g.check_at(k, T0), Verdict::Defer(_)));
        assert_eq!(g.check_at(k, T0 + 3601 * SEC), Verdict::Defer(Duration::from_secs(300)));
        assert_eq!(g.check_at(k, T0 + 3700 * SEC), Verdict::Defer(Duration::from_secs(201)));
        assert_eq!(g.check_at(k, T0 + 3901 * SEC), Verdict::Pass);
    }

    #[test]
    fn the_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let g = open(dir.path(), T0);
            g.check_at(key(1), T0);
            g.check_at(key(1), T0 + 300 * SEC);
            g.check_at(key(2), T0 + 10 * SEC);
            g.check_at(key(3), T0);
        }
        let g = open(dir.path(), T0 + 400 * SEC);
        assert_eq!(g.len(), 3);
        assert_eq!(g.check_at(key(1), T0 + 400 * SEC), Verdict::Pass, "passed triplet remembered");
        assert_eq!(g.check_at(key(2), T0 + 200 * SEC), Verdict::Defer(Duration::from_secs(110)), "first-seen kept");
        assert_eq!(g.check_at(key(3), T0 + 400 * SEC), Verdict::Pass, "a waiting triplet may pass after restart");
        drop(g);
        // Loaded long after: unpassed triplets are gone after `retry_window`, passed
        // ones after `expire`.
        let g = open(dir.path(), T0 + 7200 * SEC);
        assert_eq!(g.len(), 2, "triplet 2 was not retried within the window");
        g.check_at(key(4), T0 + 7200 * SEC);
        assert_eq!(g.len(), 3);
        drop(g);
        let g = open(dir.path(), T0 + 7200 * SEC + 3601 * SEC);
        assert_eq!(g.len(), 2, "the unpassed triplet 4 expired");
        drop(g);
        let g = open(dir.path(), T0 + 100_000 * SEC);
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn loading_keeps_the_last_line_and_skips_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("greylist");
        let (k1, k2) = (hex(&key(1)), hex(&key(2)));
        let text = format!(
            "{} grey {k1}\n{} pass {k1}\nnot a line\n{} grey {k2}\n{} pass {}",
            T0,
            T0 + 300 * SEC,
            T0,
            T0,
            &k2[..20]
        );
        fs::write(&path, text).unwrap();
        let g = open(dir.path(), T0 + 301 * SEC);
        assert_eq!(g.len(), 2);
        assert_eq!(g.check_at(key(1), T0 + 301 * SEC), Verdict::Pass);
        assert_eq!(g.check_at(key(2), T0 + 200 * SEC), Verdict::Defer(Duration::from_secs(100)));
        // Rewritten at start: one line per entry (plus the refresh written since).
        let written = fs::read_to_string(&path).unwrap();
        assert!(written.lines().all(|l| parse_line(l).is_some()), "{written}");
        assert!(!dir.path().join("greylist.tmp").exists());
    }

    #[test]
    fn the_file_is_compacted_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = open(dir.path(), T0);
        g.compact_floor = 2;
        let k = key(1);
        let mut now = T0;
        g.check_at(k, now);
        now += 300 * SEC;
        g.check_at(k, now);
        assert_eq!(g.lines(), 2);
        // Each refresh an hour apart writes a line; at more than 4 × 2 lines the file
        // is rewritten with one line per entry.
        let mut most = 0;
        for _ in 0..20 {
            now += 3600 * SEC;
            assert_eq!(g.check_at(k, now), Verdict::Pass);
            most = most.max(g.lines());
        }
        assert!(most <= 8, "{most} lines");
        let text = fs::read_to_string(dir.path().join("greylist")).unwrap();
        assert_eq!(text.lines().count(), g.lines());
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(dir.path().join("greylist")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the rewritten file is owner-only");
        assert!(text.lines().count() < 9, "{text}");
        drop(g);
        let g = open(dir.path(), now);
        assert_eq!(g.check_at(k, now + SEC), Verdict::Pass);
    }

    #[test]
    fn a_write_failure_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        // The path is a directory: nothing can be written, yet decisions are made.
        let path = dir.path().join("greylist");
        fs::create_dir(&path).unwrap();
        let g = Greylist::open_at(path, &config(), T0);
        assert!(matches!(g.check_at(key(1), T0), Verdict::Defer(_)));
        assert_eq!(g.check_at(key(1), T0 + 300 * SEC), Verdict::Pass);
    }
}
