//! The vhost-user virtio-blk backend's device logic: `main.rs` parses the options and calls
//! [`backend::run`]; the modules are public so the fuzz targets
//! (`fuzz/`) reach the parsers a guest feeds.

pub mod backend;
pub mod cli;
pub mod config;
pub mod device;
pub mod disk;
pub mod request;
pub mod uring;
