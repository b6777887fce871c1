//! Fixtures for Tern's security tests: a server with all three kinds of
//! listener (smtp, submission, submissions) and users in its users file, a
//! second Tern on 127.0.0.2 as the mail server of the remote domains, an SMTP
//! client of our own that speaks STARTTLS and implicit TLS (for exact
//! replies and protocol abuse), and drivers for `openssl s_client`, Python's
//! smtplib over TLS, swaks and curl.
//!
//! Every wait is bounded; every process started here ends with its owner.
#![allow(dead_code)]

use super::outbound::{peer_port, wait_greeting};
use super::*;
use base64::Engine;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{BufRead, BufReader};
use std::process::ChildStdin;
use std::sync::{Arc, Mutex, mpsc};

/// The local domains of the Tern under test (one of them non-ASCII).
pub const LOCAL: &str = "local.test";
pub const LOCAL_UTF8: &str = "bücher.test";
pub const LOCAL_ALABEL: &str = "xn--bcher-kva.test";
/// The remote domains, both routed to the peer on 127.0.0.2.
pub const REMOTE: &str = "remote.test";
pub const REMOTE_UTF8: &str = "müller.test";
pub const REMOTE_ALABEL: &str = "xn--mller-kva.test";

/// The user every fixture server knows, and its password.
pub const ALICE: &str = "alice@local.test";
pub const ALICE_PW: &str = "Alice-pw-5r9Qk2-tern";
/// A remote recipient (a mailbox of the peer).
pub const BOB: &str = "bob@remote.test";

/// How long a message may take to reach the peer through the queue.
pub const DELIVERY: Duration = Duration::from_secs(30);

/// `AUTH PLAIN` initial response for `user` and `password`.
pub fn plain(user: &str, password: &str) -> String {
    b64(format!("\0{user}\0{password}").as_bytes())
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Which listener to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Smtp,
    Submission,
    Submissions,
}

/// Settings of a fixture server.
pub struct Opts<'a> {
    /// `[relay] networks = []`: loopback clients are strangers.
    pub stranger: bool,
    /// Start the peer for the remote domains on 127.0.0.2.
    pub peer: bool,
    /// Lines of `[local.aliases]`.
    pub aliases: &'a str,
    /// Further config sections ([auth], [limits], [tls] …).
    pub extra: &'a str,
    /// Users added with `tern user add` before the start.
    pub users: &'a [(&'a str, &'a str)],
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts { stranger: true, peer: true, aliases: "", extra: "", users: &[(ALICE, ALICE_PW)] }
    }
}

/// The mail server of `remote.test` and `müller.test`: a second Tern that
/// listens on 127.0.0.2 and takes mail for any local part.
pub struct Peer {
    pub t: Tern,
    pub port: u16,
    /// Connections logged when the peer was ready (the start-up probes).
    baseline: usize,
}

impl Peer {
    pub fn start(port: u16) -> Peer {
        let t = Tern::start(&format!(
            "\n[local]\ndomains = [\"{REMOTE}\", \"{REMOTE_UTF8}\"]\naccept_unknown = true\n\n\
             [[listen]]\naddr = \"127.0.0.2:{port}\"\nmode = \"smtp\"\n"
        ));
        if let Err(e) = wait_greeting("127.0.0.2", port, Duration::from_secs(15)) {
            panic!("peer does not listen on 127.0.0.2:{port}: {e}\n{}", t.logs());
        }
        let baseline = connects(&t);
        Peer { t, port, baseline }
    }

    /// Connections the peer saw since it was ready.
    pub fn new_connections(&self) -> usize {
        connects(&self.t).saturating_sub(self.baseline)
    }

    /// Every message the peer delivered.
    pub fn delivered(&self) -> Vec<PathBuf> {
        self.t.all_delivered()
    }

    /// Asserts that nothing reached the peer: no connection, no message.
    #[track_caller]
    pub fn assert_untouched(&self, context: &str) {
        let delivered = self.delivered();
        assert!(delivered.is_empty(), "{context}: the peer on 127.0.0.2 received mail: {delivered:?}");
        assert_eq!(self.new_connections(), 0, "{context}: the peer on 127.0.0.2 was contacted\n{}", self.t.logs());
    }
}

/// Number of connections a Tern has logged.
pub fn connects(t: &Tern) -> usize {
    t.logs().lines().filter(|l| l.contains(" connect client=")).count()
}

