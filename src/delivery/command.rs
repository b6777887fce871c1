//! Delivery through a local delivery agent (`[local] delivery = "command"`), as
//! Postfix's `mailbox_command`: the program runs once per recipient, without a shell,
//! with the message on its standard input, and its exit status decides the result
//! (sysexits.h, see [`exit_meaning`]).
//!
//! The program gets a cleared environment with `PATH=/usr/bin:/bin` and the variables
//! Postfix's local(8) sets: `SENDER`, `RECIPIENT`, `USER`, `DOMAIN`, `EXTENSION`,
//! `ORIGINAL_RECIPIENT` (no `HOME`: Tern's mailboxes have none). It runs in a process group of its
//! own, so that everything it starts is killed with it when its time is up.

use super::{Delivered, Detail, Failure, Status};
use crate::spool::Content;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How much of the program's output (stdout and stderr together) is kept.
const OUTPUT_KEPT: usize = 4 << 10;

/// How much of that output goes into a notice's diagnostic.
const OUTPUT_IN_DETAIL: usize = 400;

/// How long, after the program exited, its output is still read (from what it left
/// running) before it is given up.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What one recipient's delivery fills in: `{sender}`, `{recipient}`, `{user}`,
/// `{domain}`, `{extension}`, `{original}`, `{id}`.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// The envelope sender, empty for `<>`.
    pub sender: String,
    /// The recipient after alias expansion: `user@domain`.
    pub recipient: String,
    /// The mailbox name (the local part without its subaddress).
    pub user: String,
    pub domain: String,
    /// The subaddress after the separator, empty when there is none.
    pub extension: String,
    /// The recipient as RCPT TO gave it.
    pub original: String,
    /// The queue id.
    pub id: String,
}

impl Vars {
    /// `arg` with every placeholder replaced by its value (no shell, no quoting).
    pub fn fill(&self, arg: &str) -> String {
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let value = tail.find('}').and_then(|end| Some((self.value(&tail[1..end])?, end)));
            match value {
                Some((value, end)) => {
                    out.push_str(value);
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push('{');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn value(&self, name: &str) -> Option<&str> {
        Some(match name {
            "sender" => &self.sender,
            "recipient" => &self.recipient,
            "user" => &self.user,
            "domain" => &self.domain,
            "extension" => &self.extension,
            "original" => &self.original,
            "id" => &self.id,
            _ => return None,
        })
    }

    /// The environment, as Postfix's local(8) sets it for a command.
    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PATH", "/usr/bin:/bin".into()),
            ("SENDER", self.sender.clone()),
            ("RECIPIENT", self.recipient.clone()),
            ("USER", self.user.clone()),
            ("DOMAIN", self.domain.clone()),
            ("EXTENSION", self.extension.clone()),
            ("ORIGINAL_RECIPIENT", self.original.clone()),
        ]
    }
}

/// The subaddress of the recipient as RCPT TO gave it (`news` of `alice+news@`): the
/// route to a mailbox drops it, and an alias passes it on, as Postfix's
/// `propagate_unmatched_extensions` does. Empty when there is none.
pub fn extension(original: &str, separator: &str) -> String {
    let Ok(mailbox) = crate::smtp::address::Mailbox::parse(original) else { return String::new() };
    match separator {
        "" => String::new(),
        sep => mailbox.local_unquoted().split_once(sep).map(|(_, ext)| ext.to_string()).unwrap_or_default(),
    }
}

/// Runs `argv` (placeholders filled from `vars`) with `header` and then `content` on
/// its standard input, line ends turned into LF as a local program expects, and
/// waits at most `timeout` for it (blocking).
pub fn deliver(
    argv: &[String],
    vars: &Vars,
    header: &str,
    content: &Content,
    timeout: Duration,
) -> Result<Delivered, Failure> {
    let program = argv.first().map(String::as_str).unwrap_or_default();
    // An address that starts with '-' would be read as an option (Postfix refuses
    // them too: allow_min_user = no).
    if let Some(bad) = [&vars.sender, &vars.recipient, &vars.original].into_iter().find(|a| a.starts_with('-')) {
        return Err(Failure::permanent(
            (5, 1, 3),
            format!("{bad}: an address starting with '-' is not given to a command"),
        ));
    }
    let mut child = match start(argv, vars) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(program, error = %e, "cannot start the delivery command");
            return Err(Failure::temporary((4, 3, 0), format!("cannot start {program}: {e} (configuration error)")));
        }
    };
    let pid = child.child.id() as libc::pid_t;
    let watchdog = Watchdog::start(pid, timeout);
    let written = child.child.stdin.take().map(|stdin| feed(stdin, header, content));
    let status = child.child.wait();
    let timed_out = watchdog.stop();
    let output = child.output.collect(Instant::now() + OUTPUT_GRACE, pid);
    let status = match status {
        Ok(status) => status,
        Err(e) => return Err(Failure::temporary((4, 3, 0), format!("cannot wait for {program}: {e}"))),
    };
    if let Some(Err(e)) = &written
        && status.success()
    {
        // It said yes without reading the message: Postfix takes it at its word too.
        tracing::debug!(program, error = %e, "delivery command did not read the whole message");
    }
    result(program, status, timed_out, timeout, &output)
}

