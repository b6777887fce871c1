//! Harness for Tern's end-to-end tests: runs the real `tern` binary on a
//! loopback port with a private data directory, and drives it with real
//! clients (swaks, Python's smtplib, curl, msmtp, Postfix's smtp-source).
//!
//! Every wait here is bounded in time; every process started here is ended
//! when its owner is dropped.
#![allow(dead_code)]

pub mod auth_results;
pub mod cluster;
pub mod counting_sink;
pub mod dkim;
pub mod outbound;
pub mod pki;
pub mod postgres;
pub mod reports;
pub mod security;
pub mod service;
pub mod spf;
pub mod sts;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Path of the `tern` binary under test.
pub const TERN_BIN: &str = env!("CARGO_BIN_EXE_tern");

/// The hostname written into every test config.
pub const HOSTNAME: &str = "tern.test";

/// Local delivery like the embedded defaults: every address of `localhost`
/// gets its own Maildir.
pub const LOCAL_OPEN: &str = r#"
[local]
domains = ["localhost"]
accept_unknown = true
"#;

/// Keeps every test on loopback: DNS questions (for bounces to remote
/// senders, say) go to a loopback port where nothing answers, and so would
/// any outbound SMTP connection. Loopback next hops are allowed so that
/// `[relay.routes]` can point at a second Tern on 127.0.0.1.
pub fn loopback_only(dead_port: u16) -> String {
    format!(
        "\n[dns]\nnameservers = [\"127.0.0.1:{dead_port}\"]\n\n\
         [outbound]\nport = {dead_port}\nconnect_timeout = \"2s\"\ngreeting_timeout = \"2s\"\nallow_loopback_mx = true\n"
    )
}

/// The admin listener on a port the system picks (see `Tern::admin_url`).
pub const ADMIN_ANY_PORT: &str = "\n[admin]\nlisten = \"127.0.0.1:0\"\n";

/// Clients on loopback may relay by default; this makes them strangers, as
/// on a public port 25.
pub const NO_RELAY: &str = "\n[relay]\nnetworks = []\n";

/// Mail from strangers is checked for SPF, DKIM and DMARC, which needs DNS; tests
/// about other things turn the checks off (tests/mail_auth.rs and tests/dkim.rs
/// test them with a DNS server).
pub const NO_AUTH_CHECKS: &str = "\n[auth_checks]\nenabled = false\n";

/// How long `Tern::start` waits for the 220 greeting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Default bound for external client commands.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Output of one finished (or timed-out) command.
#[derive(Debug)]
pub struct Out {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Out {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// stdout and stderr together, for searching and for failure messages.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.success(),
            "{what} failed (status {:?}, timed out: {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.timed_out,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `cmd` with `stdin` fed to it, bounded by `timeout` (the process is
/// killed when the time is up).
pub fn run_with_input(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Out {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    };
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Err(_) => break None,
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Out { status, stdout, stderr, timed_out }
}

pub fn run(cmd: Command, timeout: Duration) -> Out {
    run_with_input(cmd, None, timeout)
}

/// True when `prog` can be found on PATH (or is an existing path).
pub fn have_program(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(prog).is_file()))
        .unwrap_or(false)
}