/// A Tern with smtp (the harness port), submission and submissions
/// listeners, `local.test` and `bücher.test` as local domains, the remote
/// domains routed to the peer, and the users of `Opts` in its users file.
pub struct Mta {
    pub t: Tern,
    pub submission: u16,
    pub submissions: u16,
    pub peer: Option<Peer>,
}

impl Mta {
    pub fn start(opts: Opts<'_>) -> Mta {
        let m = Mta::stopped(opts);
        m.started()
    }

    /// Writes the config and adds the users, without starting.
    pub fn stopped(opts: Opts<'_>) -> Mta {
        let peer = opts.peer.then(|| Peer::start(peer_port()));
        let hop_port = peer.as_ref().map_or_else(peer_port, |p| p.port);
        let submission = free_port();
        let mut submissions = free_port();
        while submissions == submission {
            submissions = free_port();
        }
        let networks = if opts.stranger { "networks = []" } else { "" };
        let config = format!(
            "\n[local]\ndomains = [\"{LOCAL}\", \"{LOCAL_UTF8}\"]\naccept_unknown = true\n\n\
             [local.aliases]\n{aliases}\n\n\
             [queue]\nretry = [\"1s\"]\n\n\
             [relay]\n{networks}\n\n\
             [auth_checks]\nenabled = false\n\n\
             [relay.routes]\n\"{REMOTE}\" = \"127.0.0.2:{hop_port}\"\n\"{REMOTE_ALABEL}\" = \"127.0.0.2:{hop_port}\"\n\n\
             [[listen]]\naddr = \"127.0.0.1:{submission}\"\nmode = \"submission\"\n\n\
             [[listen]]\naddr = \"127.0.0.1:{submissions}\"\nmode = \"submissions\"\n\n{extra}\n",
            aliases = opts.aliases,
            extra = opts.extra,
        );
        let t = Tern::new_stopped(&config, &[]);
        let m = Mta { t, submission, submissions, peer };
        for (user, password) in opts.users {
            m.user(&["add", user], Some(password)).assert_success("tern user add");
        }
        m
    }

    pub fn started(mut self) -> Mta {
        self.t.start_again();
        for port in [self.submission, self.submissions] {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err() {
                panic!("tern does not listen on {addr}\n{}", self.t.logs());
            }
        }
        self
    }

    pub fn port(&self, port: Port) -> u16 {
        match port {
            Port::Smtp => self.t.port,
            Port::Submission => self.submission,
            Port::Submissions => self.submissions,
        }
    }

    pub fn peer(&self) -> &Peer {
        self.peer.as_ref().expect("this server was started without a peer")
    }

    /// `tern user ARGS --password-stdin --config FILE` (the password, if
    /// any, on standard input).
    pub fn user(&self, args: &[&str], password: Option<&str>) -> Out {
        let mut cmd = Command::new(TERN_BIN);
        cmd.arg("user").args(args);
        if password.is_some() {
            cmd.arg("--password-stdin");
        }
        cmd.arg("--config").arg(&self.t.config_path).current_dir(self.t.path());
        let input = password.map(|p| format!("{p}\n").into_bytes());
        run_with_input(cmd, input.as_deref(), CLIENT_TIMEOUT)
    }

    /// A connection to `port` past its greeting: plain for smtp and
    /// submission, TLS from the first byte for submissions.
    #[track_caller]
    pub fn connect(&self, port: Port) -> Smtp {
        let mut s = match port {
            Port::Submissions => self.connect_implicit(),
            _ => Smtp::connect(self.port(port)),
        };
        let g = s.reply();
        assert_eq!(g.code, 220, "greeting on {port:?}: {g:?}");
        s
    }

    /// A TLS connection to the submissions port. Tern may take a ClientHello
    /// sent at once for a client talking before the greeting (see
    /// `implicit_tls_client_hello_is_not_talking_first` in tests/security.rs);
    /// so that other tests test what they are about, this client waits a
    /// moment before its ClientHello and retries such a refusal, loudly.
    #[track_caller]
    fn connect_implicit(&self) -> Smtp {
        let mut last = String::new();
        for attempt in 0..10 {
            let mut s = Smtp::connect(self.submissions);
            thread::sleep(Duration::from_millis(30));
            match s.upgrade().map(|_| s) {
                Ok(s) => return s,
                Err(e) => {
                    eprintln!("implicit TLS handshake failed (attempt {attempt}): {e}; retrying");
                    last = e;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("implicit TLS on {} failed 10 times: {last}\n{}", self.submissions, self.t.logs());
    }

    /// A TLS session (STARTTLS or implicit) after EHLO.
    #[track_caller]
    pub fn tls(&self, port: Port) -> Smtp {
        let mut s = self.connect(port);
        if port != Port::Submissions {
            s.ehlo();
            s.starttls().unwrap_or_else(|e| panic!("STARTTLS on {port:?}: {e}\n{}", self.t.logs()));
        }
        s.ehlo();
        s
    }

    /// A TLS session authenticated as alice.
    #[track_caller]
    pub fn alice(&self, port: Port) -> Smtp {
        let mut s = self.tls(port);
        let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)));
        assert_eq!((r.code, r.has("2.7.0")), (235, true), "AUTH as alice: {r:?}");
        s
    }

