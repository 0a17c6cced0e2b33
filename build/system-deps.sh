#!/usr/bin/env bash
# System tools the main job and the tests need, installed with apt-get when missing (DESIGN §8, §12).
# Run by `make setup`, so both of the README's commands do all set-up on a fresh machine. Does
# nothing when everything is there; as non-root it names what is missing in one line and exits 1.
#
#   buildah podman skopeo   build, run and copy images (rootful, chroot isolation)
#   debootstrap             the CI base's root filesystem
#   umoci                   OCI layouts (the Docker ≥ 25 save shape in tests)
#   runc catatonit          podman's runtime and --init on cgroup-v1 hybrid hosts
#   tini                    the static tini the image runs as PID 1
#   strace                  the air-gap proof's syscall witness
#   iproute2 util-linux     network namespaces (ip, unshare, nsenter)
#   coreutils make          sha256sum; the Makefile itself
#   docker.io               Docker Engine for the operator-path tests (a private dockerd; never the host's)
set -euo pipefail

PACKAGES=(buildah podman skopeo debootstrap umoci runc catatonit tini strace iproute2 util-linux coreutils make
    docker.io)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) != 0 ]]; then
    echo "error: missing system packages: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
# The engine's package may start a daemon on the default socket; tests use a private one only.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
    systemctl stop docker docker.socket 2>/dev/null || true
fi
