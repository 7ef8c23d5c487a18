//! `vhost-net-daemon`: the virtio-net backend over a tap device (issue #5,
//! not built yet).