/// The result of a program that ended with `status`, having said `output`.
fn result(
    program: &str,
    status: ExitStatus,
    timed_out: bool,
    timeout: Duration,
    output: &str,
) -> Result<Delivered, Failure> {
    let said = |text: String| match shorten(output) {
        s if s.is_empty() => text,
        s => format!("{text}: {s}"),
    };
    if timed_out {
        let text = format!("{program} killed after the time limit of {}", humantime::format_duration(timeout));
        return Err(Failure::temporary((4, 3, 0), said(text)));
    }
    if let Some(signal) = status.signal() {
        return Err(Failure::temporary((4, 3, 0), said(format!("{program} killed by signal {signal}"))));
    }
    let code = status.code().unwrap_or(-1);
    if code == 0 {
        let text = format!("delivered to command {program}");
        return Ok(Delivered { detail: Detail::new((2, 0, 0), said(text)), relayed: false, dsn_passed_on: false });
    }
    let (status, meaning) = exit_meaning(code);
    let detail = said(format!("{program} exited with {code} ({meaning})"));
    Err(Failure { temporary: status.0 == 4, detail: Detail::new(status, detail) })
}

/// What a delivery program's exit status means (sysexits.h), with the enhanced
/// status code a notice carries. Like Postfix's `sys_exits` table: EX_TEMPFAIL and
/// EX_OSERR are temporary, every other failure (an unknown status too) is permanent.
pub fn exit_meaning(code: i32) -> (Status, &'static str) {
    let (status, text) = match code {
        64 => ((5, 3, 0), "command line usage error"),
        65 => ((5, 6, 0), "data format error"),
        66 => ((5, 3, 0), "cannot open input"),
        67 => ((5, 1, 1), "user unknown"),
        68 => ((5, 1, 2), "host name unknown"),
        69 => ((5, 3, 0), "service unavailable"),
        70 => ((5, 3, 0), "internal software error"),
        71 => ((4, 3, 0), "system resource problem"),
        72 => ((5, 3, 0), "critical OS file missing"),
        73 => ((5, 2, 0), "cannot create user output file"),
        74 => ((5, 3, 0), "input/output error"),
        75 => ((4, 3, 0), "temporary failure"),
        76 => ((5, 5, 0), "remote error in protocol"),
        77 => ((5, 7, 0), "permission denied"),
        78 => ((5, 3, 5), "local configuration error"),
        _ => ((5, 3, 0), "unknown mail system error"),
    };
    (status.into(), text)
}

/// The program's output as one short line for a notice.
fn shorten(output: &str) -> String {
    let words: Vec<&str> =
        output.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect();
    let line = words.join(" ");
    match line.char_indices().nth(OUTPUT_IN_DETAIL) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line,
    }
}

/// A started program and the reader of its output.
struct Started {
    child: Child,
    output: Output,
}

