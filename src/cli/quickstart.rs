//! `tern quickstart ADDRESS`: a complete configuration for the address's domain, like
//! `mox quickstart`: listeners on 25, 587 and 465, the domain local, the user with a
//! generated password (shown once, stored as an argon2id hash), a DKIM key; then the
//! DNS records to publish and how to run the server as a service.

use super::dkim::{make_key, txt_value};
use crate::config::{Config, DkimAlgorithm};
use crate::smtp::address::{Mailbox, canonical_domain};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Letters and digits that cannot be mistaken for one another.
const PASSWORD_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

pub struct Options {
    pub address: String,
    pub hostname: Option<String>,
    /// Where the configuration goes (default /etc/tern).
    pub dir: PathBuf,
    /// The data directory it names (default /var/lib/tern).
    pub data_dir: PathBuf,
}

pub fn quickstart(o: &Options) -> ExitCode {
    match run(o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The machine's name when it is a full domain name, else `mail.DOMAIN`.
fn default_hostname(domain: &str) -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_lowercase();
    if name.contains('.') && canonical_domain(&name).is_some() { name } else { format!("mail.{domain}") }
}

fn password() -> Result<String, String> {
    let mut bytes = [0u8; 20];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for a password: {e}"))?;
    Ok(bytes.iter().map(|b| PASSWORD_ALPHABET[*b as usize % PASSWORD_ALPHABET.len()] as char).collect())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn run(o: &Options) -> Result<(), String> {
    let mailbox = Mailbox::parse(&o.address).map_err(|e| format!("{:?} is not an address ({e})", o.address))?;
    let domain = mailbox.canonical_domain().ok_or_else(|| format!("{:?} has no valid domain", o.address))?;
    let address = format!("{}@{domain}", mailbox.local_unquoted().to_lowercase());
    let hostname = o.hostname.clone().unwrap_or_else(|| default_hostname(&domain));
    let hostname = canonical_domain(&hostname).ok_or_else(|| format!("{hostname:?} is not a host name"))?;
    let config_path = o.dir.join("tern.toml");
    if config_path.exists() {
        return Err(format!("{} exists already; nothing was changed", config_path.display()));
    }
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("cannot create {}: {e}", o.dir.display()))?;
    let data_dir = std::path::absolute(&o.data_dir).unwrap_or(o.data_dir.clone());
    // The key and the user are made with the configuration they will be used with.
    let mut text = config_text(&address, &domain, &hostname, &data_dir, None);
    let config = Config::parse(&text, "quickstart").map_err(|e| e.to_string())?;
    let key = make_key(&config, &domain, None, DkimAlgorithm::RsaSha256, None).map_err(|(_, e)| e)?;
    text = config_text(&address, &domain, &hostname, &data_dir, Some((&key.selector, &key.path)));
    let config = Config::parse(&text, "quickstart").map_err(|e| e.to_string())?;
    let secret = password()?;
    crate::files::create_data_dir(&config).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    crate::policy::users::set_password(&config.users_file(), &address, &secret, false)?;
    // Written last and whole: a configuration is there only when all it names is.
    let tmp = o.dir.join(".tern.toml.new");
    std::fs::write(&tmp, &text)
        .and_then(|()| std::fs::rename(&tmp, &config_path))
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    print!("{}", report(&address, &domain, &hostname, &config_path, &secret, &key.zone_line, &data_dir));
    Ok(())
}

fn config_text(address: &str, domain: &str, hostname: &str, data_dir: &Path, key: Option<(&str, &Path)>) -> String {
    let mut t = String::new();
    let q = toml_string;
    let _ = writeln!(t, "# Tern configuration for {domain}, written by `tern quickstart {address}`.");
    let _ =
        writeln!(t, "# Check it with `tern config check`; every other key and its default: `tern config default`.\n");
    let _ = writeln!(t, "hostname = {}", q(hostname));
    let _ = writeln!(t, "data_dir = {}\n", q(&data_dir.display().to_string()));
    for (port, mode, what) in [
        (25, "smtp", "mail from other servers"),
        (587, "submission", "your mail programs: STARTTLS, then AUTH"),
        (465, "submissions", "the same with TLS from the start"),
    ] {
        let _ = writeln!(t, "[[listen]]\naddr = \"0.0.0.0:{port}\"\nmode = \"{mode}\"   # {what}\n");
    }
    let _ = writeln!(t, "# For IPv6 too, add each listener again with addr = \"[::]:25\" and so on.\n");
    let _ = writeln!(t, "[local]");
    let _ = writeln!(t, "# The server's own name is local too, for the mail of its programs (cron, sendmail).");
    let _ = writeln!(t, "domains = [{}, {}]\n", q(domain), q(hostname));
    let _ = writeln!(t, "[local.aliases]");
    for alias in [
        format!("postmaster@{domain}"),
        format!("abuse@{domain}"),
        format!("postmaster@{hostname}"),
        format!("root@{hostname}"),
    ] {
        let _ = writeln!(t, "{} = [{}]", q(&alias), q(address));
    }
    let _ = writeln!(t, "\n# A certificate for {hostname} (for instance from certbot); without one a");
    let _ = writeln!(t, "# self-signed certificate is made at first start, which mail programs warn about.");
    let _ = writeln!(t, "[tls]");
    let _ = writeln!(t, "# cert = \"/etc/letsencrypt/live/{hostname}/fullchain.pem\"");
    let _ = writeln!(t, "# key = \"/etc/letsencrypt/live/{hostname}/privkey.pem\"");
    if let Some((selector, path)) = key {
        let _ = writeln!(t, "\n[[dkim]]\ndomain = {}\nselector = {}", q(domain), q(selector));
        let _ = writeln!(t, "key = {}\nalgorithm = \"rsa-sha256\"", q(&path.display().to_string()));
    }
    t
}

/// The systemd unit and the sysusers(5) file Tern ships, as installed by its package.
const UNIT: &str = include_str!("../../contrib/tern.service");
const SYSUSERS: &str = include_str!("../../contrib/tern.sysusers");
/// The state directory the shipped unit gives the user `tern`.
const UNIT_STATE_DIR: &str = "/var/lib/tern";

/// The shipped unit, naming `config` where it names `/etc/tern/tern.toml`.
fn unit_for(config: &Path) -> String {
    UNIT.replace(crate::config::ETC_CONFIG, &config.display().to_string())
}

/// `cat > PATH <<'EOF'` … `EOF`, indented as a shell example.
fn here_document(r: &mut String, path: &str, text: &str) {
    let _ = writeln!(r, "    cat > {path} <<'EOF'");
    for line in text.lines() {
        let _ = writeln!(r, "    {line}");
    }
    let _ = writeln!(r, "    EOF");
}

fn report(
    address: &str,
    domain: &str,
    hostname: &str,
    config: &Path,
    secret: &str,
    dkim: &str,
    data_dir: &Path,
) -> String {
    let config_path = std::path::absolute(config).unwrap_or(config.to_path_buf());
    let c = config_path.display();
    let config_flag =
        if config_path == Path::new(crate::config::ETC_CONFIG) { String::new() } else { format!(" --config {c}") };
    let mut r = String::new();
    let _ = writeln!(r, "Wrote {c} for {domain}, served as {hostname}.\n");
    let _ = writeln!(
        r,
        "{address} may send mail from mail programs (ports 587 and 465, user name {address}) with the password\n"
    );
    let _ = writeln!(r, "    {secret}\n");
    let _ = writeln!(
        r,
        "It is shown only this once: note it now. Change it with `tern user passwd {address}{config_flag}`.\n"
    );
    let _ = writeln!(r, "Publish these DNS records (zone-file lines):\n");
    let _ = writeln!(r, "{domain}. IN MX 10 {hostname}.");
    let _ = writeln!(r, "{domain}. IN TXT {}", txt_value("v=spf1 mx -all"));
    let _ = writeln!(r, "{hostname}. IN TXT {}", txt_value("v=spf1 a -all"));
    let _ = writeln!(r, "{dkim}");
    let _ = writeln!(
        r,
        "_dmarc.{domain}. IN TXT {}",
        txt_value(&format!("v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"))
    );
    let _ = writeln!(r, "{hostname}. IN A <this server's IPv4 address>   (and AAAA for its IPv6 address, if any)");
    let _ = writeln!(r, "and ask the provider of those addresses for reverse DNS (PTR) naming {hostname}.");
    let _ = writeln!(r, "Then check them with `tern dns check {domain}{config_flag}`.\n");
    let _ = writeln!(
        r,
        "Run the server as a service with the systemd unit Tern ships (contrib/tern.service), the binary\n\
         installed as /usr/sbin/tern; it runs as the user tern, made by systemd-sysusers:\n"
    );
    here_document(&mut r, "/usr/lib/sysusers.d/tern.conf", SYSUSERS);
    here_document(&mut r, "/etc/systemd/system/tern.service", &unit_for(&config_path));
    if data_dir != Path::new(UNIT_STATE_DIR) {
        let _ = writeln!(
            r,
            "\nThe unit lets Tern write only to {UNIT_STATE_DIR}: for {}, add ReadWritePaths={} with\n\
             `systemctl edit tern`.",
            data_dir.display(),
            data_dir.display()
        );
    }
    let _ = writeln!(r, "\n    systemd-sysusers && chown -R tern:tern {}", data_dir.display());
    let _ = writeln!(r, "    systemctl daemon-reload && systemctl enable --now tern\n");
    let _ = writeln!(r, "Local programs (cron, scripts) send through sendmail(1):\n");
    let _ = writeln!(r, "    ln -s /usr/sbin/tern /usr/sbin/sendmail && ln -s /usr/sbin/tern /usr/bin/mailq");
    r
}
