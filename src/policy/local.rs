//! Local recipients: domains, users, aliases and subaddresses.

use super::users::Users;
use crate::config::{Config, alias_domain};
use crate::smtp::Reply;
use crate::smtp::address::{Mailbox, canonical_domain};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Alias chains deeper than this are treated as loops.
const MAX_ALIAS_DEPTH: usize = 10;

/// Where one recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A local mailbox: `<mail_root>/<domain>/<mailbox>/`.
    Mailbox { domain: String, mailbox: String },
    /// Another server's address (reached through an alias).
    Remote(String),
}

impl Route {
    /// The address this route delivers to: `mailbox@domain` for a local mailbox (the
    /// Maildir's two directory names), the address as given for a remote one.
    pub fn address(&self) -> String {
        match self {
            Route::Mailbox { domain, mailbox } => format!("{mailbox}@{domain}"),
            Route::Remote(a) => a.clone(),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Route::Mailbox { .. })
    }
}

pub struct LocalPolicy {
    /// Canonical (A-label) domain → the domain's directory name.
    domains: HashMap<String, String>,
    /// (mailbox name, canonical domain) of every user.
    users: HashSet<(String, String)>,
    /// (local part, canonical domain) → targets.
    aliases: HashMap<(String, String), Vec<Target>>,
    /// Canonical domain → targets of its catch-all (`"@domain"` keys).
    catch_all: HashMap<String, Vec<Target>>,
    accept_unknown: bool,
    separator: String,
    /// Users of the users file are mailboxes too.
    accounts: Arc<Users>,
}

/// The key for a local part: unquoted and lower-cased.
fn local_key(m: &Mailbox) -> String {
    m.local_unquoted().to_lowercase()
}

fn key(m: &Mailbox) -> Option<(String, String)> {
    Some((local_key(m), m.canonical_domain()?))
}

/// A mailbox name must be safe as one directory name.
fn safe_mailbox_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.len() <= 255 && !name.chars().any(|c| c == '/' || c.is_control())
}

/// What an alias expands to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Address(Mailbox),
    /// `"@domain"`: the same local part in that domain (a domain alias).
    Domain(String),
}

impl Target {
    fn parse(s: &str) -> Option<Target> {
        match s.strip_prefix('@') {
            Some(domain) => alias_domain(domain).map(|_| Target::Domain(domain.to_string())),
            None => Mailbox::parse(s).ok().map(Target::Address),
        }
    }

    /// The address `to` goes to through this target.
    fn apply(&self, to: &Mailbox) -> Mailbox {
        match self {
            Target::Address(m) => m.clone(),
            Target::Domain(domain) => Mailbox { local: to.local.clone(), domain: domain.clone() },
        }
    }
}

fn user_unknown() -> Reply {
    Reply::new(550, (5, 1, 1), "Recipient address rejected: user unknown")
}

impl LocalPolicy {
    pub fn new(config: &Config, accounts: Arc<Users>) -> LocalPolicy {
        let local = &config.local;
        let domains = local
            .domains
            .iter()
            .filter_map(|d| Some((canonical_domain(d)?, d.trim_end_matches('.').to_lowercase())))
            .collect();
        let parse = |a: &String| Mailbox::parse(a).ok().and_then(|m| key(&m));
        let users = local.users.iter().filter_map(parse).collect();
        let targets = |to: &Vec<String>| to.iter().filter_map(|t| Target::parse(t)).collect::<Vec<_>>();
        let mut aliases = HashMap::new();
        let mut catch_all = HashMap::new();
        for (from, to) in &local.aliases {
            match from.strip_prefix('@') {
                Some(domain) => {
                    if let Some(domain) = alias_domain(domain) {
                        catch_all.insert(domain, targets(to));
                    }
                }
                None => {
                    if let Some(key) = parse(from) {
                        aliases.insert(key, targets(to));
                    }
                }
            }
        }
        LocalPolicy {
            domains,
            users,
            aliases,
            catch_all,
            accept_unknown: local.accept_unknown,
            separator: local.subaddress_separator.clone(),
            accounts,
        }
    }

    /// May the authenticated `user` use `sender` as envelope sender? Its own address
    /// (with any subaddress) or an alias that delivers to it; `<>` too.
    pub fn may_send_as(&self, user: &str, sender: Option<&Mailbox>) -> bool {
        let Some(sender) = sender else { return true };
        let Ok(user) = Mailbox::parse(user) else { return false };
        let Ok(own) = self.resolve(&user) else { return false };
        if key(sender) == key(&user) {
            return true;
        }
        match self.resolve(sender) {
            Ok(routes) if self.is_local(sender) => routes.iter().any(|r| own.contains(r)),
            _ => false,
        }
    }

