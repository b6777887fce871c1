//! `tern sendmail` — and the same binary called `sendmail`, `mailq` or `newaliases` —
//! with the flags of Postfix's sendmail(1). A message goes to the running server over
//! its local submission socket (`[sendmail] socket`), which knows the user from the
//! kernel: it is treated as authenticated submission (Date and Message-ID added, DKIM
//! signing) and accepted once on disk. Without a running server nothing is read or
//! written and the exit status is 75 (EX_TEMPFAIL), so the caller tries again later.

mod args;
mod client;
mod message;

use crate::config::{Config, ConfigSource};
use crate::smtp::address::Mailbox;
use args::{Mode, Options, Usage};
use client::{Client, Reply};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

// sysexits.h
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_IOERR: u8 = 74;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

const USAGE: &str = "\
usage: sendmail [-t] [-i|-oi] [-f SENDER] [-F NAME] [-N DSN] [-R RET] [-V ENVID] [RECIPIENT…]
       sendmail -bs | -bp | -q | -bi          (mailq is sendmail -bp)

  -t          also send to the To, Cc and Bcc recipients of the message (Bcc is removed)
  -i, -oi     a line with a single dot does not end the message
  -f SENDER   envelope sender (default: your login @ the server's hostname; <> for none)
  -F NAME     full name for the From header added when the message has none
  -N DSN      delivery notices: never, or some of success,delay,failure
  -R RET      what a notice returns: full or hdrs
  -V ENVID    envelope id for delivery notices
  -bm         read a message from standard input and send it (the default)
  -bs         speak SMTP on standard input and output
  -bp         list the queue (like mailq)
  -q          retry deferred mail now
  -C FILE, --config FILE   Tern configuration file
Other Sendmail options (-oem, -odi, -L tag, -B 8BITMIME, -v…) are accepted and ignored.
Exit status: 0 sent, 64 usage, 65 message refused, 67 unknown recipient, 75 try later
(the server is not running), 77 not allowed.
";

/// Runs as sendmail, mailq or newaliases when the program is called so.
pub fn by_program_name() -> Option<ExitCode> {
    let argv0 = std::env::args_os().next()?;
    let forced = match Path::new(&argv0).file_name()?.to_str()? {
        "sendmail" => None,
        "mailq" => Some(Mode::Queue),
        "newaliases" => Some(Mode::Aliases),
        _ => return None,
    };
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    Some(run(None, &args, forced))
}

/// `tern sendmail ARGS`; `forced` is the mode the program's name asks for.
pub fn run(config_flag: Option<&Path>, args: &[String], forced: Option<Mode>) -> ExitCode {
    let mut options = match args::parse(args) {
        Ok(o) => o,
        Err(Usage(message)) => return fail(EX_USAGE, &message),
    };
    if let Some(mode) = forced.filter(|_| options.mode != Mode::Help) {
        options.mode = mode;
    }
    if options.mode == Mode::Help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let source = ConfigSource::find(config_flag.or(options.config.as_deref()));
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => return fail(EX_CONFIG, &e.to_string()),
    };
    match options.mode {
        Mode::Queue => super::mailq::print(&config),
        Mode::Flush => super::queue::manage(&config, crate::queue::Action::Flush, None, Default::default()),
        Mode::Aliases => {
            println!("tern: aliases are read from [local.aliases] of the configuration; there is nothing to rebuild");
            ExitCode::SUCCESS
        }
        Mode::Smtp => smtp_session(&config),
        Mode::Deliver => deliver(&config, &options),
        Mode::Help => unreachable!(),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("sendmail: {message}");
    ExitCode::from(code)
}

/// Connects to the server, or says why not (with the exit status to use).
fn connect(config: &Config) -> Result<Client, ExitCode> {
    use std::io::ErrorKind::{ConnectionRefused, NotFound, PermissionDenied};
    let path = config.submit_socket();
    Client::connect(&path).map_err(|e| match e.kind() {
        NotFound | ConnectionRefused => fail(
            EX_TEMPFAIL,
            &format!(
                "the Tern mail server is not running (nothing listens on {}); nothing was sent, try again later",
                path.display()
            ),
        ),
        PermissionDenied => fail(
            EX_NOPERM,
            &format!("{}: permission denied: this user may not submit mail ([sendmail] socket)", path.display()),
        ),
        _ => fail(EX_TEMPFAIL, &format!("cannot reach the mail server at {}: {e}; nothing was sent", path.display())),
    })
}

/// `-bs`: standard input to the server, its replies to standard output.
fn smtp_session(config: &Config) -> ExitCode {
    let stream = match connect(config) {
        Ok(c) => c.into_stream(),
        Err(code) => {
            println!("421 4.3.0 Mail server not running, try again later\r");
            return code;
        }
    };
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    let Ok(mut to_server) = stream.try_clone() else { return fail(EX_IOERR, "cannot share the connection") };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_server);
        let _ = to_server.shutdown(std::net::Shutdown::Write);
    });
    let mut from_server = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match std::io::Read::read(&mut from_server, &mut buf) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(n) => {
                if stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
                    return ExitCode::from(EX_IOERR);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return fail(EX_IOERR, &format!("connection to the server lost: {e}")),
        }
    }
}

