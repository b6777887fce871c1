//! Content filters outside Tern that see mail as it arrives: milters
//! (`[[milter]]`, [`milter`]).

pub mod milter;