    /// Python 3 with the `PY_TLS` prelude; the ports are in the environment.
    pub fn python(&self, script: &str) -> Out {
        let mut cmd = Command::new("python3");
        cmd.arg("-")
            .env("TERN_PORT", self.t.port.to_string())
            .env("TERN_SUB", self.submission.to_string())
            .env("TERN_SUBS", self.submissions.to_string())
            .env("TERN_DIR", self.t.path())
            .env("PYTHONIOENCODING", "utf-8")
            .current_dir(self.t.path());
        let text = format!("{PY_TLS}\n{script}");
        run_with_input(cmd, Some(text.as_bytes()), CLIENT_TIMEOUT)
    }

    /// swaks against `port`; `args` follow the connection options.
    pub fn swaks(&self, port: Port, args: &[&str]) -> Out {
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", "127.0.0.1", "--port", &self.port(port).to_string(), "--timeout", "20"])
            .args(["--ehlo", "client.test"])
            .args(args)
            .current_dir(self.t.path());
        run(cmd, CLIENT_TIMEOUT)
    }

    /// Writes a message file into the test directory; returns its path.
    pub fn write(&self, name: &str, content: &[u8]) -> String {
        let p = self.t.path().join(name);
        fs::write(&p, content).expect("write message file");
        p.display().to_string()
    }

    /// Waits for `n` messages in the local mailbox `user@local.test`.
    #[track_caller]
    pub fn local_mail(&self, user: &str, n: usize) -> Vec<Vec<u8>> {
        self.t.wait_mail_within(LOCAL, user, n, DELIVERY)
    }

    /// Waits for `n` messages in the peer's mailbox `user@remote.test`.
    #[track_caller]
    pub fn remote_mail(&self, user: &str, n: usize) -> Vec<Vec<u8>> {
        self.peer().t.wait_mail_within(REMOTE, user, n, DELIVERY)
    }

    /// Sends SIGHUP to the server.
    pub fn sighup(&self) {
        let pid = self.t.pid().expect("tern runs");
        let mut cmd = Command::new("kill");
        cmd.args(["-HUP", &pid.to_string()]);
        run(cmd, Duration::from_secs(10)).assert_success("kill -HUP");
    }

    /// The server's logs, searched for `needle`, waiting up to `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.t.logs().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A test message with a unique token in its subject and body.
pub fn message(token: &str, to: &str) -> Vec<u8> {
    format!(
        "From: Alice <{ALICE}>\r\nTo: <{to}>\r\nSubject: {token}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         Message-ID: <{token}@local.test>\r\n\r\nSecurity test {token}.\r\n"
    )
    .into_bytes()
}

/// The delivered files (in a Maildir's `new` or `cur`) under `root` whose
/// content holds `token`.
pub fn find_token(root: &Path, token: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(root, &mut files, 0);
    files.retain(|p| p.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "new" || n == "cur"));
    files.into_iter().filter(|p| fs::read(p).is_ok_and(|b| contains(&b, token.as_bytes()))).collect()
}

/// The unfolded `Received:` field Tern prepended (the first one).
pub fn first_received(msg: &[u8]) -> String {
    let (headers, _) = split_message(msg);
    let text = String::from_utf8_lossy(headers);
    let mut out = String::new();
    for line in text.split("\r\n") {
        if out.is_empty() {
            if line.to_ascii_lowercase().starts_with("received:") {
                out.push_str(line);
            }
        } else if line.starts_with(' ') || line.starts_with('\t') {
            out.push(' ');
            out.push_str(line.trim());
        } else {
            break;
        }
    }
    out
}

