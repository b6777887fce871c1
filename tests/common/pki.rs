//! Certificates for tests, made with openssl in a temp dir: a test CA and
//! certificates it signs (for DNS names and IP addresses).

use super::run;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::Builder::new().prefix("tern-ca-").tempdir().expect("tempdir");
        let mut cmd = Command::new("openssl");
        cmd.current_dir(dir.path()).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
        ]);
        cmd.arg(format!("/CN={name}"));
        cmd.args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        run(cmd, Duration::from_secs(60)).assert_success("openssl req (CA)");
        TestCa { dir }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate signed by the CA for `sans` (`DNS:name` or `IP:addr`), named
    /// `file` in the CA's dir: (cert, key).
    pub fn issue(&self, file: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (key, csr, cert, ext) = (
            d.join(format!("{file}.key")),
            d.join(format!("{file}.csr")),
            d.join(format!("{file}.pem")),
            d.join(format!("{file}.ext")),
        );
        fs::write(
            &ext,
            format!("subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n", sans.join(",")),
        )
        .expect("write ext");
        let mut cmd = Command::new("openssl");
        cmd.current_dir(d).args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj"]);
        cmd.arg(format!("/CN={file}")).arg("-keyout").arg(&key).arg("-out").arg(&csr);
        run(cmd, Duration::from_secs(60)).assert_success("openssl req (leaf)");
        let mut cmd = Command::new("openssl");
        cmd.current_dir(d).args(["x509", "-req", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]);
        cmd.arg("-in").arg(&csr).arg("-out").arg(&cert).arg("-extfile").arg(&ext);
        run(cmd, Duration::from_secs(60)).assert_success("openssl x509 -req");
        (cert, key)
    }
}
