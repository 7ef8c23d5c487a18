#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (see fuzz/fuzz_targets/*.rs).
#
#   scripts/fuzz.sh [MINUTES] [TARGET...]   each target MINUTES (default 10)
#   scripts/fuzz.sh --ci [TARGET...]        each target 20 s on the kept
#                                            corpus, which is not changed;
#                                            fails on any crash
#
# Corpora: tests/fuzz/corpus/<target>/ (the committed seeds are seed-*;
# what a run adds stays there, ignored by git). Crash, timeout and OOM
# inputs: tests/fuzz/artifacts/<target>/ (ignored by git); replay one with
# fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>.
# Prints a table: target, execs, coverage (cov/ft from libFuzzer's last
# stats line), crashes. Exits 1 if a target crashed.
#
# Memory: a target's RSS climbs to 400-500 MB over a run and then levels
# off. That is AddressSanitizer (its 256 MB quarantine of freed memory, and
# its allocator's bookkeeping), not the targets: replaying the same inputs
# thousands of times, vhost_user_msg_fs stays at 33 MB built without a
# sanitizer (-s none) and at 61-68 MB with ASAN_OPTIONS=quarantine_size_mb=0.
#
# Needs cargo-fuzz and the nightly toolchain, or RUSTC_BOOTSTRAP=1 on the
# installed one (scripts/setup.sh installs what it can). One libFuzzer process at a time (the machine is
# shared); FUZZ_JOBS=N runs N processes per target instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ci=0
minutes=10
if [ "${1:-}" = "--ci" ]; then
    ci=1
    shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    minutes=$1
    shift
fi
ALL=(blk_request net_tx net_ctrl fs_request vmm_http virtio_pci_regs msix vhost_user_msg vhost_user_msg_fs vhost_user_msg_net split_ring)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")
for t in "${targets[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target $t (have: ${ALL[*]})" >&2; exit 2; }
done
if [ "$ci" -eq 1 ]; then seconds=20; else seconds=$((minutes * 60)); fi

# cargo-fuzz builds with -Zsanitizer: nightly, or where there is none (a
# machine with one stable toolchain) the installed one with RUSTC_BOOTSTRAP.
if cargo +nightly --version >/dev/null 2>&1; then
    CARGO=(cargo +nightly)
else
    echo "fuzz.sh: no nightly toolchain; building with $(rustc --version) and RUSTC_BOOTSTRAP=1" >&2
    CARGO=(cargo)
    export RUSTC_BOOTSTRAP=1
fi
if ! "${CARGO[@]}" fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: error: cargo-fuzz missing (scripts/setup.sh: cargo install cargo-fuzz --locked)" >&2
    exit 1
fi

echo "== cargo fuzz build (${targets[*]})"
# -a: debug assertions and overflow checks, as in the unit tests.
if [ ${#targets[@]} -eq ${#ALL[@]} ]; then
    "${CARGO[@]}" fuzz build -a >&2
else
    for t in "${targets[@]}"; do "${CARGO[@]}" fuzz build -a "$t" >&2; done
fi
BIN="$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
rows=()
failed=0
for t in "${targets[@]}"; do
    corpus="$ROOT/tests/fuzz/corpus/$t"
    artifacts="$ROOT/tests/fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    if [ "$ci" -eq 1 ]; then
        # New inputs go to a scratch directory; the kept corpus is read only.
        scratch="$logs/$t-new"
        mkdir -p "$scratch"
        dirs=("$scratch" "$corpus")
    else
        dirs=("$corpus")
    fi
    before=$(find "$artifacts" -type f | wc -l)
    log="$logs/$t.log"
    echo "== $t: ${seconds}s" >&2
    jobs=()
    [ -n "${FUZZ_JOBS:-}" ] && jobs=("-jobs=$FUZZ_JOBS" "-workers=$FUZZ_JOBS")
    status=0
    # The working directory is the scratch one: libFuzzer's -jobs logs
    # (fuzz-N.log) land there.
    (cd "$logs" && "$BIN/$t" "${dirs[@]}" "${jobs[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=24576 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1) || status=$?
    [ -n "${FUZZ_JOBS:-}" ] && cat "$logs"/fuzz-*.log >>"$log" 2>/dev/null && rm -f "$logs"/fuzz-*.log
    after=$(find "$artifacts" -type f | wc -l)
    crashes=$((after - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="?(exit $status)"
    fi
    execs=$(awk '/^stat::number_of_executed_units/ { n = $NF } END { print n + 0 }' "$log")
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | awk '{ print $2 "/" $4 }')
    rows+=("$t ${execs:-0} ${cov:-?} $crashes")
    if [ "$crashes" != 0 ]; then
        failed=1
        echo "fuzz.sh: $t crashed; the end of its log:" >&2
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|assert' "$log" | head -20 >&2 || true
        tail -5 "$log" >&2
    fi
done

echo
printf '%-20s %12s %14s %8s\n' target execs cov/ft crashes
for r in "${rows[@]}"; do
    # shellcheck disable=SC2086
    printf '%-20s %12s %14s %8s\n' $r
done
if [ "$failed" -ne 0 ]; then
    echo "fuzz.sh: crashes found; inputs under tests/fuzz/artifacts/" >&2
    exit 1
fi