/// Picks a loopback port that is free right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A running (or stopped) Tern server with its own port and data directory.
pub struct Tern {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    /// The umask `tern` runs under (the server and `tern_cmd`); None keeps the test's.
    pub umask: Option<u32>,
    /// Environment variables for the server process.
    env: Vec<(String, String)>,
    /// A loopback port nothing listens on (DNS and outbound SMTP go there).
    dead_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Tern {
    /// Starts Tern with `[[listen]]` on a fresh loopback port, a fresh
    /// data_dir, and `toml_extra` appended to the config.
    pub fn start(toml_extra: &str) -> Tern {
        Tern::start_with_args(toml_extra, &[])
    }

    /// Like `start`, with extra command-line arguments for `tern serve`.
    pub fn start_with_args(toml_extra: &str, args: &[&str]) -> Tern {
        let mut t = Tern::new_stopped(toml_extra, args);
        t.start_again();
        t
    }

    /// Writes the config but does not start the server.
    pub fn new_stopped(toml_extra: &str, args: &[&str]) -> Tern {
        let dir = tempfile::Builder::new().prefix("tern-e2e-").tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("tern.toml");
        let mut t = Tern {
            dir,
            port: 0,
            config_path,
            data_dir,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            umask: None,
            env: Vec::new(),
            dead_port: free_port(),
            child: None,
            starts: 0,
        };
        t.port = free_port();
        for _ in 0..10 {
            if t.dead_port != t.port {
                break;
            }
            t.dead_port = free_port();
        }
        t.write_config(toml_extra);
        t
    }

    fn write_config(&self, toml_extra: &str) {
        // Many servers run at once: each admin listener takes a port of its own, which
        // `admin_url` reads from the start-up line.
        let admin = if toml_extra.contains("[admin]") { "" } else { ADMIN_ANY_PORT };
        // Keys of an `[outbound]` in `toml_extra` join the loopback-only section.
        let (mut outbound, mut rest) = (loopback_only(self.dead_port), toml_extra.to_string());
        if let Some((before, after)) = toml_extra.split_once("\n[outbound]\n") {
            let end = after.find("\n[").map_or(after.len(), |i| i + 1);
            outbound.push_str(&after[..end]);
            rest = format!("{before}\n{}", &after[end..]);
        }
        let config = format!(
            "hostname = \"{HOSTNAME}\"\ndata_dir = \"{}\"\n\n[[listen]]\naddr = \"127.0.0.1:{}\"\nmode = \"smtp\"\n{outbound}\n{rest}\n{admin}",
            self.data_dir.display(),
            self.port,
        );
        fs::write(&self.config_path, config).expect("write config");
        fs::write(self.dir.path().join("extra.toml"), toml_extra).expect("write extra");
    }

    /// Sets an environment variable for the server's next start.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<data_dir>/mail` (the default mail_root).
    pub fn mail_root(&self) -> PathBuf {
        self.data_dir.join("mail")
    }

    /// `<mail_root>/<domain>/<user>`.
    pub fn maildir(&self, domain: &str, user: &str) -> PathBuf {
        self.mail_root().join(domain).join(user)
    }

    pub fn stdout_log(&self) -> PathBuf {
        self.dir.path().join("tern.stdout.log")
    }

    pub fn stderr_log(&self) -> PathBuf {
        self.dir.path().join("tern.stderr.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the server (again) with the same config and port, and waits
    /// for its 220 greeting. On a first start only, a port lost to another
    /// process between picking and binding is replaced by a new one.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "tern is already running");
        let attempts = if self.starts == 0 { 3 } else { 1 };
        let mut last_err = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                self.port = free_port();
                let extra = fs::read_to_string(self.dir.path().join("extra.toml")).expect("read extra.toml");
                self.write_config(&extra);
            }
            match self.spawn_and_wait() {
                Ok(()) => {
                    self.starts += 1;
                    return;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("tern did not start: {last_err}\n{}", self.logs());
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let open_log = |p: PathBuf| fs::OpenOptions::new().create(true).append(true).open(p).expect("open log file");
        let mut cmd = Command::new(TERN_BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(open_log(self.stdout_log()))
            .stderr(open_log(self.stderr_log()));
        with_umask(&mut cmd, self.umask);
        let child = cmd.spawn().map_err(|e| format!("spawn {TERN_BIN}: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("tern exited during start-up with {status}"));
            }
            if let Some(greeting) = try_greeting(self.port) {
                if greeting.starts_with("220") {
                    return Ok(());
                }
                self.stop_kill();
                return Err(format!("unexpected greeting {greeting:?}"));
            }
            if Instant::now() > deadline {
                self.stop_kill();
                return Err(format!("no 220 greeting on 127.0.0.1:{} within {START_TIMEOUT:?}", self.port));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        self.stop_kill();
    }

    fn stop_kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded by `timeout`) for the exit.
    /// Returns None (after a SIGKILL) if the server did not stop in time.
    pub fn sigterm_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.send_sigterm();
        self.wait_exit(timeout)
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn send_sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Waits (bounded) for the server to exit; SIGKILL and None on time-out.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// SIGTERM with a 15 s bound.
    pub fn sigterm(&mut self) -> Option<ExitStatus> {
        self.sigterm_within(Duration::from_secs(15))
    }

    /// Stops the server (SIGTERM, SIGKILL if it does not stop) and starts it again.
    pub fn restart(&mut self) {
        if self.child.is_some() && self.sigterm().is_none() {
            eprintln!("tern did not stop on SIGTERM within 15 s; it was killed");
        }
        self.start_again();
    }

    /// The server's stdout and stderr so far.
    pub fn logs(&self) -> String {
        let read = |p: PathBuf| fs::read(&p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let mut err = read(self.stderr_log());
        const MAX: usize = 20_000;
        if err.len() > MAX {
            let mut cut = err.len() - MAX;
            while !err.is_char_boundary(cut) {
                cut += 1;
            }
            err = format!("[... {cut} bytes cut ...]\n{}", &err[cut..]);
        }
        format!(
            "--- tern stdout ({}) ---\n{}--- tern stderr ({}) ---\n{}--- end of tern logs ---",
            self.stdout_log().display(),
            read(self.stdout_log()),
            self.stderr_log().display(),
            err
        )
    }

    /// Prints the server's logs to stderr (shown by the test runner on failure).
    pub fn dump_logs(&self) {
        eprintln!("{}", self.logs());
    }

    /// `tern ARGS --config FILE`, bounded.
    pub fn tern_cmd(&self, args: &[&str]) -> Out {
        self.tern_cmd_with_input(args, None)
    }

    /// `tern ARGS --config FILE` with `stdin` fed to it, bounded.
    pub fn tern_cmd_with_input(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let mut cmd = Command::new(TERN_BIN);
        cmd.args(args).arg("--config").arg(&self.config_path).current_dir(self.dir.path());
        with_umask(&mut cmd, self.umask);
        run_with_input(cmd, stdin, CLIENT_TIMEOUT)
    }

    pub fn queue_list(&self) -> Out {
        self.tern_cmd(&["queue", "list"])
    }

    /// swaks against this server; `args` come after the connection options.
    pub fn swaks(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--timeout", "20"])
            .args(args)
            .current_dir(self.dir.path());
        run(cmd, CLIENT_TIMEOUT)
    }

    /// Runs a Python 3 script (given on stdin). The script finds the port in
    /// the environment as TERN_PORT and a scratch directory as TERN_DIR.
    pub fn python(&self, script: &str) -> Out {
        self.python_within(script, CLIENT_TIMEOUT)
    }

    pub fn python_within(&self, script: &str, timeout: Duration) -> Out {
        let mut cmd = Command::new("python3");
        cmd.arg("-")
            .env("TERN_PORT", self.port.to_string())
            .env("TERN_DIR", self.dir.path())
            .env("PYTHONIOENCODING", "utf-8")
            .current_dir(self.dir.path());
        run_with_input(cmd, Some(script.as_bytes()), timeout)
    }

    /// curl with a time limit; `args` follow `-sS --max-time 20`.
    pub fn curl(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20"]).args(args).current_dir(self.dir.path());
        run(cmd, CLIENT_TIMEOUT)
    }

    /// `smtp://127.0.0.1:PORT`
    pub fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Files in `<maildir>/new`, sorted by name.
    pub fn new_files(&self, domain: &str, user: &str) -> Vec<PathBuf> {
        list_files(&self.maildir(domain, user).join("new"))
    }

    /// Waits (bounded by `timeout`) until `<maildir>/new` holds at least `n`
    /// files; see `wait_files_within`.
    #[track_caller]
    pub fn wait_mail_within(&self, domain: &str, user: &str, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        self.wait_files_within(&self.maildir(domain, user).join("new"), n, timeout)
    }

    /// Waits (bounded by `timeout`) until `dir` holds at least `n` files,
    /// then a little longer to catch extra deliveries, and returns the
    /// contents of all files there. Panics with the logs on time-out.
    #[track_caller]
    pub fn wait_files_within(&self, dir: &Path, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let files = list_files(dir);
            if files.len() >= n {
                thread::sleep(Duration::from_millis(300));
                return list_files(dir).iter().map(|p| fs::read(p).expect("read mail file")).collect();
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} message(s) in {}, found {} after {timeout:?}\nall delivered: {:?}\nqueue list:\n{}\n{}",
                    dir.display(),
                    files.len(),
                    self.all_delivered(),
                    self.queue_list().all(),
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `wait_mail_within` with a 15 s bound.
    #[track_caller]
    pub fn wait_mail(&self, domain: &str, user: &str, n: usize) -> Vec<Vec<u8>> {
        self.wait_mail_within(domain, user, n, Duration::from_secs(15))
    }

    /// Waits for exactly one message and returns it.
    #[track_caller]
    pub fn wait_one(&self, domain: &str, user: &str) -> Vec<u8> {
        let mut mails = self.wait_mail(domain, user, 1);
        assert_eq!(mails.len(), 1, "expected exactly one message for {user}@{domain}");
        mails.pop().unwrap()
    }

    /// Number of messages for a mailbox after a short settle time.
    pub fn settled_count(&self, domain: &str, user: &str) -> usize {
        thread::sleep(Duration::from_millis(500));
        self.new_files(domain, user).len()
    }

    /// Every file under mail_root (recursively), for "nothing was delivered".
    pub fn all_delivered(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.mail_root(), &mut out, 0);
        out.retain(|p| p.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "new" || n == "cur"));
        out
    }

    /// The sizes of the files Tern has open in its spill directory `<data_dir>/tmp`
    /// (the content of messages being received, in files without names; emptied ones
    /// are kept open for later messages).
    pub fn spill_files(&self) -> Vec<u64> {
        let Some(pid) = self.pid() else { return Vec::new() };
        let dir = self.data_dir.join("tmp");
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
        fds.flatten()
            .filter(|fd| fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(&dir)))
            .filter_map(|fd| fs::metadata(fd.path()).ok().map(|m| m.len()))
            .collect()
    }

    /// Bytes held in spill files: message content not yet stored or dropped.
    pub fn spilled(&self) -> u64 {
        self.spill_files().iter().sum()
    }

    /// `http://127.0.0.1:PORT` of the running server's admin listener, from its
    /// start-up line (the newest one in the stdout log).
    #[track_caller]
    pub fn admin_url(&self) -> String {
        let out = fs::read_to_string(self.stdout_log()).unwrap_or_default();
        let at = out.rfind("admin API on http://").unwrap_or_else(|| panic!("no admin listener in:\n{out}"));
        let url = &out[at + "admin API on ".len()..];
        url.split(|c: char| c.is_whitespace() || c == ';').next().unwrap_or_default().to_string()
    }

    /// The admin API's bearer token (`<data_dir>/admin.token`, made at first start).
    pub fn admin_token(&self) -> String {
        fs::read_to_string(self.data_dir.join("admin.token")).expect("read admin.token").trim().to_string()
    }

    /// Opens a raw SMTP connection and reads the greeting.
    pub fn raw(&self) -> Raw {
        let mut r = Raw::connect(self.port);
        let g = r.reply();
        assert_eq!(g.code, 220, "greeting: {g:?}");
        r
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let failing = thread::panicking();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if failing {
            // Keep the data directory of a failed test for inspection.
            self.dir.disable_cleanup(true);
            eprintln!("tern test directory kept: {}", self.path().display());
            self.dump_logs();
        }
    }
}

/// Makes `cmd` run under `umask`, if one is given.
fn with_umask(cmd: &mut Command, umask: Option<u32>) {
    use std::os::unix::process::CommandExt;
    if let Some(mask) = umask {
        // SAFETY: umask is async-signal-safe and changes only the child's own mask.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
}

fn try_greeting(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !got.contains(&b'\n') && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.write_all(b"QUIT\r\n");
    let _ = s.shutdown(Shutdown::Write);
    if got.is_empty() { None } else { Some(String::from_utf8_lossy(&got).into_owned()) }
}

pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Every file below `dir`, at most eight levels down.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 8 {
        return;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out, depth + 1);
            } else {
                out.push(p);
            }
        }
    }
}

/// Splits a stored message at the first empty line: (header block, body).
pub fn split_message(msg: &[u8]) -> (&[u8], &[u8]) {
    match find(msg, b"\r\n\r\n") {
        Some(i) => (&msg[..i + 2], &msg[i + 4..]),
        None => (msg, &[]),
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Checks the envelope headers Tern prepends and that the message as sent
/// follows them exactly. Returns the prepended header block.
#[track_caller]
pub fn assert_delivered(stored: &[u8], sender: &str, sent: &[u8]) -> String {
    let rp = format!("Return-Path: <{sender}>\r\n");
    assert!(stored.starts_with(rp.as_bytes()), "stored message does not start with {rp:?}:\n{}", show(stored));
    assert!(
        stored.ends_with(sent),
        "stored message does not end with the message as sent\n--- sent ---\n{}\n--- stored ---\n{}",
        show(sent),
        show(stored)
    );
    let prepended = &stored[..stored.len() - sent.len()];
    let text = String::from_utf8_lossy(prepended).into_owned();
    assert!(
        text.contains("\r\nReceived: ") || text.starts_with("Received: "),
        "no Received: header prepended:\n{text}"
    );
    text
}

/// A printable excerpt of bytes for assertion messages.
pub fn show(b: &[u8]) -> String {
    const MAX: usize = 4000;
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX)]);
    let s = s.replace('\r', "\\r");
    if b.len() > MAX { format!("{s}[... {} more bytes]", b.len() - MAX) } else { s }
}

