# gossip-agent container image: `docker build -t ghcr.io/gossip-agent/gossip-agent:0.3.0 .`
#
# Not built by `make test` or CI (no container engine on those machines); k8s/ expects you to
# build and push it yourself (README.md, "Deploying to Kubernetes").
#
# Why Debian bookworm: bcc comes from Debian's python3-bpfcc (the PyPI package named `bcc` is an
# unrelated project). Its Python package is pure Python over ctypes (libbcc.so.0), so the
# image's Python 3.11 imports it once a .pth file names a directory holding only a symlink to
# it (the same trick as tools/link_bcc.sh: nothing else from Debian's dist-packages leaks in).
# The agent opens pinned maps through libbcc without compiling C, so no kernel headers here; the
# DaemonSet mounts the node's own (/lib/modules, /usr/src) read-only for bcc if it ever compiles.
#
# Checked here: `hadolint Dockerfile` (tests/unit/test_manifests.py). Not checked: that it builds
# and runs (no container engine, and no base image can be pulled, on these machines).
FROM python:3.11-slim-bookworm

# Unpinned on purpose: bookworm's point and security releases replace exact versions, so a pin
# would break the build at the next update; the release (bookworm) fixes bcc 0.26 / bpftool 7.1.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-bpfcc bpftool \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/system-bcc \
 && ln -s /usr/lib/python3/dist-packages/bcc /opt/system-bcc/bcc \
 && echo /opt/system-bcc > "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/system_bcc.pth"

WORKDIR /src
COPY pyproject.toml README.md ./
# bpf/: the XDP program's C source, package data of gossip_agent.dataplane (dataplane/bpf links
# to it), so the installed package compiles it from where it is installed.
COPY bpf ./bpf
COPY gossip_agent ./gossip_agent
RUN pip install --no-cache-dir . && rm -rf /src

WORKDIR /
# gRPC: Gossip, State, grpc.health.v1 and reflection (LISTEN_ADDR).
EXPOSE 50051
# SIGTERM starts the orderly shutdown (health NOT_SERVING, lease released, maps left as they are).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gossip-agent"]
CMD ["run"]
