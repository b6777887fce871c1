//! A throwaway PostgreSQL for the cluster tests: `initdb` and `pg_ctl` in a temp
//! directory, on a free loopback port, stopped (immediately) when dropped. As root
//! it runs as `nobody`, since PostgreSQL refuses to run as root.

use super::{CLIENT_TIMEOUT, Out, free_port, run, run_with_input};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where `initdb`, `pg_ctl` and `postgres` are: on PATH, else Debian's
/// `/usr/lib/postgresql/<version>/bin` (the newest).
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL server of the test's own.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// The unprivileged user it runs as, when the test runs as root.
    user: Option<&'static str>,
}

impl Postgres {
    /// Makes and starts a new cluster; None (after saying SKIPPED) without PostgreSQL.
    pub fn start(test: &str) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            println!("SKIPPED: {test}: PostgreSQL (initdb, pg_ctl) is not installed");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("tern-pg-").tempdir().expect("temp dir");
        let user = (unsafe { libc::geteuid() } == 0).then_some("nobody");
        if let Some(user) = user {
            let mut chown = Command::new("chown");
            chown.args(["-R", user, dir.path().to_str().unwrap()]);
            let out = run(chown, CLIENT_TIMEOUT);
            out.assert_success("chown the PostgreSQL directory");
        }
        let pg = Postgres { port: free_port(), dir, bin, user };
        let data = pg.data();
        let out = pg.run_as(
            "initdb",
            &["-D", data.to_str().unwrap(), "-U", "tern", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-locale"],
            Duration::from_secs(60),
        );
        out.assert_success("initdb");
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\n\
             shared_buffers = 32MB\nlog_min_messages = warning\n",
            pg.port,
            pg.dir.path().display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .expect("write postgresql.conf");
        pg.start_again();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of PostgreSQL's programs, as the unprivileged user when root.
    fn run_as(&self, program: &str, args: &[&str], timeout: Duration) -> Out {
        let mut path = self.bin.join(program);
        if !path.is_file() {
            // PATH may hold links to only some of the programs: the real directory has all.
            let real = std::fs::canonicalize(self.bin.join("initdb")).expect("initdb");
            path = real.with_file_name(program);
        }
        let mut cmd = match self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args).current_dir(self.dir.path());
        run(cmd, timeout)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let (data, log) = (self.data(), self.log());
        let out = self.run_as(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
            Duration::from_secs(70),
        );
        if !out.success() {
            panic!("pg_ctl start failed: {}\n{}", out.all(), std::fs::read_to_string(&log).unwrap_or_default());
        }
    }

    /// Stops the server at once (as a crash would: no shutdown checkpoint).
    pub fn stop(&self) {
        let data = self.data();
        let out = self.run_as(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-w", "-t", "60", "-m", "immediate", "stop"],
            Duration::from_secs(70),
        );
        out.assert_success("pg_ctl stop");
    }

    /// The connection string for `[cluster] database`.
    pub fn url(&self) -> String {
        format!("postgres://tern@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// Runs SQL with psql; its output rows, unaligned and without headers.
    pub fn psql(&self, sql: &str) -> Out {
        let mut cmd = Command::new(self.bin.join("psql"));
        if !cmd.get_program().to_str().is_some_and(|p| Path::new(p).is_file()) {
            cmd = Command::new("psql");
        }
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "tern", "-d", "postgres"])
            .arg("-p")
            .arg(self.port.to_string());
        run_with_input(cmd, Some(sql.as_bytes()), CLIENT_TIMEOUT)
    }

    /// The single value a query returns.
    pub fn value(&self, sql: &str) -> String {
        let out = self.psql(sql);
        out.assert_success(sql);
        out.stdout.trim().to_string()
    }

    /// Turns TLS on (a reload) with `cert` and `key` (PEM), copied into its directory.
    pub fn enable_ssl(&self, cert: &Path, key: &Path) {
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = self.dir.path().join(name);
            std::fs::copy(from, &to).expect("copy the certificate");
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            if let Some(user) = self.user {
                let mut chown = Command::new("chown");
                chown.arg(user).arg(&to);
                run(chown, CLIENT_TIMEOUT).assert_success("chown the certificate");
            }
        }
        let dir = self.dir.path().display();
        self.value(&format!(
            "ALTER SYSTEM SET ssl_cert_file = '{dir}/server.crt';\nALTER SYSTEM SET ssl_key_file = '{dir}/server.key';\n\
             ALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();"
        ));
        super::outbound::wait_for(
            Duration::from_secs(10),
            "ssl = on",
            || (self.value("SHOW ssl") == "on").then_some(()),
            || std::fs::read_to_string(self.log()).unwrap_or_default(),
        );
    }

    /// A streaming standby of this server (`pg_basebackup -R`), started; it becomes
    /// this server's synchronous standby with `synchronous_commit = remote_apply`.
    pub fn start_standby(&self) -> Postgres {
        let dir = tempfile::Builder::new().prefix("tern-pg-").tempdir().expect("temp dir");
        if let Some(user) = self.user {
            let mut chown = Command::new("chown");
            chown.args(["-R", user, dir.path().to_str().unwrap()]);
            run(chown, CLIENT_TIMEOUT).assert_success("chown the standby's directory");
        }
        let standby = Postgres { port: free_port(), dir, bin: self.bin.clone(), user: self.user };
        let data = standby.data();
        let port = self.port.to_string();
        let out = standby.run_as(
            "pg_basebackup",
            &["-D", data.to_str().unwrap(), "-R", "-X", "stream", "-h", "127.0.0.1", "-p", &port, "-U", "tern"],
            Duration::from_secs(60),
        );
        out.assert_success("pg_basebackup");
        let conf = format!("port = {}\nunix_socket_directories = '{}'\n", standby.port, standby.dir.path().display());
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .expect("write the standby's postgresql.conf");
        standby.start_again();
        self.value(
            "ALTER SYSTEM SET synchronous_standby_names = '*';\n\
             ALTER SYSTEM SET synchronous_commit = remote_apply;\nSELECT pg_reload_conf();",
        );
        super::outbound::wait_for(
            Duration::from_secs(30),
            "the standby to stream synchronously",
            || {
                let state = self.value("SELECT sync_state FROM pg_stat_replication");
                (state == "sync").then_some(())
            },
            || std::fs::read_to_string(standby.log()).unwrap_or_default(),
        );
        standby
    }

    /// Kills the postmaster and every process of it with SIGKILL, as a lost machine.
    pub fn kill9(&self) {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        let pid: i32 = pid_file.lines().next().and_then(|l| l.trim().parse().ok()).expect("postmaster's pid");
        let mut victims = vec![pid];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent's pid is the second field after the parenthesised name.
            let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            if parent == Some(pid) {
                victims.push(child);
            }
        }
        for victim in victims {
            unsafe { libc::kill(victim, libc::SIGKILL) };
        }
        let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub fn promote(&self) {
        let data = self.data();
        let out = self.run_as(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-w", "-t", "60", "promote"],
            Duration::from_secs(70),
        );
        out.assert_success("pg_ctl promote");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        if data.join("postmaster.pid").exists() {
            let _ = self.run_as(
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-w", "-t", "30", "-m", "immediate", "stop"],
                Duration::from_secs(40),
            );
        }
    }
}