/// Values of header `name` in the header block of `msg`.
pub fn header_values(msg: &[u8], name: &str) -> Vec<String> {
    let (headers, _) = split_message(msg);
    let prefix = format!("{}:", name.to_ascii_lowercase());
    String::from_utf8_lossy(headers)
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// An SMTP client with TLS.

fn client_tls_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        // The servers under test use self-signed certificates.
        .with_custom_certificate_verifier(Arc::new(tern::delivery::remote::AcceptAny::new(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

const READ_POLL: Duration = Duration::from_millis(200);

/// The stream under an `Smtp` session.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// During the TLS handshake, and after one failed.
    Gone,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Gone => Ok(0),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(data),
            Conn::Tls(s) => s.write(data),
            Conn::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

/// One SMTP connection, plain or TLS, for exact replies and for input no
/// ordinary client sends. Replies are read as by `Raw` (15 s bound).
pub struct Smtp(Raw<Conn>);

impl std::ops::Deref for Smtp {
    type Target = Raw<Conn>;

    fn deref(&self) -> &Raw<Conn> {
        &self.0
    }
}

impl std::ops::DerefMut for Smtp {
    fn deref_mut(&mut self) -> &mut Raw<Conn> {
        &mut self.0
    }
}

impl Smtp {
    /// A plain connection (the greeting is not read yet).
    pub fn connect(port: u16) -> Smtp {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
        tcp.set_read_timeout(Some(READ_POLL)).expect("read timeout");
        tcp.set_write_timeout(Some(Duration::from_secs(20))).expect("write timeout");
        Smtp(Raw::over(Conn::Plain(tcp), Duration::from_secs(15)))
    }

    /// A connection with TLS from the first byte (the greeting is not read yet).
    pub fn connect_tls(port: u16) -> Result<Smtp, String> {
        let mut s = Smtp::connect(port);
        s.upgrade()?;
        Ok(s)
    }

    /// Runs the TLS handshake on the plain connection.
    pub fn upgrade(&mut self) -> Result<(), String> {
        let Conn::Plain(mut tcp) = std::mem::replace(&mut self.stream, Conn::Gone) else {
            return Err("not a plain connection".into());
        };
        self.buf.clear();
        let name = ServerName::try_from(HOSTNAME).expect("server name").to_owned();
        let mut tls = ClientConnection::new(client_tls_config(), name).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        while tls.is_handshaking() {
            if let Err(e) = tls.complete_io(&mut tcp) {
                self.closed = true;
                return Err(format!("TLS handshake failed: {e}"));
            }
        }
        tcp.set_read_timeout(Some(READ_POLL)).map_err(|e| e.to_string())?;
        self.stream = Conn::Tls(Box::new(StreamOwned::new(tls, tcp)));
        Ok(())
    }

    /// STARTTLS: expects `220 2.0.0`, then runs the handshake. Returns the reply.
    pub fn starttls(&mut self) -> Result<Reply, String> {
        let r = self.cmd("STARTTLS");
        if r.code != 220 || !r.has("2.0.0") {
            return Err(format!("STARTTLS answered {r:?}"));
        }
        self.upgrade()?;
        Ok(r)
    }

    /// `TLSv1_3` and the like, once TLS is active.
    pub fn tls_version(&self) -> Option<String> {
        match &self.stream {
            Conn::Tls(s) => s.conn.protocol_version().map(|v| format!("{v:?}")),
            _ => None,
        }
    }

    /// The server's certificate (DER), once TLS is active.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.stream {
            Conn::Tls(s) => s.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()),
            _ => None,
        }
    }

    /// Closes the writing half (a half-open connection).
    pub fn shutdown_write(&mut self) {
        match &mut self.stream {
            Conn::Plain(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            Conn::Tls(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
                let _ = s.sock.shutdown(Shutdown::Write);
            }
            Conn::Gone => {}
        }
    }

    /// AUTH LOGIN in three steps; the final reply.
    #[track_caller]
    pub fn auth_login(&mut self, user: &str, password: &str) -> Reply {
        let r = self.cmd("AUTH LOGIN");
        assert_eq!(r.code, 334, "AUTH LOGIN: {r:?}");
        let r = self.cmd(&b64(user.as_bytes()));
        assert_eq!(r.code, 334, "AUTH LOGIN user name: {r:?}");
        self.cmd(&b64(password.as_bytes()))
    }

    /// One whole transaction; Ok(the final reply) or Err(the first refusal).
    pub fn mail(&mut self, from: &str, rcpts: &[&str], content: &[u8]) -> Result<Reply, Reply> {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if r.code != 250 {
            return Err(r);
        }
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            if r.code != 250 {
                let _ = self.cmd("RSET");
                return Err(r);
            }
        }
        let r = self.cmd("DATA");
        if r.code != 354 {
            return Err(r);
        }
        let mut data = content.to_vec();
        if !data.ends_with(b"\r\n") {
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        self.send(&data).expect("send message content");
        let r = self.reply();
        if r.code == 250 { Ok(r) } else { Err(r) }
    }
}

// ---------------------------------------------------------------------------
// openssl s_client, driven line by line.

/// An `openssl s_client` session: commands go to its standard input one at
/// a time, replies are read from its standard output (with `-quiet` only the
/// server's data appears there).
pub struct OpenSsl {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl OpenSsl {
    /// `openssl s_client -starttls smtp`: the EHLO and STARTTLS before the
    /// handshake are done by s_client, so the first thing to send is EHLO.
    pub fn starttls(port: u16) -> OpenSsl {
        OpenSsl::spawn(&["-starttls", "smtp", "-name", "client.test", "-connect", &format!("127.0.0.1:{port}")])
    }

    /// `openssl s_client` with TLS from the first byte (the greeting comes first).
    pub fn implicit(port: u16) -> OpenSsl {
        OpenSsl::spawn(&["-connect", &format!("127.0.0.1:{port}")])
    }

    fn spawn(args: &[&str]) -> OpenSsl {
        let mut child = Command::new("openssl")
            .arg("s_client")
            .args(args)
            .args(["-quiet", "-ign_eof", "-nocommands", "-servername", HOSTNAME])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run openssl s_client: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
                        if tx.send(text).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let errors = Arc::new(Mutex::new(String::new()));
        let sink = errors.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("stderr lock").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        OpenSsl { child, stdin, lines, stderr: errors }
    }

    /// What s_client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Writes bytes to s_client's standard input.
    pub fn send(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(data).and_then(|_| stdin.flush()).expect("write to openssl s_client");
    }

    /// Reads one reply (20 s bound).
    #[track_caller]
    pub fn reply(&mut self) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let more = line.as_bytes().get(3) == Some(&b'-');
                    lines.push(line);
                    if !more {
                        let code = lines[0].get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                        return Reply { code, lines };
                    }
                }
                Err(_) => panic!("openssl s_client: no complete reply (got {lines:?})\n{}", self.stderr()),
            }
        }
    }

    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends QUIT and waits (bounded) for s_client to exit.
    pub fn quit(mut self) -> Reply {
        let r = self.cmd("QUIT");
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        r
    }
}