/// The queue id from a `250 2.0.0 Ok: queued as <ID>` reply.
pub fn queue_id(reply: &str) -> Option<String> {
    let i = reply.find("queued as ")?;
    let id: String = reply[i + 10..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    if id.is_empty() { None } else { Some(id) }
}

/// True if `id` looks like a Tern queue id (16 upper-case hex characters).
pub fn is_queue_id(id: &str) -> bool {
    id.len() == 16 && id.chars().all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
}

/// One SMTP reply (all lines of a multi-line reply).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    pub fn has(&self, s: &str) -> bool {
        self.lines.iter().any(|l| l.contains(s))
    }
}

/// A raw SMTP connection for protocol violations no real client makes
/// (bare LF/CR, pipelining abuse, overlong lines, smuggling, BDAT): plain
/// TCP here; `security::Smtp` runs it over TLS as well.
pub struct Raw<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    /// Set when the server closed the connection.
    pub closed: bool,
    /// How long `reply` waits.
    reply_timeout: Duration,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
        stream.set_write_timeout(Some(Duration::from_secs(20))).expect("write timeout");
        Raw::over(stream, Duration::from_secs(10))
    }
}

impl<S: Read + Write> Raw<S> {
    /// SMTP over `stream`, whose reads must time out after a short while;
    /// `reply` waits up to `reply_timeout`.
    pub fn over(stream: S, reply_timeout: Duration) -> Raw<S> {
        Raw { stream, buf: Vec::new(), closed: false, reply_timeout }
    }

