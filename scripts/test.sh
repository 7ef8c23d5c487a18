#!/usr/bin/env bash
# Runs every check CI runs: setup (idempotent), formatting, lints, the
# one-version-per-rust-vmm-crate rule, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== one version of each rust-vmm crate"
dups=$(cargo tree -d --locked --depth 0 --prefix none -e normal,build \
    | grep -E '^(vm-memory|virtio-queue|virtio-bindings|vhost|vhost-user-backend|vmm-sys-util|kvm-ioctls|kvm-bindings|linux-loader|vm-superio|fuse-backend-rs) v' \
    | sort -u || true)
if [ -n "$dups" ]; then
    echo "duplicate rust-vmm crates in Cargo.lock:"; echo "$dups"; exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== cargo build (the daemons the tests spawn)"
cargo build --workspace --bins --locked

echo "== cargo test"
cargo test --workspace --locked "$@" 2>&1 | tee "$log"

# The fuzz targets (fuzz/) on their kept corpora, 20 s each; a crash fails
# the run. FUZZ_CI=0 skips them.
if [ "${FUZZ_CI:-1}" != 0 ]; then
    echo "== fuzz (scripts/fuzz.sh --ci)"
    scripts/fuzz.sh --ci
fi
# cargo's last line is often an empty doc-test run; end on the real totals.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
