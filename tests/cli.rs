//! The `tern` command line: config check, queue list, log format.

mod common;

use common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

fn tern(args: &[&str], dir: &std::path::Path) -> Out {
    let mut cmd = Command::new(TERN_BIN);
    cmd.args(args).current_dir(dir);
    run(cmd, CLIENT_TIMEOUT)
}

const FULL_CONFIG: &str = r#"hostname = "mx.example.test"
data_dir = "DATA"

[[listen]]
addr = "127.0.0.1:2525"
mode = "smtp"

[local]
domains = ["example.test"]
accept_unknown = false
aliases = { "postmaster@example.test" = ["alice@example.test"], "team@example.test" = ["alice@example.test", "bob@elsewhere.test"] }
users = ["alice@example.test", "bob@example.test"]
subaddress_separator = "+"

[limits]
max_message_size = 26214400
max_recipients = 100
command_timeout = "5m"
max_bad_commands = 10
session_timeout = "30m"

[queue]
retry = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
max_age = "5d"
"#;

#[test]
fn config_check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    let data = dir.path().join("data");
    fs::write(&cfg, FULL_CONFIG.replace("DATA", &data.display().to_string())).unwrap();
    let out = tern(&["config", "check", "--config", cfg.to_str().unwrap()], dir.path());
    out.assert_success("tern config check");
    let said = out.all().to_lowercase();
    assert!(said.contains("ok") || said.contains("valid"), "no ok line: {}", out.all());
}

#[test]
fn config_check_names_an_unknown_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    // Line 9 holds the unknown key.
    let text = "hostname = \"mx.example.test\"\n\
                data_dir = \"/tmp/tern-unused\"\n\
                \n\
                [[listen]]\n\
                addr = \"127.0.0.1:2525\"\n\
                mode = \"smtp\"\n\
                \n\
                [limits]\n\
                max_recipeints = 5\n";
    assert_eq!(text.lines().nth(8), Some("max_recipeints = 5"));
    fs::write(&cfg, text).unwrap();
    let out = tern(&["config", "check", "--config", cfg.to_str().unwrap()], dir.path());
    assert!(!out.timed_out);
    assert!(!out.success(), "unknown key accepted: {}", out.all());
    let all = out.all();
    assert!(all.contains("max_recipeints"), "key not named: {all}");
    assert!(
        all.contains("line 9") || all.contains(":9:") || all.contains(":9,") || all.contains(" 9 |"),
        "line 9 not named: {all}"
    );
}

#[test]
fn config_check_rejects_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("bad-toml", "hostname = \n"),
        ("bad-type", "hostname = 5\n"),
        ("bad-duration", "[limits]\ncommand_timeout = \"five minutes\"\n"),
        ("bad-addr", "[[listen]]\naddr = \"not an address\"\nmode = \"smtp\"\n"),
        ("unknown-table", "[nonsense]\nx = 1\n"),
    ] {
        let cfg = dir.path().join(format!("{name}.toml"));
        fs::write(&cfg, text).unwrap();
        let out = tern(&["config", "check", "--config", cfg.to_str().unwrap()], dir.path());
        assert!(!out.timed_out);
        assert!(!out.success(), "{name} accepted: {}", out.all());
        assert!(!out.all().trim().is_empty(), "{name}: no error message");
    }
}

#[test]
fn config_check_on_a_missing_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = tern(&["config", "check", "--config", missing.to_str().unwrap()], dir.path());
    assert!(!out.success());
    assert!(!out.all().trim().is_empty());
}

#[test]
fn queue_list_on_an_empty_spool() {
    let mut t = Tern::start(LOCAL_OPEN);
    let out = t.queue_list();
    out.assert_success("tern queue list (running)");
    assert!(out.all().to_lowercase().contains("empty"), "{}", out.all());
    t.sigterm();
    let out = t.queue_list();
    out.assert_success("tern queue list (stopped)");
    assert!(out.all().to_lowercase().contains("empty"), "{}", out.all());
}

/// A data directory that is not there is no empty queue: most likely the wrong
/// configuration.
#[test]
fn queue_list_on_a_missing_data_dir_says_so() {
    let t = Tern::new_stopped(LOCAL_OPEN, &[]);
    let out = t.queue_list();
    assert!(!out.success(), "{}", out.all());
    assert!(
        out.stderr.contains("does not exist") && out.stderr.contains(&t.data_dir.display().to_string()),
        "{}",
        out.all()
    );
    assert!(!out.all().contains("empty"), "{}", out.all());
}