    pub fn is_local(&self, mailbox: &Mailbox) -> bool {
        !mailbox.domain.is_empty() && mailbox.canonical_domain().is_some_and(|d| self.domains.contains_key(&d))
    }

    /// Where a local recipient goes, or why it is refused. `<Postmaster>` without a
    /// domain is the postmaster of the first local domain.
    pub fn resolve(&self, to: &Mailbox) -> Result<Vec<Route>, Reply> {
        let to = if to.domain.is_empty() {
            let first = self.domains.values().min().ok_or_else(user_unknown)?;
            Mailbox { local: "postmaster".into(), domain: first.clone() }
        } else {
            to.clone()
        };
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        self.expand(&to, 0, &mut seen, &mut routes)?;
        if routes.is_empty() {
            // Every branch of the alias tree looped back on itself.
            return Err(Reply::new(550, (5, 4, 6), "Alias loop"));
        }
        Ok(routes)
    }

    fn expand(
        &self,
        to: &Mailbox,
        depth: usize,
        seen: &mut HashSet<(String, String)>,
        out: &mut Vec<Route>,
    ) -> Result<(), Reply> {
        let Some((local, domain)) = key(to) else {
            return Err(user_unknown());
        };
        let Some(dir) = self.domains.get(&domain) else {
            let route = Route::Remote(to.to_string());
            if !out.contains(&route) {
                out.push(route);
            }
            return Ok(());
        };
        if depth > MAX_ALIAS_DEPTH || !seen.insert((local.clone(), domain.clone())) {
            return Ok(());
        }
        let base = match self.separator.as_str() {
            "" => local.clone(),
            sep => local.split_once(sep).map_or(local.clone(), |(b, _)| b.to_string()),
        };
        // Postfix's virtual alias order: the address, the address without its
        // subaddress, a user of that name, then the domain's catch-all.
        let alias = self
            .aliases
            .get(&(local.clone(), domain.clone()))
            .or_else(|| self.aliases.get(&(base.clone(), domain.clone())));
        let user =
            self.users.contains(&(base.clone(), domain.clone())) || self.accounts.contains(&format!("{base}@{domain}"));
        let targets = match alias {
            Some(targets) => Some(targets),
            None if user => None,
            // A catch-all does not catch its own targets (`postmaster@` as the
            // catch-all of its domain is that mailbox, as Postfix stops at an
            // address that expands to itself).
            None => self.catch_all.get(&domain).filter(|targets| {
                !targets.iter().any(|t| key(&t.apply(to)).is_some_and(|k| k == (local.clone(), domain.clone())))
            }),
        };
        if let Some(targets) = targets {
            for target in targets {
                self.expand(&target.apply(to), depth + 1, seen, out)?;
            }
            return Ok(());
        }
        // RFC 5321 §4.5.1: postmaster is always accepted, in any case.
        if !(user || self.accept_unknown || base == "postmaster") {
            return Err(user_unknown());
        }
        if !safe_mailbox_name(&base) {
            return Err(Reply::new(550, (5, 1, 3), "Recipient address rejected: invalid mailbox name"));
        }
        let route = Route::Mailbox { domain: dir.clone(), mailbox: base };
        if !out.contains(&route) {
            out.push(route);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> LocalPolicy {
        let text = format!(
            "[local]\ndomains = [\"Example.test\", \"bücher.test\"]\nusers = [\"alice@example.test\", \"bob@example.test\"]\n{extra}"
        );
        let config = Config::parse(&text, "t").unwrap();
        LocalPolicy::new(&config, Arc::new(Users::open(std::path::PathBuf::from("/nonexistent/users.toml"))))
    }

    fn resolve(p: &LocalPolicy, addr: &str) -> Result<Vec<String>, u16> {
        let m = Mailbox::parse(addr).unwrap();
        p.resolve(&m).map(|r| r.iter().map(Route::address).collect()).map_err(|e| e.code)
    }

    #[test]
    fn users_case_and_subaddress() {
        let p = policy("");
        assert_eq!(resolve(&p, "Alice@EXAMPLE.test.").unwrap(), ["alice@example.test"]);
        assert_eq!(resolve(&p, "alice+news@example.test").unwrap(), ["alice@example.test"]);
        assert_eq!(resolve(&p, "carol@example.test"), Err(550));
        assert_eq!(resolve(&p, "PostMaster@example.test").unwrap(), ["postmaster@example.test"]);
        assert!(p.is_local(&Mailbox::parse("x@xn--bcher-kva.test").unwrap()));
        assert!(!p.is_local(&Mailbox::parse("a@remote.test").unwrap()));
    }

    #[test]
    fn aliases_expand_with_loop_protection() {
        let p = policy(
            "[local.aliases]\n\"team@example.test\" = [\"alice@example.test\", \"bob@elsewhere.test\", \"team@example.test\"]\n\"a@example.test\" = [\"b@example.test\"]\n\"b@example.test\" = [\"a@example.test\"]\n\"postmaster@example.test\" = [\"bob@example.test\"]\n",
        );
        assert_eq!(resolve(&p, "team@example.test").unwrap(), ["alice@example.test", "bob@elsewhere.test"]);
        assert_eq!(resolve(&p, "a@example.test"), Err(550));
        assert_eq!(resolve(&p, "postmaster@example.test").unwrap(), ["bob@example.test"]);
    }

    #[test]
    fn address_tricks_stay_local_or_fail() {
        let p = policy("accept_unknown = true\n");
        assert_eq!(resolve(&p, "user%remote.test@example.test").unwrap(), ["user%remote.test@example.test"]);
        assert_eq!(resolve(&p, "\"user@remote.test\"@example.test").unwrap(), ["user@remote.test@example.test"]);
        assert_eq!(resolve(&p, "\"../etc\"@example.test"), Err(550));
        assert_eq!(resolve(&p, "\"a/b\"@example.test"), Err(550));
    }

    #[test]
    fn catch_all_comes_after_users_and_aliases() {
        let p = policy(
            "[local.aliases]\n\"@example.test\" = [\"bob@example.test\"]\n\"sales@example.test\" = [\"alice@example.test\"]\n",
        );
        assert_eq!(resolve(&p, "alice@example.test").unwrap(), ["alice@example.test"]);
        assert_eq!(resolve(&p, "alice+x@example.test").unwrap(), ["alice@example.test"]);
        assert_eq!(resolve(&p, "sales@example.test").unwrap(), ["alice@example.test"]);
        assert_eq!(resolve(&p, "sales+y@example.test").unwrap(), ["alice@example.test"]);
        assert_eq!(resolve(&p, "nobody@example.test").unwrap(), ["bob@example.test"]);
        assert_eq!(resolve(&p, "Nobody+z@EXAMPLE.test").unwrap(), ["bob@example.test"]);
        // Another domain has no catch-all.
        assert_eq!(resolve(&p, "nobody@bücher.test"), Err(550));
    }

    #[test]
    fn domain_alias_keeps_the_local_part() {
        let p = policy(
            "[local.aliases]\n\"@bücher.test\" = [\"@example.test\"]\n\"old@example.test\" = [\"@remote.test\"]\n",
        );
        assert_eq!(resolve(&p, "bob@xn--bcher-kva.test").unwrap(), ["bob@example.test"]);
        assert_eq!(resolve(&p, "Bob+tag@bücher.test").unwrap(), ["bob@example.test"]);
        // The new address must exist: RCPT is refused otherwise.
        let e = p.resolve(&Mailbox::parse("carol@bücher.test").unwrap()).unwrap_err();
        assert_eq!((e.code, e.status), (550, Some(crate::smtp::reply::Status(5, 1, 1))), "{e:?}");
        assert_eq!(resolve(&p, "old@example.test").unwrap(), ["old@remote.test"]);
    }

    #[test]
    fn domain_alias_into_a_catch_all_or_an_open_domain() {
        let p = policy(
            "[local.aliases]\n\"@bücher.test\" = [\"@example.test\"]\n\"@example.test\" = [\"postmaster@example.test\"]\n",
        );
        assert_eq!(resolve(&p, "carol@bücher.test").unwrap(), ["postmaster@example.test"]);
        let open = policy("accept_unknown = true\n[local.aliases]\n\"@bücher.test\" = [\"@example.test\"]\n");
        assert_eq!(resolve(&open, "carol@bücher.test").unwrap(), ["carol@example.test"]);
    }

    #[test]
    fn domain_alias_loops_are_refused() {
        let p =
            policy("[local.aliases]\n\"@bücher.test\" = [\"@example.test\"]\n\"@example.test\" = [\"@bücher.test\"]\n");
        assert_eq!(resolve(&p, "alice@bücher.test").unwrap(), ["alice@example.test"]);
        let e = p.resolve(&Mailbox::parse("carol@bücher.test").unwrap()).unwrap_err();
        assert_eq!((e.code, e.status), (550, Some(crate::smtp::reply::Status(5, 4, 6))), "{e:?}");
    }

    #[test]
    fn sender_ownership() {
        let p = policy("[local.aliases]\n\"sales@example.test\" = [\"alice@example.test\"]\n");
        let m = |a: &str| Mailbox::parse(a).unwrap();
        assert!(p.may_send_as("alice@example.test", Some(&m("Alice+x@example.test"))));
        assert!(p.may_send_as("alice@example.test", Some(&m("sales@example.test"))));
        assert!(p.may_send_as("alice@example.test", None));
        assert!(!p.may_send_as("alice@example.test", Some(&m("bob@example.test"))));
        assert!(!p.may_send_as("alice@example.test", Some(&m("ceo@remote.test"))));
    }
}
