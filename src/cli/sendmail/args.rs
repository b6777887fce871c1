//! The command line of sendmail(1), as Postfix reads it: getopt-style flags (grouped,
//! with their values attached or in the next word) anywhere before `--`; harmless
//! Sendmail flags are accepted and ignored.

use std::path::PathBuf;

/// What the command is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Read a message from standard input and send it (`-bm`, the default).
    #[default]
    Deliver,
    /// Speak SMTP on standard input and output (`-bs`).
    Smtp,
    /// List the queue (`-bp`, or the command called `mailq`).
    Queue,
    /// Retry deferred mail now (`-q`).
    Flush,
    /// Rebuild the alias database (`-bi`, `-I`, `newaliases`): nothing to do here.
    Aliases,
    /// Print the usage (`--help`).
    Help,
}

/// DSN requests (RFC 3461) of `-N`, `-R` and `-V`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dsn {
    /// `NEVER` or a comma list of `SUCCESS`, `DELAY`, `FAILURE`.
    pub notify: Option<String>,
    /// `FULL` or `HDRS`.
    pub ret: Option<String>,
    pub envid: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    /// `-t`: recipients from To, Cc and Bcc as well.
    pub extract: bool,
    /// `-i`, `-oi`: a line with a single dot does not end the message.
    pub ignore_dots: bool,
    /// `-f`, `-r`: the envelope sender (`<>` or empty for the null sender).
    pub sender: Option<String>,
    /// `-F`: the full name for a From header that is added.
    pub full_name: Option<String>,
    pub dsn: Dsn,
    /// `-C FILE` or `--config FILE`.
    pub config: Option<PathBuf>,
    /// `-v`: say what happened.
    pub verbose: bool,
    pub recipients: Vec<String>,
}

/// A usage error: the command exits with EX_USAGE.
#[derive(Debug, PartialEq, Eq)]
pub struct Usage(pub String);

/// Flags that take a value (Postfix's getopt string, plus `A`, `L`, `O` of Sendmail).
const WITH_VALUE: &str = "ABCFLNORVXbefhopqr";

pub fn parse(args: &[String]) -> Result<Options, Usage> {
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            o.recipients.extend(args[i..].iter().cloned());
            break;
        }
        if arg == "--help" {
            o.mode = Mode::Help;
            continue;
        }
        if let Some(rest) = arg.strip_prefix("--config") {
            let value = match rest.strip_prefix('=') {
                Some(v) => v.to_string(),
                None if rest.is_empty() => take(args, &mut i, "--config")?,
                None => return Err(unknown(arg)),
            };
            o.config = Some(PathBuf::from(value));
            continue;
        }
        if arg.starts_with("--") || !arg.starts_with('-') || arg == "-" {
            if arg.starts_with("--") {
                return Err(unknown(arg));
            }
            o.recipients.push(arg.clone());
            continue;
        }
        for (at, flag) in arg[1..].char_indices() {
            if !WITH_VALUE.contains(flag) {
                match flag {
                    't' => o.extract = true,
                    'i' => o.ignore_dots = true,
                    'v' => o.verbose = true,
                    'I' => o.mode = Mode::Aliases,
                    // -G gateway, -U initial submission, -c, -m (me too), -n (no aliases), -x.
                    'G' | 'U' | 'c' | 'm' | 'n' | 'x' => {}
                    _ => return Err(unknown(&format!("-{flag}"))),
                }
                continue;
            }
            let attached = &arg[1 + at + flag.len_utf8()..];
            // `-q` alone flushes: its value (an interval) is only ever attached.
            let value = if attached.is_empty() && flag != 'q' {
                take(args, &mut i, &format!("-{flag}"))?
            } else {
                attached.to_string()
            };
            apply(&mut o, flag, value)?;
            break;
        }
    }
    Ok(o)
}

fn take(args: &[String], i: &mut usize, flag: &str) -> Result<String, Usage> {
    let value = args.get(*i).cloned().ok_or_else(|| Usage(format!("option {flag} needs a value")))?;
    *i += 1;
    Ok(value)
}

fn unknown(flag: &str) -> Usage {
    Usage(format!("unknown option {flag} (see `tern sendmail --help`)"))
}