#[test]
fn serve_prints_where_it_listens() {
    let t = Tern::start(LOCAL_OPEN);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut stdout = String::new();
    while std::time::Instant::now() < deadline {
        stdout = fs::read_to_string(t.stdout_log()).unwrap_or_default();
        if !stdout.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stdout.contains(&format!("127.0.0.1:{}", t.port)), "stdout does not say where tern listens: {stdout:?}");
}

#[test]
fn json_log_format() {
    let t = Tern::start_with_args(LOCAL_OPEN, &["--log-format", "json"]);
    let out = t.swaks(&["-f", "sender@example.org", "-t", "alice@localhost"]);
    out.assert_success("swaks");
    t.wait_one("localhost", "alice");
    let log = fs::read_to_string(t.stderr_log()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines on stderr");
    for l in &lines {
        assert!(l.trim_start().starts_with('{') && l.trim_end().ends_with('}'), "not a JSON log line: {l}");
    }
}

#[test]
fn help_and_unknown_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = tern(&["--help"], dir.path());
    out.assert_success("tern --help");
    for sub in ["serve", "config", "queue"] {
        assert!(out.stdout.contains(sub), "--help does not list {sub}: {}", out.stdout);
    }
    let out = tern(&["frobnicate"], dir.path());
    assert!(!out.success());
}

/// `tern serve` without --config: embedded defaults (127.0.0.1:2525,
/// ./tern-data, every localhost address has a mailbox).
#[test]
fn serve_without_config_uses_embedded_defaults() {
    if std::net::TcpListener::bind("127.0.0.1:2525").is_err() {
        eprintln!("SKIPPED: 127.0.0.1:2525 is in use; cannot check the embedded default");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut serve = Command::new(TERN_BIN);
    serve.arg("serve").env_remove("TERN_CONFIG");
    // An installed server's file would be read instead of the embedded default; the
    // embedded default as `tern config default` prints it stands in then.
    if std::path::Path::new("/etc/tern/tern.toml").exists() {
        let default = tern(&["config", "default"], dir.path());
        fs::write(dir.path().join("default.toml"), &default.stdout).unwrap();
        serve.env("TERN_CONFIG", dir.path().join("default.toml"));
    }
    let mut child = serve
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Reap(&mut child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut up = false;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = guard.0.try_wait() {
            let err = fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            if err.to_lowercase().contains("in use") {
                eprintln!("SKIPPED: 127.0.0.1:2525 was taken meanwhile");
                return;
            }
            panic!("tern serve exited with {status}: {err}");
        }
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:2525") {
            use std::io::Read;
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 256];
            if let Ok(n) = s.read(&mut buf) {
                up = buf[..n].starts_with(b"220 ");
                if !up {
                    eprintln!("SKIPPED: something else answers on 127.0.0.1:2525");
                    return;
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "tern serve (defaults) never greeted on 127.0.0.1:2525");
    let mut cmd = Command::new("swaks");
    cmd.args([
        "--server",
        "127.0.0.1",
        "--port",
        "2525",
        "-f",
        "sender@example.org",
        "-t",
        "anyone@localhost.localdomain",
    ]);
    run(cmd, CLIENT_TIMEOUT).assert_success("swaks to the default server");
    let new = dir.path().join("tern-data/mail/localhost.localdomain/anyone/new");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while list_files(&new).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(list_files(&new).len(), 1, "no mail in {}", new.display());
    drop(guard);
}

#[test]
fn config_check_reads_the_dkim_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    let key = dir.path().join("a.pem");
    let config = format!(
        "data_dir = \"{}\"\n[[dkim]]\ndomain = \"a.test\"\nselector = \"s1\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n",
        dir.path().join("data").display(),
        key.display()
    );
    fs::write(&cfg, &config).unwrap();
    let check = || tern(&["config", "check", "--config", cfg.to_str().unwrap()], dir.path());
    let missing = check();
    assert!(!missing.success() && missing.all().contains("a.pem"), "missing key accepted: {}", missing.all());
    let made = tern(
        &[
            "dkim",
            "keygen",
            "a.test",
            "--selector",
            "s1",
            "--algorithm",
            "rsa",
            "--out",
            key.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
    );
    made.assert_success("tern dkim keygen");
    let wrong = check();
    assert!(!wrong.success() && wrong.all().contains("ed25519"), "an RSA key passed as Ed25519: {}", wrong.all());
    fs::write(&cfg, config.replace("ed25519-sha256", "rsa-sha256")).unwrap();
    check().assert_success("tern config check with an RSA key");
}

/// `tern config check --config FILE` on `text` written to a file in `dir`.
fn check_text(dir: &std::path::Path, name: &str, text: &str) -> Out {
    let cfg = dir.join(name);
    fs::write(&cfg, text).unwrap();
    tern(&["config", "check", "--config", cfg.to_str().unwrap()], dir)
}

#[test]
fn config_default_is_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = tern(&["config", "default"], dir.path());
    out.assert_success("tern config default");
    assert!(out.stdout.lines().filter(|l| l.starts_with('#')).count() > 50, "not commented: {}", out.stdout);
    let printed = tern::config::Config::parse(&out.stdout, "printed").expect("the printed default parses");
    let embedded = tern::config::Config::load(None).unwrap();
    assert_eq!(format!("{printed:?}"), format!("{embedded:?}"));
    let _ = check_text(dir.path(), "default.toml", &out.stdout);
}

#[test]
fn without_config_the_environment_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let from_env = dir.path().join("env.toml");
    fs::write(&from_env, format!("data_dir = \"{}\"\n", dir.path().join("env-data").display())).unwrap();
    let flagged = dir.path().join("flag.toml");
    fs::write(&flagged, format!("data_dir = \"{}\"\n", dir.path().join("flag-data").display())).unwrap();
    let run_with_env = |args: &[&str]| {
        let mut cmd = Command::new(TERN_BIN);
        cmd.args(args).env("TERN_CONFIG", &from_env).current_dir(dir.path());
        run(cmd, CLIENT_TIMEOUT)
    };
    let out = run_with_env(&["config", "check"]);
    out.assert_success("config check from $TERN_CONFIG");
    assert!(out.stdout.contains(&format!("{} (from $TERN_CONFIG)", from_env.display())), "{}", out.all());
    let out = run_with_env(&["config", "check", "--config", flagged.to_str().unwrap()]);
    assert!(out.stdout.starts_with(&format!("{}:", flagged.display())), "--config comes first: {}", out.all());
    // Scripting commands stay quiet about it, and use it.
    let out = run_with_env(&["queue", "list"]);
    assert!(out.stderr.contains("env-data"), "{}", out.all());
    let mut cmd = Command::new(TERN_BIN);
    cmd.args(["config", "check"]).env("TERN_CONFIG", dir.path().join("missing.toml")).current_dir(dir.path());
    let out = run(cmd, CLIENT_TIMEOUT);
    assert!(!out.success() && out.stderr.contains("missing.toml"), "a missing $TERN_CONFIG is an error: {}", out.all());
}

