//! Content filters that judge a received message before it is stored.

pub mod rspamd;
