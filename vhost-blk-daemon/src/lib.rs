//! `vhost-blk-daemon`: the virtio-blk backend over a file or block device
//! (issue #3, not built yet).
