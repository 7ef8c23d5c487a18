# shellcheck shell=bash
# Debian packages for scripts/setup.sh and scripts/build-linux-kit.sh.
# Sourced, not run; the caller defines log and die.
#
#   SUDO                      () as root, (sudo -n) otherwise where sudo exists
#   missing_packages P...     the ones not installed, one a line
#   install_packages P...     apt-get install of those missing (an
#                             `apt-get update` first only if the install
#                             fails); prints how many it installed

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    SUDO=()
fi

missing_packages() {
    local p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            printf '%s\n' "$p"
        fi
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
            log "apt-get update"
            "${SUDO[@]}" apt-get update -q >&2 || die "apt-get update failed"
            "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
                || die "apt-get install ${missing[*]} failed"
        fi
    fi
    echo "${#missing[@]}"
}
