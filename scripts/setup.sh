#!/usr/bin/env bash
# Prepare a Debian 12 machine (or CI runner) for the test suite, in one
# idempotent command:
#   1. install the host packages the tests use (QEMU, qemu-storage-daemon,
#      QEMU's C virtiofsd, busybox-static, fio, ...), only if some are missing;
#   2. add the `x86_64-unknown-none` Rust target (a failure is only a warning);
#   3. fetch Debian's stable kernel package and unpack it into the guest kit;
#   4. build the guest initramfs (busybox, virtio/fuse/ext4 modules, tests/guest/init,
#      and setfattr/getfattr from Debian's `attr` with the libraries they need);
#   5. build the Linux kit for our own vmm (scripts/build-linux-kit.sh).
# Also installs rust-vmm's vhost-device-vsock (crates.io, pinned) into
# target/guest-kit/bin, the backend the vmm runs for --vsock.
#
# Output: target/guest-kit/{vmlinuz,initrd.gz,kernel-version,bin/vhost-device-vsock} and
# target/guest-kit/linux/{vmlinux,initrd.cpio}
# (override the directory with VUTEST_KIT_DIR). Work already done is skipped:
# a second run takes well under a second.
#
# Runs as root (CI) or as a user with passwordless sudo. Never reads stdin.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="${VUTEST_KIT_DIR:-$ROOT/target/guest-kit}"
GUEST_SRC="$ROOT/tests/guest"
# shellcheck source=scripts/lib-initramfs.sh
. "$ROOT/scripts/lib-initramfs.sh"

PACKAGES=(
    qemu-system-x86 qemu-system-common qemu-utils busybox-static kmod cpio
    fio e2fsprogs iproute2 systemd gzip dpdk-dev attr mount gcc libc6-dev
)
# Programs busybox lacks, copied into the initramfs with the shared
# libraries `ldd` lists for them (package attr: xattr tests over virtio-fs).
GUEST_PROGRAMS=(/usr/bin/setfattr /usr/bin/getfattr)
# Loaded by the guest's init in this order (insmod, no modprobe needed).
# ext4 (which also mounts ext2) needs crc16, mbcache and jbd2 (modinfo
# depends) and soft-depends on crc32c (metadata checksums); virtio-vsock
# (the agent channel: tests/guest/src/vsock-echo.c) is three modules.
MODULES=(
    virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    failover net_failover virtio_net virtio_blk fuse virtiofs
    crc16 mbcache jbd2 crc32c_generic ext4
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
)

# shellcheck source=scripts/lib-log.sh
. "$ROOT/scripts/lib-log.sh"
# shellcheck source=scripts/lib-packages.sh
. "$ROOT/scripts/lib-packages.sh"

APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -q >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

# --- 1. host packages -------------------------------------------------------
installed="$(install_packages "${PACKAGES[@]}")"
if [ "$installed" -gt 0 ]; then
    SUMMARY+=("packages=installed($installed)")
else
    SUMMARY+=("packages=ok")
fi
for bin in qemu-system-x86_64 qemu-storage-daemon busybox cpio gzip dpkg-deb dpdk-testpmd ldd "${GUEST_PROGRAMS[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || die "$bin not found after installing packages"
done
[ -x /usr/lib/qemu/virtiofsd ] || die "/usr/lib/qemu/virtiofsd missing (package qemu-system-common)"

# --- 2. Rust target for the freestanding test guest -------------------------
if command -v rustup >/dev/null 2>&1; then
    if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none; then
        SUMMARY+=("rust-target=ok")
    elif rustup target add x86_64-unknown-none >&2; then
        SUMMARY+=("rust-target=added")
    else
        log "warning: 'rustup target add x86_64-unknown-none' failed; the freestanding guest tests will not build"
        SUMMARY+=("rust-target=FAILED")
    fi
else
    log "warning: rustup not found; cannot add x86_64-unknown-none"
    SUMMARY+=("rust-target=no-rustup")
fi

# --- 2b. the fuzzers' toolchain (scripts/fuzz.sh) -----------------------------
# cargo-fuzz wants nightly; where rustup cannot fetch one, scripts/fuzz.sh
# uses the installed toolchain with RUSTC_BOOTSTRAP=1.
if command -v rustup >/dev/null 2>&1 && ! cargo +nightly --version >/dev/null 2>&1; then
    log "installing the nightly toolchain (scripts/fuzz.sh)"
    rustup toolchain install nightly --profile minimal >&2 \
        || log "warning: no nightly toolchain; scripts/fuzz.sh will use RUSTC_BOOTSTRAP=1"
fi
if cargo fuzz --version >/dev/null 2>&1; then
    SUMMARY+=("cargo-fuzz=ok")