fn apply(o: &mut Options, flag: char, value: String) -> Result<(), Usage> {
    match flag {
        'b' => {
            o.mode = match value.as_str() {
                "m" => Mode::Deliver,
                "s" => Mode::Smtp,
                "p" => Mode::Queue,
                "i" => Mode::Aliases,
                "d" => return Err(Usage("-bd: run the server with `tern serve`".into())),
                _ => return Err(Usage(format!("-b{value}: mode not supported (use -bm, -bs, -bp or -bi)"))),
            }
        }
        'f' | 'r' => o.sender = Some(value),
        'F' => o.full_name = Some(value),
        'C' => o.config = Some(PathBuf::from(value)),
        'N' => o.dsn.notify = Some(notify(&value)?),
        'R' => match value.to_ascii_lowercase().as_str() {
            "full" | "hdrs" => o.dsn.ret = Some(value.to_ascii_uppercase()),
            _ => return Err(Usage(format!("-R {value}: say full or hdrs"))),
        },
        'V' => {
            if value.is_empty() || value.len() > 100 || !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return Err(Usage(format!("-V {value:?}: an envelope id is 1 to 100 printable ASCII characters")));
            }
            o.dsn.envid = Some(value);
        }
        // -oi is -i; every other Sendmail option (-oem, -odi, -oee, -om, …) is ignored.
        'o' if value == "i" => o.ignore_dots = true,
        'q' => {
            if !value.is_empty() {
                return Err(Usage(format!("-q{value}: only -q (flush the queue now) is supported")));
            }
            o.mode = Mode::Flush;
        }
        // -A (submit file), -B (body type), -L (log tag), -O, -X, -e, -h (hops), -p (protocol).
        _ => {}
    }
    Ok(())
}

/// `-N never` or a comma list of `success`, `delay`, `failure`.
fn notify(value: &str) -> Result<String, Usage> {
    let words: Vec<String> = value.split(',').map(|w| w.trim().to_ascii_uppercase()).collect();
    let known = |w: &String| matches!(w.as_str(), "SUCCESS" | "DELAY" | "FAILURE");
    let ok = match words.as_slice() {
        [one] if one == "NEVER" => true,
        _ => words.iter().all(known),
    };
    if !ok {
        return Err(Usage(format!("-N {value}: say never, or some of success,delay,failure")));
    }
    Ok(words.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, Usage> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_as_postfix_reads_them() {
        let o = p(&[
            "-t",
            "-oi",
            "-fbob@x.test",
            "-F",
            "Bob B",
            "-N",
            "delay,failure",
            "-R",
            "hdrs",
            "-V",
            "E1",
            "a@x.test",
        ])
        .unwrap();
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("bob@x.test"));
        assert_eq!(o.full_name.as_deref(), Some("Bob B"));
        assert_eq!(o.dsn.notify.as_deref(), Some("DELAY,FAILURE"));
        assert_eq!(o.dsn.ret.as_deref(), Some("HDRS"));
        assert_eq!(o.dsn.envid.as_deref(), Some("E1"));
        assert_eq!(o.recipients, ["a@x.test"]);
        // s-nail: `-i -F Alice -f alice@x -- bob@x`; grouped flags; options after recipients.
        let o = p(&["-i", "-F", "Alice", "-f", "alice@x", "--", "-odd@x"]).unwrap();
        assert_eq!(o.recipients, ["-odd@x"]);
        let o = p(&["-ti", "a@x", "-odi", "-oem", "-L", "tag", "-B", "8BITMIME", "-v", "-bm"]).unwrap();
        assert!(o.extract && o.ignore_dots && o.verbose && o.mode == Mode::Deliver);
        assert_eq!(p(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(p(&["-bp"]).unwrap().mode, Mode::Queue);
        assert_eq!(p(&["-N", "never"]).unwrap().dsn.notify.as_deref(), Some("NEVER"));
        assert_eq!(p(&["-q"]).unwrap().mode, Mode::Flush);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for bad in
            [&["-k"][..], &["-bv"], &["-N", "sometimes"], &["-N", "never,delay"], &["-R", "all"], &["-f"], &["--frob"]]
        {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