#[test]
fn config_check_finds_what_serve_would_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    let text = format!(
        "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        file.join("data").display(),
        dir.path().join("missing-cert.pem").display(),
        dir.path().join("missing-key.pem").display()
    );
    let out = check_text(dir.path(), "bad.toml", &text);
    assert_eq!(out.code(), Some(2), "{}", out.all());
    assert!(out.stderr.contains("line 5: tls.cert: ") && out.stderr.contains("missing-cert.pem"), "{}", out.stderr);
    assert!(out.stderr.contains("line 2: data_dir: ") && out.stderr.contains("not a directory"), "{}", out.stderr);
    let text =
        "[[listen]]\naddr = \"127.0.0.1:2525\"\n\n[[listen]]\naddr = \"127.0.0.1:2525\"\nmode = \"submission\"\n";
    let out = check_text(dir.path(), "twice.toml", text);
    assert_eq!(out.code(), Some(2), "{}", out.all());
    assert!(out.stderr.contains("line 5: listen[1].addr: 127.0.0.1:2525 is taken by listen[0]"), "{}", out.stderr);
}

#[test]
fn config_check_warns_about_likely_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = \"{}\"\n\n[local]\ndomains = [\"example.test\"]\nusers = [\"alice@example.test\"]\n\n[local.aliases]\n\
         \"team@example.test\" = [\"alice@example.test\", \"bob@example.test\", \"carol@elsewhere.test\"]\n\n\
         [relay]\nnetworks = [\"127.0.0.0/8\", \"0.0.0.0/0\", \"::/0\"]\n\n[limits]\nmax_connections = 0\n",
        dir.path().join("data").display()
    );
    let out = check_text(dir.path(), "warn.toml", &text);
    out.assert_success("config check with warnings only");
    let e = &out.stderr;
    assert!(e.contains("line 8: local.aliases.\"team@example.test\": bob@example.test does not exist"), "{e}");
    assert!(!e.contains("alice@example.test does not exist") && !e.contains("carol@"), "{e}");
    assert!(e.contains("line 11: relay.networks: 0.0.0.0/0") && e.contains("::/0") && e.contains("open relay"), "{e}");
    assert!(e.contains("line 14: limits.max_connections: 0 refuses every connection"), "{e}");
    assert_eq!(e.matches("warning").count(), 4, "{e}");
}