elif cargo install cargo-fuzz --locked >&2; then
    SUMMARY+=("cargo-fuzz=installed")
else
    log "warning: 'cargo install cargo-fuzz --locked' failed; scripts/fuzz.sh cannot run"
    SUMMARY+=("cargo-fuzz=FAILED")
fi

# --- 2c. rust-vmm's vhost-device-vsock (the vmm's --vsock backend) -------------
# Pinned, into $KIT/bin, where the tests put it on the vmm's PATH; skipped
# when that version is there. A failure is a warning: only the vsock tests
# need it.
VSOCK_VERSION=0.3.0
if [ "$("$KIT/bin/vhost-device-vsock" --version 2>/dev/null || true)" = "vhost-device-vsock $VSOCK_VERSION" ]; then
    SUMMARY+=("vhost-device-vsock=ok")
elif cargo install --locked vhost-device-vsock --version "$VSOCK_VERSION" --root "$KIT" >&2; then
    SUMMARY+=("vhost-device-vsock=installed")
else
    log "warning: 'cargo install vhost-device-vsock' failed; the vmm's --vsock tests cannot run"
    SUMMARY+=("vhost-device-vsock=FAILED")
fi

# --- 3. Debian's kernel -----------------------------------------------------
mkdir -p "$KIT/debs" "$KIT/kernel"

kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
KPKG="$(kernel_pkg || true)"
if [ -z "$KPKG" ]; then
    apt_update
    KPKG="$(kernel_pkg || true)"
fi
if [ -z "$KPKG" ]; then
    # Offline and apt knows nothing: reuse a kernel unpacked earlier, if any.
    KPKG="$(cat "$KIT/kernel-package" 2>/dev/null || true)"
    [ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 with apt-cache depends"
    log "warning: apt-cache cannot resolve linux-image-amd64; reusing $KPKG"
fi
KVER="${KPKG#linux-image-}"

find_deb() { find "$KIT/debs" -maxdepth 1 -name "${KPKG}_*.deb" -print -quit; }
DEB="$(find_deb)"
UNPACKED="$KIT/kernel/$KPKG"
# Only vmlinuz and the modules the guest loads are kept from the unpacked
# package (a few MiB instead of ~400 MiB); the stamp records which modules.
if [ -d "$UNPACKED" ] && [ "$(cat "$UNPACKED/.modules" 2>/dev/null || true)" = "${MODULES[*]}" ]; then
    kernel_state=cached
else
    if [ -z "$DEB" ]; then
        log "downloading $KPKG"
        # apt-get download writes into the current directory; as root apt may
        # warn that the _apt sandbox user cannot access it, which is harmless.
        if ! (cd "$KIT/debs" && apt-get download -q "$KPKG" >&2); then
            apt_update
            (cd "$KIT/debs" && apt-get download -q "$KPKG" >&2) || die "apt-get download $KPKG failed"
        fi
        DEB="$(find_deb)"
        [ -n "$DEB" ] || die "apt-get download $KPKG produced no .deb in $KIT/debs"
        kernel_state=downloaded
    else
        kernel_state=unpacked
    fi
    log "unpacking $(basename "$DEB")"
    tmp="$(mktemp -d "$KIT/kernel/.unpack.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    dpkg-deb -x "$DEB" "$tmp" || die "dpkg-deb -x $DEB failed"
    src_moddir=""
    for d in "$tmp/lib/modules/$KVER" "$tmp/usr/lib/modules/$KVER"; do
        [ -d "$d" ] && src_moddir="$d" && break
    done
    [ -n "$src_moddir" ] || die "no lib/modules/$KVER in $DEB"
    [ -f "$tmp/boot/vmlinuz-$KVER" ] || die "no boot/vmlinuz-$KVER in $DEB"
    pruned="$tmp/pruned"
    mkdir -p "$pruned/boot" "$pruned/lib/modules/$KVER"
    cp "$tmp/boot/vmlinuz-$KVER" "$pruned/boot/"
    cp "$src_moddir/modules.builtin" "$pruned/lib/modules/$KVER/" 2>/dev/null || : >"$pruned/lib/modules/$KVER/modules.builtin"
    for m in "${MODULES[@]}"; do
        f="$(find "$src_moddir/kernel" -name "$m.ko" -print -quit)"
        [ -n "$f" ] || continue
        rel="${f#"$src_moddir"/}"
        mkdir -p "$pruned/lib/modules/$KVER/$(dirname "$rel")"
        cp -p "$f" "$pruned/lib/modules/$KVER/$rel"
    done
    echo "${MODULES[*]}" >"$pruned/.modules"
    rm -rf "$UNPACKED"
    mv "$pruned" "$UNPACKED"
    rm -rf "$tmp"
    trap - EXIT
fi

VMLINUZ_SRC="$UNPACKED/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ_SRC" ] || die "no boot/vmlinuz-$KVER in $UNPACKED"
MODDIR="$UNPACKED/lib/modules/$KVER"
[ -d "$MODDIR" ] || die "no lib/modules/$KVER in $UNPACKED"