impl Drop for OpenSsl {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One-shot `openssl s_client` (no input: it ends after the handshake).
/// A plaintext answer to the ClientHello ("wrong version number": Tern took
/// it for a client talking before the greeting, see
/// `implicit_tls_client_hello_is_not_talking_first`) is retried, loudly.
pub fn s_client(args: &[&str]) -> Out {
    let mut out = s_client_once(args);
    for attempt in 1..10 {
        if !out.all().contains("wrong version number") {
            break;
        }
        eprintln!("openssl s_client {args:?}: plaintext answer to the ClientHello (attempt {attempt}); retrying");
        thread::sleep(Duration::from_millis(20));
        out = s_client_once(args);
    }
    out
}

fn s_client_once(args: &[&str]) -> Out {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client").args(args).args(["-servername", HOSTNAME]);
    run(cmd, Duration::from_secs(20))
}

/// A fresh self-signed certificate and key (`openssl req -x509`) for `cn`,
/// written to `cert` and `key`.
pub fn make_certificate(dir: &Path, cn: &str, newkey: &[&str], cert: &Path, key: &Path) {
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey"])
        .args(newkey)
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{cn}"))
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .current_dir(dir);
    run(cmd, Duration::from_secs(60)).assert_success("openssl req -x509");
}

/// Python prelude: ports, an unverified TLS context and connection functions.
pub const PY_TLS: &str = r#"
import base64, os, smtplib, socket, ssl, sys, time
PORT = int(os.environ["TERN_PORT"])
SUB = int(os.environ["TERN_SUB"])
SUBS = int(os.environ["TERN_SUBS"])
DIR = os.environ["TERN_DIR"]
CTX = ssl._create_unverified_context()
def starttls(port, ctx=CTX):
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
    s.ehlo()
    s.starttls(context=ctx)
    s.ehlo()
    return s
def implicit(port):
    s = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", timeout=30, context=CTX)
    s.ehlo()
    return s
def message(name):
    return open(os.path.join(DIR, name), "rb").read()
"#;
