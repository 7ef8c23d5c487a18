# shellcheck shell=bash
# Messages of scripts/setup.sh and scripts/build-linux-kit.sh, every line
# prefixed with the name of the script that runs. Sourced, not run.
#
#   log MSG...         "NAME: MSG" on stderr
#   die MSG...         "NAME: error: MSG" on stderr, then exit 1
#   SUMMARY            () where the run appends its outcomes (name=state)
#   summary EXTRA...   "NAME: SUMMARY... EXTRA" on stdout, the run's last line

LOG_NAME="$(basename "$0")"
SUMMARY=()
log() { echo "$LOG_NAME: $*" >&2; }
die() {
    echo "$LOG_NAME: error: $*" >&2
    exit 1
}
summary() { echo "$LOG_NAME: ${SUMMARY[*]} $*"; }
