#!/usr/bin/env bash
# What the benchmarks need beyond scripts/setup.sh: the Rust virtiofsd, the
# reference our virtiofsd is compared with. It is built from crates.io into
# /opt/rust-virtiofsd (outside the repository; nothing of it is vendored),
# with the C libraries it links (libseccomp, libcap-ng). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
root=${RUST_VIRTIOFSD_ROOT:-/opt/rust-virtiofsd}
if [ -x "$root/bin/virtiofsd" ]; then
    echo "bench-setup: rust virtiofsd=ok ($("$root/bin/virtiofsd" --version | head -1))"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
$sudo_cmd apt-get install -y -qq libseccomp-dev libcap-ng-dev pkg-config >/dev/null
$sudo_cmd cargo install --quiet --locked virtiofsd --root "$root"
echo "bench-setup: rust virtiofsd installed in $root"