    /// Writes all bytes in one call. Errors (e.g. the server already closed)
    /// are returned, not raised.
    pub fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data)?;
        self.stream.flush()
    }

    /// Sends one command line with CRLF and reads the reply.
    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Reply {
        if let Err(e) = self.send(format!("{line}\r\n").as_bytes()) {
            panic!("sending {line:?}: {e}");
        }
        self.reply()
    }

    fn fill(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    return false;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return false;
                }
            }
        }
        false
    }

    fn take_line(&mut self) -> Option<String> {
        let i = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=i).collect();
        let line = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
        Some(line)
    }

    /// Reads one complete reply within `timeout`, or None.
    pub fn try_reply(&mut self, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            while let Some(line) = self.take_line() {
                let more = line.as_bytes().get(3) == Some(&b'-');
                lines.push(line);
                if !more {
                    let code = lines[0].get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                    return Some(Reply { code, lines });
                }
            }
            if self.closed || Instant::now() >= deadline {
                return None;
            }
            self.fill(deadline);
        }
    }

    /// Reads one reply (bounded by the reply timeout); panics if none arrives.
    #[track_caller]
    pub fn reply(&mut self) -> Reply {
        match self.try_reply(self.reply_timeout) {
            Some(r) => r,
            None => panic!(
                "no SMTP reply within {:?} (closed: {}, pending: {:?})",
                self.reply_timeout,
                self.closed,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads replies until the server closes the connection or nothing
    /// arrives for `idle` (overall bound 30 s).
    pub fn replies_until_quiet(&mut self, idle: Duration) -> Vec<Reply> {
        let mut out = Vec::new();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            match self.try_reply(idle) {
                Some(r) => out.push(r),
                None => break,
            }
        }
        out
    }

    /// Reads replies until one satisfies `done`, the connection closes, or
    /// `timeout` passes; then keeps reading until nothing more arrives for
    /// `settle`. Returns every reply read.
    pub fn replies_until(&mut self, done: impl Fn(&Reply) -> bool, timeout: Duration, settle: Duration) -> Vec<Reply> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.try_reply(deadline.saturating_duration_since(Instant::now())) {
                Some(r) => {
                    let finished = done(&r);
                    out.push(r);
                    if finished {
                        break;
                    }
                }
                None => break,
            }
        }
        out.extend(self.replies_until_quiet(settle));
        out
    }

    /// Waits (bounded) for the server to close the connection.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed && Instant::now() < deadline {
            if self.fill(deadline) {
                // Discard data; only the close matters here.
                self.buf.clear();
            }
        }
        self.closed
    }

    /// EHLO and its multi-line reply.
    #[track_caller]
    pub fn ehlo(&mut self) -> Reply {
        let r = self.cmd("EHLO client.test");
        assert_eq!(r.code, 250, "EHLO: {r:?}");
        r
    }
}

