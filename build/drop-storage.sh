#!/usr/bin/env bash
# Remove a private containers storage (DIR/storage.conf, DIR/graph, DIR/run) and everything in it:
# buildah working containers, podman containers and images, then any mount left below DIR.
# Used by .ci/run (at exit, also on failure) and `make clean`; never touches the machine's own
# storage (/var/lib/containers), which other users of this host may be relying on.
#
# Usage: build/drop-storage.sh DIR...
set -uo pipefail

unmount_below() {
    local m
    for m in $(awk -v r="$1" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}

for arg in "$@"; do
    dir=$(realpath -m "$arg")
    [[ -e $dir ]] || continue
    if [[ -f $dir/storage.conf ]]; then
        export CONTAINERS_STORAGE_CONF=$dir/storage.conf
        buildah rm --all >/dev/null 2>&1
        podman rm --all --force >/dev/null 2>&1
        podman rmi --all --force >/dev/null 2>&1
        unset CONTAINERS_STORAGE_CONF
    fi
    unmount_below "$dir"
    rm -rf --one-file-system "$dir"
done