/// An address as given: `<>` or empty is the null sender; a bare name gets
/// `@hostname`, as Postfix appends `myorigin`.
fn qualify(address: &str, hostname: &str) -> Result<Option<String>, String> {
    let a = address.trim();
    let a = a.strip_prefix('<').and_then(|a| a.strip_suffix('>')).unwrap_or(a);
    if a.is_empty() {
        return Ok(None);
    }
    let full = if a.contains('@') { a.to_string() } else { format!("{a}@{hostname}") };
    Mailbox::parse(&full).map_err(|e| format!("{address:?} is not an address ({e})"))?;
    Ok(Some(full))
}

/// Reads the message from standard input and sends it.
fn deliver(config: &Config, o: &Options) -> ExitCode {
    let Some(account) = crate::passwd::current() else {
        return fail(EX_NOUSER, "this user has no account in the password database");
    };
    let hostname = &config.hostname;
    let sender = match o.sender.as_deref() {
        None => Some(format!("{}@{hostname}", account.login)),
        Some(s) => match qualify(s, hostname) {
            Ok(s) => s,
            Err(e) => return fail(EX_USAGE, &format!("-f: {e}")),
        },
    };
    let mut recipients = Vec::new();
    for arg in &o.recipients {
        for a in message::addresses_in_argument(arg) {
            match qualify(&a, hostname) {
                Ok(Some(a)) => recipients.push(a),
                Ok(None) => {}
                Err(e) => return fail(EX_USAGE, &format!("recipient {e}")),
            }
        }
    }
    if recipients.is_empty() && !o.extract {
        return fail(EX_USAGE, "no recipients: name them on the command line, or use -t to take them from the message");
    }
    // Only once the server answers is standard input read.
    let mut client = match connect(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut input = message::Input::new(std::io::stdin().lock(), o.ignore_dots);
    let mut header = match input.header() {
        Ok(h) => h,
        Err(e) => return fail(EX_DATAERR, &format!("{e}; nothing was sent")),
    };
    if o.extract {
        for a in header.recipients() {
            match qualify(&a, hostname) {
                Ok(Some(a)) => recipients.push(a),
                Ok(None) => {}
                Err(e) => return fail(EX_DATAERR, &format!("recipient in the message: {e}")),
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.to_lowercase()));
    if recipients.is_empty() {
        return fail(EX_USAGE, "no recipients: the message names none in To, Cc or Bcc; nothing was sent");
    }
    header.remove_bcc();
    if !header.has("From") {
        let name = o.full_name.clone().or_else(|| std::env::var("NAME").ok()).unwrap_or(account.full_name.clone());
        let from = sender.clone().unwrap_or_else(|| format!("{}@{hostname}", account.login));
        header.push(message::from_field(&name, &from));
    }
    let transaction = Transaction { sender: sender.as_deref(), recipients: &recipients, options: o };
    transaction.send(&mut client, &header, &mut input)
}

struct Transaction<'a> {
    sender: Option<&'a str>,
    recipients: &'a [String],
    options: &'a Options,
}

/// Where the transaction failed, for the message and the exit status.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Greeting,
    Sender,
    Recipient,
    Message,
}