if [ ! -f "$KIT/vmlinuz" ] || ! cmp -s "$VMLINUZ_SRC" "$KIT/vmlinuz"; then
    cp "$VMLINUZ_SRC" "$KIT/vmlinuz.tmp"
    mv "$KIT/vmlinuz.tmp" "$KIT/vmlinuz"
fi
[ "$(cat "$KIT/kernel-version" 2>/dev/null || true)" = "$KVER" ] || echo "$KVER" >"$KIT/kernel-version"
[ "$(cat "$KIT/kernel-package" 2>/dev/null || true)" = "$KPKG" ] || echo "$KPKG" >"$KIT/kernel-package"
SUMMARY+=("kernel=$KVER($kernel_state)")

# --- 4. initramfs -----------------------------------------------------------
BUSYBOX="$(command -v busybox)"
[ -f /bin/busybox ] && BUSYBOX=/bin/busybox
MODULE_FILES=()
for m in "${MODULES[@]}"; do
    f="$(find "$MODDIR/kernel" -name "$m.ko" -print -quit 2>/dev/null || true)"
    if [ -z "$f" ]; then
        # Built into this kernel? Then there is nothing to load.
        if grep -q "/$m.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then
            continue
        fi
        die "module $m.ko not found under $MODDIR/kernel"
    fi
    MODULE_FILES+=("$f")
done

# The absolute paths of the libraries (and the loader) GUEST_PROGRAMS need.
GUEST_LIBS=()
for prog in "${GUEST_PROGRAMS[@]}"; do
    libs="$(ldd "$prog" 2>/dev/null)" || die "ldd $prog failed"
    for lib in $(printf '%s\n' "$libs" | grep -o '/[^ ]*'); do
        [ -f "$lib" ] || die "ldd $prog names $lib, which is not a file"
        case " ${GUEST_LIBS[*]} " in
            *" $lib "*) ;;
            *) GUEST_LIBS+=("$lib") ;;
        esac
    done
done

INITRD="$KIT/initrd.gz"
STAMP="$KIT/initrd.inputs"
mapfile -t GUEST_FILES < <(initramfs_guest_files "$GUEST_SRC")
mapfile -t GUEST_C < <(initramfs_guest_programs "$GUEST_SRC")
inputs=("${GUEST_FILES[@]}" "${GUEST_C[@]}" "$BUSYBOX" "${BASH_SOURCE[0]}" "$ROOT/scripts/lib-initramfs.sh"
    "${MODULE_FILES[@]}" "${GUEST_PROGRAMS[@]}" "${GUEST_LIBS[@]}")
want_stamp="$KVER ${MODULES[*]}"
rebuild=0
if [ ! -s "$INITRD" ] || [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want_stamp" ]; then
    rebuild=1
else
    for f in "${inputs[@]}"; do
        if [ "$f" -nt "$INITRD" ]; then
            rebuild=1
            break
        fi
    done
fi

if [ "$rebuild" -eq 1 ]; then
    stage="$(mktemp -d "$KIT/.initrd-stage.XXXXXX")"
    trap 'rm -rf "$stage"' EXIT
    initramfs_stage "$stage" "$BUSYBOX" "$GUEST_SRC" "$KVER" || die "staging the initramfs failed"
    for prog in "${GUEST_PROGRAMS[@]}"; do
        install -m 0755 "$prog" "$stage/bin/$(basename "$prog")"
    done
    # Each library at the path the loader looks for (/lib64/ld-linux-x86-64.so.2,
    # /lib/x86_64-linux-gnu/libc.so.6), symlinks resolved.
    for lib in "${GUEST_LIBS[@]}"; do
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done
    for f in "${MODULE_FILES[@]}"; do
        cp "$f" "$stage/lib/modules/"
        basename "$f" .ko >>"$stage/lib/modules/load-order"
    done
    initramfs_pack "$stage" | gzip -6 -n >"$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    echo "$want_stamp" >"$STAMP"
    rm -rf "$stage"
    trap - EXIT
    SUMMARY+=("initrd=rebuilt($(du -k "$INITRD" | cut -f1)KiB)")
else
    SUMMARY+=("initrd=up-to-date")
fi

summary "kit=$KIT"

# --- 5. the Linux kit: our own small kernel for our vmm ----------------------
# Built from Debian's linux-source-6.1 (several minutes the first time, then
# cached); prints its own summary line.
VUTEST_KIT_DIR="$KIT" "$ROOT/scripts/build-linux-kit.sh" || die "scripts/build-linux-kit.sh failed"
