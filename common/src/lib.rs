//! `common`: what the daemons share (issues #3-#5, not built yet): QEMU's
//! vhost-user backend CLI conventions (`--socket-path`/`--fd`,
//! `--print-capabilities`), systemd notify and socket activation, the
//! sandbox, and the serve-again-after-disconnect loop.
