#!/usr/bin/env bash
# The main job end to end on built-in defaults: prepares the machine
# (scripts/setup.sh, idempotent), then runs `vu-demo`, which creates a share
# and a disk image, serves each from its own vhost-user backend process,
# drives them with the userspace driver, boots a Linux guest on them (and
# on a vsock, reached as Kata's shim reaches its agent) and prints what the
# guest did with each device. Extra arguments go to vu-demo
# (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --quiet --release --locked --workspace --bins
exec target/release/vu-demo "$@"
