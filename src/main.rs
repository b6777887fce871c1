mod config;
mod smtp;
fn main() {}