#[test]
fn durations_take_only_seconds_to_weeks() {
    let dir = tempfile::tempdir().unwrap();
    for (value, key, line) in
        [("5M", "limits.command_timeout", 2), ("10y", "queue.max_age", 2), ("5 minutes", "auth.ban_time", 3)]
    {
        let (table, name) = key.split_once('.').unwrap();
        let text = format!("[{table}]\n{}{name} = \"{value}\"\n", if line == 3 { "max_failures = 3\n" } else { "" });
        let out = check_text(dir.path(), "d.toml", &text);
        assert_eq!(out.code(), Some(2), "{value:?} accepted: {}", out.all());
        let e = &out.stderr;
        assert!(e.contains(&format!("line {line}: {key}: \"{value}\" is not a duration")), "{e}");
        assert!(e.contains("s (seconds), m (minutes), h (hours), d (days) or w (weeks)"), "{e}");
    }
    check_text(dir.path(), "ok.toml", "[queue]\nmax_age = \"2w\"\nretry = [\"90s\", \"1h30m\", \"1d\"]\n")
        .assert_success("s, m, h, d and w");
}

#[test]
fn user_list_and_add() {
    let t = Tern::new_stopped("\n[local]\ndomains = [\"example.test\"]\n", &[]);
    let out = t.tern_cmd(&["user", "add", "alice@example.test"]);
    assert!(!out.success() && out.stderr.contains("no terminal: use --password-stdin"), "{}", out.all());
    let out = t.tern_cmd_with_input(&["user", "add", "eve@elsewhere.test", "--password-stdin"], Some(b"pw\n"));
    assert!(!out.success() && out.stderr.contains("elsewhere.test is not a local domain"), "{}", out.all());
    for who in ["bob@example.test", "Alice@Example.TEST"] {
        t.tern_cmd_with_input(&["user", "add", who, "--password-stdin"], Some(b"s3cret\n")).assert_success("user add");
    }
    let out = t.tern_cmd(&["user", "list"]);
    out.assert_success("user list");
    assert_eq!(out.stdout, "alice@example.test\nbob@example.test\n");
    assert!(!fs::read_to_string(t.data_dir.join("users.toml")).unwrap().contains("s3cret"));
}

#[test]
fn a_fatal_start_error_is_printed_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    let text =
        format!("data_dir = \"{}\"\n[[listen]]\naddr = \"127.0.0.1:{port}\"\n", dir.path().join("data").display());
    fs::write(&cfg, text).unwrap();
    let out = tern(&["serve", "--config", cfg.to_str().unwrap()], dir.path());
    assert!(!out.timed_out && !out.success(), "{}", out.all());
    assert_eq!(out.all().matches("cannot listen on").count(), 1, "{}", out.all());
    assert_eq!(out.stderr.matches(&format!("configuration: {}", cfg.display())).count(), 1, "{}", out.stderr);
}

