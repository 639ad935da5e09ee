#!/usr/bin/env bash
# Installs and prepares what gossip-agent's agents and tests need on a Debian 12 machine.
# Idempotent: every step checks before it acts, so `make demo` / `make test` can call it each time.
#
# Why each step (facts checked on these machines, see ../shared/DESIGN.md):
# - python3-bpfcc: bcc comes from Debian. The PyPI package named `bcc` is unrelated: never install it.
# - linux-headers-amd64 + /lib/modules symlinks: bcc needs kernel headers to compile the XDP program;
#   the running kernel ships none, and the 6.1 headers work for programs that use stable UAPI
#   headers, but only when /lib/modules/$(uname -r)/{build,source} point at them.
# - bpftool: operators read the pinned maps with it; tests use it as an independent reader.
# - dnsmasq-base: a real DNS server for the headless-Service discovery tests.
# - redis-server, redis-sentinel: the redis lease backend is tested against real servers (and a
#   Sentinel failover); redis-cli (redis-tools, pulled in by both) is the operator interface.
# - prometheus: promtool checks the agent's /metrics exposition, and the server itself scrapes a
#   local cluster in the end-to-end test (Debian's package does not start it here: no systemd).
# - iptables: the fault campaign (tools/chaos.py) partitions, drops at random (-m statistic)
#   and delays (NFQUEUE + tools/nfdelay.py: the kernel has no netem) inside node namespaces.
# - podman, debootstrap: `make image` bootstraps the bookworm base and builds the Dockerfile;
#   tests/e2e/test_image_pods.py runs pods from the image's root filesystem.
# - bpffs at /sys/fs/bpf: where maps are pinned and the lease lock lives.
set -euo pipefail

need_pkgs=()
for pkg in python3-bpfcc bpftool linux-headers-amd64 dnsmasq-base iproute2 prometheus redis-server redis-sentinel iptables podman debootstrap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup_system: missing Debian packages ${need_pkgs[*]} and not root to install them" >&2
    exit 1
  fi
  echo "setup_system: installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [ "$(id -u)" -eq 0 ]; then
  kver="$(uname -r)"
  build="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
  common="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$build" ] && [ -n "$common" ] && [ ! -e "/lib/modules/$kver/build" ]; then
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$build" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
  fi
  if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
  fi
fi
