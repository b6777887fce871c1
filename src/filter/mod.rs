//! Content filters outside Tern that judge or change mail as it arrives: milters
//! (`[[milter]]`, [`milter`]) and rspamd (`[rspamd]`, [`rspamd`]).

pub mod milter;
pub mod rspamd;
