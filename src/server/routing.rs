//! Routing of addresses for the queue's notices, from the local policy.

use crate::policy::LocalPolicy;
use crate::queue::Router;
use crate::smtp::address::Mailbox;
use std::sync::Arc;

pub struct PolicyRouter(pub Arc<LocalPolicy>);

impl Router for PolicyRouter {
    fn route(&self, address: &str) -> Vec<(String, bool)> {
        let Ok(mailbox) = Mailbox::parse(address) else { return Vec::new() };
        if !self.0.is_local(&mailbox) {
            return vec![(address.to_string(), false)];
        }
        match self.0.resolve(&mailbox) {
            Ok(routes) => routes.iter().map(|r| (r.address(), r.is_local())).collect(),
            Err(_) => Vec::new(),
        }
    }
}
