#!/usr/bin/env bash
# `make image`: builds the Dockerfile with podman, as root, on a machine with no container
# registry (Debian and PyPI mirrors only), and prints the image's name and size.
#
# 1. The base, debian:bookworm-slim, cannot be pulled here: debootstrap makes bookworm
#    (minbase: Essential + apt, what the slim image holds) from the mirror apt already uses,
#    once; the root filesystem is kept as a tar under .cache/image/, and imported as
#    localhost/debian:bookworm-slim whenever podman's store lacks it.
# 2. podman build in chroot isolation (no OCI runtime: this machine refuses its setrlimit),
#    --pull=never, BASE pointing at that local base. pip in the build stage trusts the CA bundle
#    this machine's pip is configured with (PIP_CERT or pip's `cert`), passed as the build
#    secret `ca` (never stored in a layer).
#
# Environment: IMAGE (default localhost/gossip-agent:<version from pyproject.toml>), BASE_IMAGE
# (default localhost/debian:bookworm-slim), MIRROR (default: apt's first Debian URI).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE=${IMAGE:-localhost/gossip-agent:$version}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-slim}
CACHE=.cache/image
BASE_TAR=$CACHE/bookworm-minbase.tar
started=$SECONDS

for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || { echo "make image: $tool is missing (apt-get install podman debootstrap)" >&2; exit 1; }
done

# The first deb.debian.org-style URI apt uses (deb822 .sources or one-line sources.list).
apt_uri() {
  local suite_pattern=$1
  { { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } \
    | grep -E "$suite_pattern" | head -1; } || true
}

bootstrap_base() {
  local mirror=${MIRROR:-$(apt_uri '/debian/?$')}
  local security
  security=$(apt_uri 'debian-security/?$')
  security=${security:-${mirror%/debian*}/debian-security}
  [ -n "$mirror" ] || { echo "make image: no Debian mirror in apt's sources; set MIRROR" >&2; exit 1; }
  local root=$CACHE/rootfs
  rm -rf "$root" && mkdir -p "$root"
  echo "make image: debootstrap --variant=minbase bookworm from $mirror (once; cached in $BASE_TAR)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # As the official image: bookworm, its updates and security, in deb822 form; no apt caches.
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$root"
}

mkdir -p "$CACHE"
if ! podman image exists "$BASE_IMAGE"; then
  [ -s "$BASE_TAR" ] || bootstrap_base
  echo "make image: importing $BASE_TAR as $BASE_IMAGE"
  podman import --quiet "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

secret=()
ca=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
if [ -n "$ca" ] && [ -s "$ca" ]; then
  secret=(--secret "id=ca,src=$ca")
fi

echo "make image: podman build $IMAGE on $BASE_IMAGE"
podman build --isolation chroot --pull=never --build-arg "BASE=$BASE_IMAGE" \
  --build-arg "VERSION=$version" "${secret[@]}" -t "$IMAGE" .

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
printf 'make image: %s is %d MB (%d bytes); built in %d s\n' \
  "$IMAGE" "$((size / 1000000))" "$size" "$((SECONDS - started))"
