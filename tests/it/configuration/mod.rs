//! Configuration: bad config files and environment overrides, config, secret and token
//! files and how they are read, and secrets that never leave the process.
//!
//! (The typed config the tests write, `TestConfig`, is the helper `crate::config`.)

mod bad_config;
mod files;
mod secrets;