/// `tern quickstart` in a temporary directory: the file passes `config check`, and a
/// server started on it (on loopback ports) takes the user's password.
#[test]
fn quickstart_writes_a_config_that_serves() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let data = dir.path().join("data");
    let args = ["quickstart", "alice@example.test", "--hostname", "mail.example.test", "--dir", etc.to_str().unwrap()];
    let out = tern(&[&args[..], &["--data-dir", data.to_str().unwrap()]].concat(), dir.path());
    out.assert_success("tern quickstart");
    let said = &out.stdout;
    for record in [
        "example.test. IN MX 10 mail.example.test.",
        "example.test. IN TXT \"v=spf1 mx -all\"",
        "mail.example.test. IN TXT \"v=spf1 a -all\"",
        "._domainkey.example.test. IN TXT ( \"v=DKIM1; k=rsa; \" \"p=",
        "_dmarc.example.test. IN TXT \"v=DMARC1; p=quarantine",
        "systemctl daemon-reload && systemctl enable --now tern",
    ] {
        assert!(said.contains(record), "{record:?} missing:\n{said}");
    }
    let password = said.lines().skip_while(|l| !l.contains("with the password")).nth(2).unwrap().trim().to_string();
    assert!(password.len() >= 16, "{said}");
    // The unit shown is the shipped one, naming this configuration file; the data
    // directory outside /var/lib/tern is named for a drop-in.
    let unit: String = said
        .lines()
        .skip_while(|l| !l.contains("cat > /etc/systemd/system/tern.service"))
        .skip(1)
        .take_while(|l| l.trim() != "EOF")
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let shipped = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/tern.service")).unwrap();
    let cfg_path = etc.join("tern.toml").display().to_string();
    assert_eq!(unit, shipped.replace("/etc/tern/tern.toml", &cfg_path), "{said}");
    assert!(said.contains("cat > /usr/lib/sysusers.d/tern.conf") && said.contains("u tern - "), "{said}");
    assert!(said.contains(&format!("ReadWritePaths={}", data.display())), "{said}");
    let cfg = etc.join("tern.toml");
    tern(&["config", "check", "--config", cfg.to_str().unwrap()], dir.path()).assert_success("config check");
    let users = fs::read_to_string(data.join("users.toml")).unwrap();
    assert!(users.contains("\"alice@example.test\" = \"$argon2id$") && !users.contains(&password), "{users}");
    // Never twice over the same file.
    let again = tern(&[&args[..], &["--data-dir", data.to_str().unwrap()]].concat(), dir.path());
    assert!(!again.success() && again.stderr.contains("exists already"), "{}", again.all());

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut text = fs::read_to_string(&cfg).unwrap();
    for (public, port) in [25, 587, 465].iter().zip(&ports) {
        text = text.replace(&format!("\"0.0.0.0:{public}\""), &format!("\"127.0.0.1:{port}\""));
    }
    fs::write(&cfg, format!("{text}\n{}", loopback_only(free_port()))).unwrap();
    let log = fs::File::create(dir.path().join("serve.log")).unwrap();
    let child = Command::new(TERN_BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Reap(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", ports[1])).is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", fs::read_to_string(dir.path().join("serve.log")).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
s.starttls(context=ctx)
s.login("alice@example.test", {password:?})
s.sendmail("alice@example.test", ["postmaster@example.test"], "From: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n")
s.quit()
"#,
        port = ports[1]
    );
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).current_dir(dir.path());
    run(cmd, CLIENT_TIMEOUT).assert_success("login with the quickstart password");
    // postmaster is an alias of the user; the message was signed with the new key.
    let new = data.join("mail/example.test/alice/new");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while list_files(&new).is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", fs::read_to_string(dir.path().join("serve.log")).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mail = fs::read_to_string(&list_files(&new)[0]).unwrap();
    assert!(mail.contains("DKIM-Signature:") && mail.contains("d=example.test"), "{mail}");
}

/// `tern dane tlsa` pins what the server presents: the SHA-256 of the public key (3 1 1)
/// or of the whole certificate (3 0 1) of the certificate `openssl s_client` is shown
/// after STARTTLS, here the self-signed one Tern made at its first start.
#[test]
fn dane_tlsa_pins_the_certificate_the_server_presents() {
    let t = Tern::start(LOCAL_OPEN);
    let pem = t.dir.path().join("served.pem");
    let served = format!(
        "echo QUIT | openssl s_client -starttls smtp -connect 127.0.0.1:{} 2>/dev/null | openssl x509 -out {}",
        t.port,
        pem.display()
    );
    run(shell(&served), CLIENT_TIMEOUT).assert_success("openssl s_client");
    let digest = |pipeline: &str| {
        let out = run(shell(&format!("{pipeline} | openssl dgst -sha256 -r")), CLIENT_TIMEOUT);
        out.assert_success(pipeline);
        out.stdout.split_whitespace().next().unwrap_or_default().to_string()
    };
    let spki = digest(&format!("openssl x509 -in {} -noout -pubkey | openssl pkey -pubin -outform DER", pem.display()));
    let full = digest(&format!("openssl x509 -in {} -outform DER", pem.display()));
    assert_eq!(spki.len(), 64, "{spki}");
    let out = t.tern_cmd(&["dane", "tlsa"]);
    out.assert_success("tern dane tlsa");
    assert_eq!(out.stdout.trim(), format!("_25._tcp.{HOSTNAME}. IN TLSA 3 1 1 {spki}"));
    let out = t.tern_cmd(&["dane", "tlsa", "--port", "465", "--full-certificate"]);
    out.assert_success("tern dane tlsa --full-certificate");
    assert_eq!(out.stdout.trim(), format!("_465._tcp.{HOSTNAME}. IN TLSA 3 0 1 {full}"));
    // Without a certificate there is nothing to pin: said, not guessed.
    std::fs::remove_file(t.data_dir.join("tls/self-signed.crt")).unwrap();
    let out = t.tern_cmd(&["dane", "tlsa"]);
    assert!(!out.status.is_some_and(|s| s.success()) && out.stderr.contains("no [tls] cert"), "{}", out.stderr);
}

fn shell(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}