/// Python prelude for smtplib scripts: `PORT`, `DIR` and `connect()`.
pub const PY: &str = r#"
import os, smtplib, socket, sys, time
PORT = int(os.environ["TERN_PORT"])
DIR = os.environ["TERN_DIR"]
def connect():
    s = smtplib.SMTP("127.0.0.1", PORT, timeout=30)
    s.ehlo("client.test")
    return s
def send(s, sender, rcpts, msg, mail_options=()):
    code, resp = s.mail(sender, list(mail_options))
    if code != 250:
        raise SystemExit("MAIL %d %s" % (code, resp))
    for r in rcpts:
        code, resp = s.rcpt(r)
        if code != 250:
            raise SystemExit("RCPT %s %d %s" % (r, code, resp))
    code, resp = s.data(msg)
    if code != 250:
        raise SystemExit("DATA %d %s" % (code, resp))
    return resp.decode()
"#;

impl Tern {
    /// Runs `PY` followed by `script` with Python 3.
    pub fn py(&self, script: &str) -> Out {
        self.python(&format!("{PY}\n{script}"))
    }

    /// Like `py`, with a time bound.
    pub fn py_within(&self, script: &str, timeout: Duration) -> Out {
        self.python_within(&format!("{PY}\n{script}"), timeout)
    }
}