fn start(argv: &[String], vars: &Vars) -> io::Result<Started> {
    let (reader, writer) = io::pipe()?;
    let mut cmd = Command::new(vars.fill(&argv[0]));
    cmd.args(argv[1..].iter().map(|a| vars.fill(a)))
        .env_clear()
        .envs(vars.environment())
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let child = cmd.spawn()?;
    // `cmd` holds the pipe's write end: it goes now, so that the reader sees the end
    // of the output when the program (and what it started) is gone.
    drop(cmd);
    Ok(Started { child, output: Output::read(reader) })
}

/// Writes the header and the content, CRLF turned into LF, a piece at a time.
fn feed(mut stdin: impl Write, header: &str, content: &Content) -> io::Result<()> {
    stdin.write_all(header.as_bytes())?;
    let mut lf = Lf::default();
    let mut out = Vec::new();
    content.for_each_piece(&mut Vec::new(), |piece| {
        out.clear();
        lf.convert(piece, &mut out);
        stdin.write_all(&out)
    })?;
    out.clear();
    lf.finish(&mut out);
    stdin.write_all(&out)?;
    stdin.flush()
}

/// CRLF → LF over pieces that may split a CRLF.
#[derive(Default)]
struct Lf {
    /// The last piece ended with a CR.
    cr: bool,
}

impl Lf {
    fn convert(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        out.reserve(piece.len() + 1);
        let mut rest = piece;
        if self.cr {
            self.cr = false;
            if rest.first() != Some(&b'\n') {
                out.push(b'\r');
            }
        }
        while let Some(i) = memchr::memchr(b'\r', rest) {
            out.extend_from_slice(&rest[..i]);
            match rest.get(i + 1) {
                Some(b'\n') => {}
                Some(_) => out.push(b'\r'),
                None => self.cr = true,
            }
            rest = &rest[i + 1..];
        }
        out.extend_from_slice(rest);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.cr) {
            out.push(b'\r');
        }
    }
}

/// Kills the program's process group when its time is up.
struct Watchdog {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<bool>,
}

impl Watchdog {
    fn start(group: libc::pid_t, timeout: Duration) -> Watchdog {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::spawn(move || match stopped.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_group(group);
                true
            }
            _ => false,
        });
        Watchdog { stop, thread }
    }

    /// Stops watching; true when the program was killed for taking too long.
    fn stop(self) -> bool {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or(false)
    }
}

