//! `virtiofsd`: the virtio-fs backend on `fuse-backend-rs`, default tag
//! `kataShared` (issue #4, not built yet).
