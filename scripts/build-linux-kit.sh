#!/usr/bin/env bash
# Build the Linux kit: a small Linux 6.1 and an uncompressed busybox
# initramfs that boot under our own vmm on the build machines' KVM, which
# emulates guest kernel mode (see tests/guest/linux/README.md).
#
#   1. install Debian's linux-source-6.1 and the build tools, if missing;
#   2. extract the source into target/linux-kit/src-<package version> and
#      apply tests/guest/linux/patches/*.patch (a new tree when they change);
#   3. `make tinyconfig` + tests/guest/linux/config (merge_config.sh,
#      olddefconfig), then check that every option of the fragment came out
#      as written, and `make vmlinux`;
#   4. pack the initramfs: busybox, tests/guest/init as /init, the other
#      files of tests/guest in /bin, the C programs of tests/guest/src
#      (vsock-echo: busybox has no AF_VSOCK) built with gcc -static into
#      /bin, an empty /lib/modules/load-order.
#
# Output: target/guest-kit/linux/{vmlinux,initrd.cpio,kernel-release}
# (the kit directory follows VUTEST_KIT_DIR, the work tree
# VUTEST_LINUX_WORK). A stamp (SHA-256 of the config fragment, the patches,
# this script and the package version) decides whether the kernel is
# rebuilt; a run with nothing changed takes well under a second. Building
# from scratch takes several minutes (`make -j$(nproc)`).
#
# Called by scripts/setup.sh; runs as root (CI) or with passwordless sudo.
# Never reads stdin.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="${VUTEST_KIT_DIR:-$ROOT/target/guest-kit}"
OUT="$KIT/linux"
WORK="${VUTEST_LINUX_WORK:-$ROOT/target/linux-kit}"
GUEST_SRC="$ROOT/tests/guest"
FRAGMENT="$GUEST_SRC/linux/config"
PATCH_DIR="$GUEST_SRC/linux/patches"
SRC_PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
# shellcheck source=scripts/lib-initramfs.sh
. "$ROOT/scripts/lib-initramfs.sh"

# The kernel's build needs gcc, make, flex and bison (kconfig), bc
# (kernel/time/timeconst.h), libelf (objtool), xz (the tarball) and patch;
# no OpenSSL: there are no modules to sign and no certificates.
PACKAGES=("$SRC_PKG" gcc make libc6-dev bc flex bison libelf-dev xz-utils patch
    busybox-static cpio)

# shellcheck source=scripts/lib-log.sh
. "$ROOT/scripts/lib-log.sh"
# shellcheck source=scripts/lib-packages.sh
. "$ROOT/scripts/lib-packages.sh"

# --- 1. packages ------------------------------------------------------------
install_packages "${PACKAGES[@]}" >/dev/null
SRC_VERSION="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"
[ -n "$SRC_VERSION" ] || die "cannot read the version of $SRC_PKG"
[ -f "$TARBALL" ] || die "$TARBALL missing (package $SRC_PKG $SRC_VERSION)"
BUSYBOX="$(command -v busybox)" || die "busybox not found"
[ -f /bin/busybox ] && BUSYBOX=/bin/busybox

mkdir -p "$OUT" "$WORK"
# One build at a time in this work tree.
exec 9>"$WORK/.lock"
flock 9

# --- 2./3. the kernel ---------------------------------------------------------
mapfile -t PATCHES < <(find "$PATCH_DIR" -maxdepth 1 -name '*.patch' | sort)
[ "${#PATCHES[@]}" -gt 0 ] || die "no patches in $PATCH_DIR"
[ -f "$FRAGMENT" ] || die "$FRAGMENT missing"

# Content hashes under names relative to ROOT, so a moved clone is no change.
hash_files() {
    (cd "$ROOT" && sha256sum "${@#"$ROOT"/}") | sha256sum | cut -d' ' -f1
}
PATCHES_SUM="$(hash_files "${PATCHES[@]}")"
KERNEL_STAMP="$SRC_PKG=$SRC_VERSION $(hash_files "$FRAGMENT" "${PATCHES[@]}" "$SELF")"
SRC="$WORK/src-$SRC_VERSION"
VMLINUX="$OUT/vmlinux"

# Every CONFIG_ line of the fragment as NAME=VALUE, "not set" as NAME=n.
fragment_options() {
    sed -nE 's/^(CONFIG_[A-Za-z0-9_]+)=(.*)$/\1=\2/p
        s/^# (CONFIG_[A-Za-z0-9_]+) is not set$/\1=n/p' "$FRAGMENT"
}

# Fail, listing them, if options of the fragment are not as written in .config
# (kconfig drops what a dependency forbids without an error).
verify_config() {
    local name want got bad=()
    while IFS='=' read -r name want; do
        got="$(sed -nE "s/^$name=(.*)$/\\1/p" "$SRC/.config")"
        [ -n "$got" ] || got=n
        [ "$got" = "$want" ] || bad+=("$name: wanted $want, got $got")
    done < <(fragment_options)
    if [ "${#bad[@]}" -gt 0 ]; then
        printf 'build-linux-kit.sh:   %s\n' "${bad[@]}" >&2
        die "${#bad[@]} option(s) of $FRAGMENT did not come out as written (see $SRC/.config; a dependency is missing or a symbol was renamed)"
    fi
}

