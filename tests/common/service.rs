//! Running Tern as a service: editing its configuration file, reloading it with
//! SIGHUP and waiting until the reload is done, and SMTP exchanges a reload test needs.
#![allow(dead_code)]

use super::outbound::wait_for;
use super::*;

/// How long a reload may take to show in the log.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Replaces every `from` in the server's configuration file with `to`.
#[track_caller]
pub fn edit_config(t: &Tern, from: &str, to: &str) {
    let text = fs::read_to_string(&t.config_path).expect("read config");
    assert!(text.contains(from), "{from:?} is not in the configuration:\n{text}");
    fs::write(&t.config_path, text.replace(from, to)).expect("write config");
}

/// Adds `extra` at the end of the server's configuration file.
pub fn append_config(t: &Tern, extra: &str) {
    let text = fs::read_to_string(&t.config_path).expect("read config");
    fs::write(&t.config_path, format!("{text}\n{extra}\n")).expect("write config");
}

/// Sends `signal` (like `HUP`) to the server.
pub fn signal(t: &Tern, signal: &str) {
    let pid = t.pid().expect("tern runs");
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{signal}")).arg(pid.to_string());
    run(cmd, CLIENT_TIMEOUT).assert_success("kill");
}

/// Lines of the server's log that contain `text`.
pub fn log_lines(t: &Tern, text: &str) -> Vec<String> {
    let log = fs::read_to_string(t.stderr_log()).unwrap_or_default();
    log.lines().filter(|l| l.contains(text)).map(str::to_string).collect()
}

/// Sends SIGHUP and waits until the server logs that the reload succeeded (`true`)
/// or failed (`false`); returns that log line.
#[track_caller]
pub fn sighup(t: &Tern, succeeds: bool) -> String {
    let text = if succeeds { "configuration reloaded" } else { "reload failed" };
    let before = log_lines(t, text).len();
    signal(t, "HUP");
    wait_for(RELOAD_TIMEOUT, text, || log_lines(t, text).get(before).cloned(), || t.logs())
}

/// EHLO, then MAIL FROM `from` on an open session; panics unless accepted.
#[track_caller]
pub fn mail_from(r: &mut Raw, from: &str) {
    let reply = r.cmd(&format!("MAIL FROM:<{from}>"));
    assert_eq!(reply.code, 250, "MAIL FROM:<{from}>: {reply:?}");
}

/// The reply code to RCPT TO `to` on a new session from `from`.
pub fn rcpt_code(t: &Tern, from: &str, to: &str) -> u16 {
    let mut r = t.raw();
    r.ehlo();
    mail_from(&mut r, from);
    let code = r.cmd(&format!("RCPT TO:<{to}>")).code;
    let _ = r.cmd("QUIT");
    code
}

/// Sends one message on an open session after MAIL and RCPT were accepted.
#[track_caller]
pub fn data(r: &mut Raw, message: &str) {
    let reply = r.cmd("DATA");
    assert_eq!(reply.code, 354, "DATA: {reply:?}");
    r.send(format!("{message}\r\n.\r\n").as_bytes()).expect("send message");
    let end = r.reply();
    assert_eq!(end.code, 250, "end of data: {end:?}");
}
