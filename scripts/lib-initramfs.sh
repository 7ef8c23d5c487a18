# shellcheck shell=bash
# Staging of the guest initramfs, shared by scripts/setup.sh (Debian's
# kernel, modules, gzip) and scripts/build-linux-kit.sh (the Linux kit,
# everything built in, uncompressed). Sourced, not run.
#
#   initramfs_guest_files GUEST_SRC   the files of tests/guest that go in
#   initramfs_guest_programs GUEST_SRC  the C programs built into /bin
#   initramfs_stage STAGE BUSYBOX GUEST_SRC KERNEL_LABEL
#   initramfs_pack STAGE              the newc cpio (owner 0:0) on stdout
#
# The caller adds its own content (modules and their load order, extra
# programs and libraries) between initramfs_stage and initramfs_pack.

# The regular files directly in GUEST_SRC (tests/guest/init, vutest-kv, ...),
# one a line, sorted; subdirectories (tests/guest/linux: the kit's kernel
# config and patches) and *.md are not guest files.
initramfs_guest_files() {
    local f
    for f in "$1"/*; do
        [ -f "$f" ] || continue
        case "$(basename "$f")" in
            *.md) ;;
            *) printf '%s\n' "$f" ;;
        esac
    done
}

# The C sources in GUEST_SRC/src (vsock-echo.c: busybox has no AF_VSOCK),
# one a line, sorted; each is built static into /bin by initramfs_stage.
initramfs_guest_programs() {
    local f
    for f in "$1"/src/*.c; do
        [ -f "$f" ] && printf '%s\n' "$f"
    done
    return 0
}

# Fill the empty directory STAGE: the directory tree, BUSYBOX with a link
# for each of its applets in /bin, GUEST_SRC/init as /init, the other guest
# files in /bin, the guest programs built with `gcc -static` in /bin,
# /etc/vutest-kernel (KERNEL_LABEL), /dev/console and an empty
# /lib/modules/load-order (init insmods what it lists, in order).
initramfs_stage() {
    local stage="$1" busybox="$2" guest_src="$3" label="$4" applet f
    [ -f "$guest_src/init" ] || {
        echo "initramfs_stage: $guest_src/init missing" >&2
        return 1
    }
    mkdir -p "$stage"/{bin,dev,proc,sys,tmp,mnt,etc,root,run,lib/modules,usr}
    ln -s bin "$stage/sbin"
    ln -s ../bin "$stage/usr/bin"
    ln -s ../bin "$stage/usr/sbin"
    cp "$busybox" "$stage/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
    done
    install -m 0755 "$guest_src/init" "$stage/init"
    while IFS= read -r f; do
        [ "$(basename "$f")" = init ] || install -m 0755 "$f" "$stage/bin/$(basename "$f")"
    done < <(initramfs_guest_files "$guest_src")
    # Static: the initramfs has no libc.
    while IFS= read -r f; do
        gcc -static -s -O2 -Wall -Wextra -Werror -o "$stage/bin/$(basename "$f" .c)" "$f" || {
            echo "initramfs_stage: building $f failed" >&2
            return 1
        }
    done < <(initramfs_guest_programs "$guest_src")
    : >"$stage/lib/modules/load-order"
    echo "$label" >"$stage/etc/vutest-kernel"
    # The kernel opens /dev/console for init before init mounts devtmpfs
    # (mknod needs root; without the node init still finds it on devtmpfs).
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
}

# Write STAGE as an uncompressed newc cpio archive to stdout, sorted, every
# file owned by 0:0.
initramfs_pack() {
    (cd "$1" && find . -mindepth 1 -print0 | sort -z \
        | cpio --null --create --format=newc --owner=0:0 --quiet)
}
