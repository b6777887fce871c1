//! `[cluster]`: nodes sharing one PostgreSQL database for their queue. No section,
//! the local spool.

use super::humantime_serde;
use serde::Deserialize;
use std::time::Duration;

/// Membership of a cluster of Tern nodes on PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// `postgres://user:password@host[:port]/db[?sslmode=disable|prefer|require|verify-ca|verify-full]`
    /// (or libpq's `key=value` form).
    pub database: String,
    /// This node's name, unique in the cluster; default the machine's host name.
    #[serde(default = "default_node")]
    pub node: String,
    /// How long a node owns a delivery attempt before another may take it over.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Database connections this node keeps at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// CA certificates (PEM) trusted for the database's certificate with
    /// `sslmode=verify-ca|verify-full`; default the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_node() -> String {
    super::default_hostname()
}

fn default_lease() -> Duration {
    Duration::from_secs(120)
}

fn default_pool_size() -> usize {
    16
}

impl Cluster {
    pub fn validate(&self) -> Result<(), String> {
        if self.node.is_empty() || self.node.len() > 200 || self.node.chars().any(|c| c.is_control()) {
            return Err(format!("cluster.node: {:?} is not a usable node name", self.node));
        }
        if self.lease < Duration::from_secs(1) {
            return Err("cluster.lease: at least 1s".into());
        }
        if self.pool_size < 2 {
            return Err("cluster.pool_size: at least 2".into());
        }
        crate::cluster::parse_database(&self.database).map(|_| ()).map_err(|e| format!("cluster.database: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, EMBEDDED_DEFAULT};
    use std::time::Duration;

    /// The commented-out `[cluster]` of the embedded default, uncommented, is a
    /// valid section with every key.
    #[test]
    fn default_shows_a_valid_section() {
        let section: String = EMBEDDED_DEFAULT
            .lines()
            .skip_while(|l| !l.starts_with("# [cluster]"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let c = Config::parse(&section, "t").expect("the section parses").cluster.expect("a section");
        assert!(c.database.starts_with("postgres://"));
        assert_eq!((c.node.as_str(), c.lease, c.pool_size), ("mx1", Duration::from_secs(120), 16));
        assert!(c.ca_file.is_some());
    }
}
