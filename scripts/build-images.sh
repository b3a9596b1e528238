#!/usr/bin/env bash
# Builds Lazybarn's container images with podman, without any image registry:
#
#   localhost/lazybarn:TAG         the lazybarn binary alone (FROM scratch):
#                                  scheduler, storage
#   localhost/lazybarn-worker:TAG  the binary on Debian bookworm with gcc, g++
#                                  and binutils: a worker and its runner that
#                                  run C++ actions
#
# The Debian root filesystem comes from debootstrap (the Debian mirror is the
# one network source) and is imported with `podman import`. Its tarball is
# cached under $LAZYBARN_IMAGE_CACHE (default /var/cache/lazybarn-images),
# keyed by everything that goes into it, so a rerun takes seconds.
#
# Usage: scripts/build-images.sh [--binary PATH] [--tag TAG]
#   --binary PATH  the lazybarn binary to put in the images [default: build
#                  target/release/lazybarn with cargo]
#   --tag TAG      image tag [default: dev]
#
# Runs as root (debootstrap and rootful podman). Needs podman, runc and
# debootstrap (Debian: apt-get install podman runc debootstrap).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=""
tag="dev"
while (($# > 0)); do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        *) echo "build-images: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ((EUID != 0)); then
    echo "build-images: run as root (debootstrap and rootful podman need it)" >&2
    exit 1
fi
for tool in podman runc debootstrap; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-images: $tool is missing: apt-get install podman runc debootstrap" >&2
        exit 1
    fi
done

# Debian's podman defaults to crun, which refuses hosts with hybrid cgroups;
# runc and the cgroupfs manager work on both hybrid and unified hosts.
podman=(podman --runtime runc --cgroup-manager=cgroupfs)

suite=bookworm
mirror=http://deb.debian.org/debian
# g++ brings gcc, cpp, binutils and libc6-dev; zip is what Bazel's test
# wrapper packs undeclared test outputs with.
packages=g++,binutils,zip
cache_dir=${LAZYBARN_IMAGE_CACHE:-/var/cache/lazybarn-images}

log() { echo "build-images: $*" >&2; }

# Paths removed when the script exits, however it exits.
temporary=()
remove_temporary() {
    local path
    for path in "${temporary[@]}"; do
        # debootstrap mounts these inside its target while it runs.
        umount -R "$path/proc" "$path/sys" 2>/dev/null || true
        rm -rf "$path"
    done
}
trap remove_temporary EXIT

make_rootfs_tarball() {
    local dir
    mkdir -p "$cache_dir"
    dir=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
    temporary+=("$dir" "$dir.log" "$tarball.partial")
    # mktemp makes it 0700, and it becomes the image's /: every uid must
    # be able to traverse it.
    chmod 0755 "$dir"
    log "debootstrap $suite ($packages) into $dir"
    debootstrap --variant=minbase --include="$packages" "$suite" "$dir" "$mirror" \
        >"$dir.log" 2>&1 || {
        tail -n 30 "$dir.log" >&2
        return 1
    }
    # Downloaded packages, package indexes and documentation are never used.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc "$dir"/usr/share/man "$dir"/usr/share/info
    tar --numeric-owner --xattrs -C "$dir" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$dir" "$dir.log"
    # Root filesystems of earlier recipes are not used any more.
    find "$cache_dir" -maxdepth 1 -name "$suite-minbase-*.tar" ! -name "${tarball##*/}" -delete
}

# The cache key: everything that decides the root filesystem's contents,
# the recipe below included.
key=$(printf '%s\n' "$suite" "$mirror" "$packages" "$(declare -f make_rootfs_tarball)" |
    sha256sum | cut -c1-12)
tarball="$cache_dir/$suite-minbase-$key.tar"
rootfs_image="localhost/lazybarn-rootfs:$suite-$key"

started=$SECONDS
if [[ ! -f "$tarball" ]]; then
    make_rootfs_tarball
else
    log "root filesystem cached: $tarball"
fi
if ! "${podman[@]}" image exists "$rootfs_image"; then
    log "importing $tarball as $rootfs_image"
    "${podman[@]}" import --quiet "$tarball" "$rootfs_image" >/dev/null
    # And forget those of earlier recipes (their layers stay while images
    # built on them do).
    "${podman[@]}" images --format '{{.Repository}}:{{.Tag}}' localhost/lazybarn-rootfs |
        grep -vxF "$rootfs_image" | xargs -r "${podman[@]}" rmi >/dev/null 2>&1 || true
fi

if [[ -z "$binary" ]]; then
    log "cargo build --release -p lazybarn"
    cargo build --release -p lazybarn
    binary=target/release/lazybarn
fi

# The build context: the binary (without its debug sections, which are most
# of its size) and the files the Containerfiles copy.
context=$(mktemp -d)
temporary+=("$context")
cp deploy/container/passwd deploy/container/group "$context/"
objcopy --strip-debug "$binary" "$context/lazybarn"

for image in lazybarn lazybarn-worker; do
    log "building localhost/$image:$tag"
    previous=$("${podman[@]}" image inspect --format '{{.Id}}' "localhost/$image:$tag" 2>/dev/null || true)
    "${podman[@]}" build --quiet \
        --build-arg ROOTFS="$rootfs_image" \
        -f "deploy/container/$image.Containerfile" \
        -t "localhost/$image:$tag" "$context" >/dev/null
    # The image this tag named before is left without a name: remove it,
    # unless a container still uses it.
    current=$("${podman[@]}" image inspect --format '{{.Id}}' "localhost/$image:$tag")
    if [[ -n "$previous" && "$previous" != "$current" ]]; then
        "${podman[@]}" rmi "$previous" >/dev/null 2>&1 || true
    fi
done
log "done in $((SECONDS - started))s: localhost/lazybarn:$tag localhost/lazybarn-worker:$tag"