if [ -f "$VMLINUX" ] && [ "$(cat "$OUT/vmlinux.stamp" 2>/dev/null || true)" = "$KERNEL_STAMP" ]; then
    SUMMARY+=("kernel=$(cat "$OUT/kernel-release")(up-to-date)")
else
    start=$SECONDS
    # A tree patched with other patches (or half extracted) is replaced.
    if [ ! -f "$SRC/.vutest-patches" ] || [ "$(cat "$SRC/.vutest-patches")" != "$PATCHES_SUM" ]; then
        # Trees of other package versions go too (~1.5 GiB each, built).
        find "$WORK" -mindepth 1 -maxdepth 1 -name 'src-*' -exec rm -rf {} +
        find "$WORK" -mindepth 1 -maxdepth 1 -name '.extract.*' -exec rm -rf {} +
        log "extracting $TARBALL ($SRC_PKG $SRC_VERSION)"
        tmp="$(mktemp -d "$WORK/.extract.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        tar -xf "$TARBALL" -C "$tmp" || die "extracting $TARBALL failed"
        tree="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -print -quit)"
        [ -f "$tree/Makefile" ] || die "no kernel tree in $TARBALL"
        for p in "${PATCHES[@]}"; do
            log "applying $(basename "$p")"
            patch -d "$tree" -p1 --forward --batch --quiet <"$p" >&2 \
                || die "patch $(basename "$p") does not apply to $SRC_PKG $SRC_VERSION"
        done
        echo "$PATCHES_SUM" >"$tree/.vutest-patches"
        mv "$tree" "$SRC"
        rm -rf "$tmp"
        trap - EXIT
    fi

    log "configuring: tinyconfig + ${FRAGMENT#"$ROOT"/} (log in $WORK/config.log)"
    # merge_config.sh writes its temporary files into the current directory.
    if ! (cd "$SRC" && make -s tinyconfig && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" \
        && make -s olddefconfig) >"$WORK/config.log" 2>&1; then
        tail -n 40 "$WORK/config.log" >&2
        die "configuring the kernel failed (full log: $WORK/config.log)"
    fi
    verify_config

    jobs="$(nproc)"
    log "building vmlinux (make -j$jobs, log in $WORK/build.log)"
    if ! make -C "$SRC" -j"$jobs" KBUILD_BUILD_USER=vutest KBUILD_BUILD_HOST=vutest \
        vmlinux >"$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log" >&2
        die "make vmlinux failed (full log: $WORK/build.log)"
    fi
    # Our vmm enters an ELF vmlinux through its PVH note (Xen, type 0x12).
    readelf -n "$SRC/vmlinux" | grep -q 'Xen.*0x00000012' \
        || die "$SRC/vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
    release="$(cat "$SRC/include/config/kernel.release")"
    cp "$SRC/vmlinux" "$VMLINUX.tmp"
    mv "$VMLINUX.tmp" "$VMLINUX"
    echo "$release" >"$OUT/kernel-release"
    echo "$KERNEL_STAMP" >"$OUT/vmlinux.stamp"
    elapsed=$((SECONDS - start))
    SUMMARY+=("kernel=$release(built in $((elapsed / 60))m$((elapsed % 60))s)")
fi
RELEASE="$(cat "$OUT/kernel-release")"

# --- 4. initramfs -------------------------------------------------------------
INITRD="$OUT/initrd.cpio"
mapfile -t GUEST_FILES < <(initramfs_guest_files "$GUEST_SRC")
mapfile -t GUEST_C < <(initramfs_guest_programs "$GUEST_SRC")
INITRD_STAMP="$RELEASE $(hash_files "${GUEST_FILES[@]}" "${GUEST_C[@]}" "$ROOT/scripts/lib-initramfs.sh" "$SELF") \
$(sha256sum <"$BUSYBOX" | cut -d' ' -f1)"
if [ -s "$INITRD" ] && [ "$(cat "$OUT/initrd.stamp" 2>/dev/null || true)" = "$INITRD_STAMP" ]; then
    SUMMARY+=("initrd=up-to-date")
else
    stage="$(mktemp -d "$OUT/.initrd-stage.XXXXXX")"
    trap 'rm -rf "$stage"' EXIT
    # Everything is built in: load-order stays empty.
    initramfs_stage "$stage" "$BUSYBOX" "$GUEST_SRC" "$RELEASE" || die "staging the initramfs failed"
    # Uncompressed: gunzip in the emulated kernel takes minutes.
    initramfs_pack "$stage" >"$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    echo "$INITRD_STAMP" >"$OUT/initrd.stamp"
    rm -rf "$stage"
    trap - EXIT
    SUMMARY+=("initrd=rebuilt($(du -k "$INITRD" | cut -f1)KiB)")
fi

summary "kit=$OUT"
