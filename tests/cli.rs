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
    let t = Tern::new_stopped(LOCAL_OPEN, &[]);
    let out = t.queue_list();
    out.assert_success("tern queue list (never started)");
    assert!(out.all().to_lowercase().contains("empty"), "expected an 'empty' line: {}", out.all());
    let mut t = Tern::start(LOCAL_OPEN);
    let out = t.queue_list();
    out.assert_success("tern queue list (running)");
    assert!(out.all().to_lowercase().contains("empty"), "{}", out.all());
    t.sigterm();
    let out = t.queue_list();
    out.assert_success("tern queue list (stopped)");
    assert!(out.all().to_lowercase().contains("empty"), "{}", out.all());
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
    let mut child = Command::new(TERN_BIN)
        .arg("serve")
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
        &["dkim", "keygen", "a.test", "--selector", "s1", "--algorithm", "rsa", "--out", key.to_str().unwrap()],
        dir.path(),
    );
    made.assert_success("tern dkim keygen");
    let wrong = check();
    assert!(!wrong.success() && wrong.all().contains("ed25519"), "an RSA key passed as Ed25519: {}", wrong.all());
    fs::write(&cfg, config.replace("ed25519-sha256", "rsa-sha256")).unwrap();
    check().assert_success("tern config check with an RSA key");
}