fn kill_group(group: libc::pid_t) {
    // SAFETY: kill has no memory preconditions; a negative pid names the group.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

/// The program's output, read by a thread of its own: the first [`OUTPUT_KEPT`]
/// bytes are kept, the rest is read and dropped so that the program never blocks on
/// a full pipe.
struct Output {
    kept: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Output {
    fn read(mut reader: io::PipeReader) -> Output {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let into = kept.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut kept = into.lock().unwrap_or_else(|e| e.into_inner());
                        let room = OUTPUT_KEPT - kept.len();
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Output { kept, done }
    }

    /// The output once the pipe is closed, or at `until`: then what the program left
    /// running (holding the pipe open) is killed, and what was read so far is used.
    fn collect(self, until: Instant, group: libc::pid_t) -> String {
        if self.done.recv_timeout(until.saturating_duration_since(Instant::now())).is_err() {
            kill_group(group);
        }
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            sender: "s@remote.test".into(),
            recipient: "alice@a.test".into(),
            user: "alice".into(),
            domain: "a.test".into(),
            extension: "news".into(),
            original: "Alice+news@A.test".into(),
            id: "Q1".into(),
        }
    }

    #[test]
    fn placeholders_are_filled_per_argument() {
        let v = vars();
        assert_eq!(v.fill("-f{sender}"), "-fs@remote.test");
        assert_eq!(v.fill("{user}@{domain}+{extension}"), "alice@a.test+news");
        assert_eq!(v.fill("{original} {id} {recipient}"), "Alice+news@A.test Q1 alice@a.test");
        assert_eq!(v.fill("{unknown} {user"), "{unknown} {user");
        assert_eq!(Vars { sender: String::new(), ..vars() }.fill("{sender}"), "");
        let env = v.environment();
        assert!(env.contains(&("USER", "alice".into())));
        assert!(env.contains(&("EXTENSION", "news".into())));
    }

    #[test]
    fn extension_of_the_original_recipient() {
        assert_eq!(extension("alice+news@a.test", "+"), "news");
        assert_eq!(extension("alice+a+b@a.test", "+"), "a+b");
        assert_eq!(extension("alice@a.test", "+"), "");
        assert_eq!(extension("alice+news@a.test", ""), "");
    }

    #[test]
    fn crlf_becomes_lf_across_pieces() {
        let mut out = Vec::new();
        let mut lf = Lf::default();
        for piece in [&b"a\r\nb\r"[..], b"\nc\r", b"x\r\n\r", b""] {
            lf.convert(piece, &mut out);
        }
        lf.finish(&mut out);
        assert_eq!(out, b"a\nb\nc\rx\n\r");
    }

    #[test]
    fn sysexits_as_postfix_maps_them() {
        assert_eq!(exit_meaning(75).0, Status(4, 3, 0));
        assert_eq!(exit_meaning(71).0, Status(4, 3, 0));
        assert_eq!(exit_meaning(67).0, Status(5, 1, 1));
        assert_eq!(exit_meaning(77).0, Status(5, 7, 0));
        assert_eq!(exit_meaning(78).0, Status(5, 3, 5));
        assert_eq!(exit_meaning(1).0, Status(5, 3, 0));
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into(), "{user}".into()]
    }

    fn run(script: &str, timeout: Duration) -> Result<Delivered, Failure> {
        let content = Content::from(b"Subject: x\r\n\r\nhi\r\n".to_vec());
        deliver(&sh(script), &vars(), "Return-Path: <s@remote.test>\n", &content, timeout)
    }

    #[test]
    fn exit_status_decides() {
        let ok = run("cat >/dev/null; echo stored for $1", Duration::from_secs(30)).unwrap();
        assert_eq!(ok.detail.status, Status(2, 0, 0));
        assert!(ok.detail.text.contains("stored for alice"), "{}", ok.detail);
        let no = run("echo no such user $USER >&2; exit 67", Duration::from_secs(30)).unwrap_err();
        assert!(!no.temporary);
        assert_eq!(no.detail.status, Status(5, 1, 1));
        assert!(no.detail.text.contains("no such user alice"), "{}", no.detail);
        let later = run("exit 75", Duration::from_secs(30)).unwrap_err();
        assert!(later.temporary, "{}", later.detail);
        let killed = run("kill -9 $$", Duration::from_secs(30)).unwrap_err();
        assert!(killed.temporary && killed.detail.text.contains("signal 9"), "{}", killed.detail);
    }

    #[test]
    fn the_message_arrives_with_lf() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m");
        run(&format!("cat > {}", out.display()), Duration::from_secs(30)).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"Return-Path: <s@remote.test>\nSubject: x\n\nhi\n");
    }

    #[test]
    fn hanging_programs_are_killed_with_what_they_started() {
        let started = Instant::now();
        let f = run("sleep 60 & sleep 60; exit 0", Duration::from_millis(300)).unwrap_err();
        assert!(f.temporary && f.detail.text.contains("time limit"), "{}", f.detail);
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    }

    #[test]
    fn addresses_that_look_like_options_are_refused() {
        let content = Content::from(Vec::new());
        let argv = vec!["/bin/true".to_string(), "{user}".to_string()];
        let v = Vars { recipient: "-oQ@a.test".into(), user: "-oQ".into(), ..vars() };
        let f = deliver(&argv, &v, "", &content, Duration::from_secs(5)).unwrap_err();
        assert!(!f.temporary && f.detail.status == Status(5, 1, 3), "{}", f.detail);
        let v = Vars { sender: "-f@remote.test".into(), ..vars() };
        assert!(deliver(&argv, &v, "", &content, Duration::from_secs(5)).is_err());
    }

    #[test]
    fn a_missing_program_is_a_temporary_failure() {
        let argv = vec!["/nonexistent/mda".to_string()];
        let f = deliver(&argv, &vars(), "", &Content::from(Vec::new()), Duration::from_secs(5)).unwrap_err();
        assert!(f.temporary);
        assert_eq!(f.detail.status, Status(4, 3, 0));
        assert!(f.detail.text.contains("configuration error"), "{}", f.detail);
    }
}
