#!/usr/bin/env bash
# Build the Linux kit's SMP + ACPI NUMA variant: tests/guest/linux/config
# with tests/guest/linux/numa.config merged over it, by build-linux-kit.sh
# run from a scratch copy of scripts/ and tests/guest/ (so the default kit's
# fragment, stamp and output stay as they are).
#
# Output: target/guest-kit-numa/linux/ (VUTEST_KIT_DIR overrides), work tree
# target/linux-kit-numa (VUTEST_LINUX_WORK overrides); ~20 min from scratch
# on two loaded cores. Then:
#
#   VUTEST_KIT_DIR=target/guest-kit-numa cargo test -p tests --test vmm numa:: -- --ignored
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VUTEST_KIT_DIR="${VUTEST_KIT_DIR:-$ROOT/target/guest-kit-numa}"
export VUTEST_LINUX_WORK="${VUTEST_LINUX_WORK:-$ROOT/target/linux-kit-numa}"

view="$(mktemp -d "${TMPDIR:-/tmp}/linux-numa-kit.XXXXXX")"
trap 'rm -rf "$view"' EXIT
mkdir -p "$view/tests"
cp -a "$ROOT/scripts" "$view/"
cp -a "$ROOT/tests/guest" "$view/tests/"
# Every option once, as build-linux-kit.sh checks each line it finds:
# the base without the options numa.config sets, then numa.config.
numa="$ROOT/tests/guest/linux/numa.config"
set_here="$(sed -nE 's/^(# )?(CONFIG_[A-Za-z0-9_]+)[= ].*/\2/p' "$numa" | sort -u)"
grep -vwF -f <(echo "$set_here") "$ROOT/tests/guest/linux/config" >"$view/tests/guest/linux/config"
cat "$numa" >>"$view/tests/guest/linux/config"
"$view/scripts/build-linux-kit.sh"
