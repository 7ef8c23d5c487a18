//! The virtio-fs backend's device logic: `main.rs` parses the options and calls
//! [`setup::run`]; the modules are public so the fuzz targets
//! (`fuzz/`) reach the parsers a guest feeds.

pub mod backend;
pub mod cli;
pub mod dots;
pub mod fs;
pub mod persist;
pub mod pool;
pub mod request;
pub mod seccomp_fs;
pub mod setup;
pub mod state;