impl Transaction<'_> {
    fn send<R: std::io::BufRead>(
        &self,
        client: &mut Client,
        header: &message::Header,
        input: &mut message::Input<R>,
    ) -> ExitCode {
        match self.exchange(client, header, input) {
            Ok(reply) => {
                if self.options.verbose {
                    eprintln!("sendmail: {reply}");
                }
                let _ = client.command("QUIT");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    }

    fn exchange<R: std::io::BufRead>(
        &self,
        client: &mut Client,
        header: &message::Header,
        input: &mut message::Input<R>,
    ) -> Result<Reply, ExitCode> {
        let lost = |e: std::io::Error| {
            fail(EX_TEMPFAIL, &format!("the mail server went away ({e}); nothing was sent, try again later"))
        };
        expect(client.reply().map_err(lost)?, 220, Stage::Greeting, client)?;
        expect(client.command("EHLO localhost").map_err(lost)?, 250, Stage::Greeting, client)?;
        let utf8 = self.sender.is_some_and(|s| !s.is_ascii()) || self.recipients.iter().any(|r| !r.is_ascii());
        let dsn = &self.options.dsn;
        let mut mail = format!("MAIL FROM:<{}> BODY=8BITMIME", self.sender.unwrap_or(""));
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        if let Some(ret) = &dsn.ret {
            mail.push_str(&format!(" RET={ret}"));
        }
        if let Some(envid) = &dsn.envid {
            mail.push_str(&format!(" ENVID={}", client::xtext(envid)));
        }
        expect(client.command(&mail).map_err(lost)?, 250, Stage::Sender, client)?;
        for r in self.recipients {
            let notify = dsn.notify.as_ref().map(|n| format!(" NOTIFY={n}")).unwrap_or_default();
            expect(client.command(&format!("RCPT TO:<{r}>{notify}")).map_err(lost)?, 250, Stage::Recipient, client)?;
        }
        expect(client.command("DATA").map_err(lost)?, 354, Stage::Message, client)?;
        let mut out = BufWriter::with_capacity(64 * 1024, client.writer());
        let written = (|| {
            for field in &header.fields {
                out.write_all(field).map_err(message::BodyError::Write)?;
            }
            out.write_all(b"\r\n").map_err(message::BodyError::Write)?;
            input.copy_body(&mut out)?;
            out.write_all(b".\r\n").and_then(|()| out.flush()).map_err(message::BodyError::Write)
        })();
        match written {
            Ok(()) => {}
            // Without the final dot the server drops what it got.
            Err(message::BodyError::Read(e)) => {
                return Err(fail(EX_IOERR, &format!("cannot read the message: {e}; nothing was sent")));
            }
            Err(message::BodyError::Write(e)) => return Err(lost(e)),
        }
        drop(out);
        expect(client.reply().map_err(lost)?, 250, Stage::Message, client)
    }
}

/// The reply if it has the expected code; else the exit status, having said why.
fn expect(reply: Reply, code: u16, stage: Stage, client: &mut Client) -> Result<Reply, ExitCode> {
    if reply.code == code {
        return Ok(reply);
    }
    let _ = client.command("QUIT");
    let (what, status) = match (stage, reply.code, reply.enhanced()) {
        (_, 400..=499, _) => ("the server cannot take mail now", EX_TEMPFAIL),
        (_, _, Some((5, 7))) => ("not allowed", EX_NOPERM),
        (Stage::Recipient, _, Some((5, 1))) => ("unknown recipient", EX_NOUSER),
        (Stage::Message, ..) => ("message refused", EX_DATAERR),
        (Stage::Greeting, ..) => ("the server refused the connection", EX_UNAVAILABLE),
        _ => ("refused", EX_UNAVAILABLE),
    };
    let advice = if status == EX_TEMPFAIL { "; try again later" } else { "" };
    Err(fail(status, &format!("{what}: {reply}; nothing was sent{advice}")))
}