/// The queue id named in the Received header Tern prepends (`id <ID>`).
pub fn received_id(stored: &[u8]) -> Option<String> {
    let (headers, _) = split_message(stored);
    let text = String::from_utf8_lossy(headers);
    let mut rest: &str = &text;
    while let Some(i) = rest.find("id ") {
        let cand: String = rest[i + 3..].chars().take(16).collect();
        if is_queue_id(&cand) {
            return Some(cand);
        }
        rest = &rest[i + 3..];
    }
    None
}

/// A small tmpfs (2 MiB) mounted over a directory (needs root), unmounted on drop.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(dir: &Path) -> Option<SmallDisk> {
        fs::create_dir_all(dir).unwrap();
        let mut cmd = std::process::Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(dir);
        run(cmd, CLIENT_TIMEOUT).success().then(|| SmallDisk(dir.to_path_buf()))
    }

    /// Fills the disk with a file; returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        for _ in 0..1024 {
            if f.write_all(&chunk).and_then(|_| f.sync_all()).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let mut cmd = std::process::Command::new("umount");
        cmd.arg("-l").arg(&self.0);
        let _ = run(cmd, CLIENT_TIMEOUT);
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn proc_status(pid: u32, field: &str) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).expect("field in /proc status");
    let kb: usize = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB");
    kb * 1024
}

/// Starts measuring the peak RSS afresh where the kernel allows it (`clear_refs` 5
/// resets `VmHWM` to the current RSS); returns what later peaks are compared with.
pub fn reset_peak(pid: u32) -> usize {
    match fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        Ok(()) => proc_status(pid, "VmRSS"),
        Err(_) => proc_status(pid, "VmHWM"),
    }
}
