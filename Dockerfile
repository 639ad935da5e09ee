# gossip-agent container image, the one k8s/ runs as a DaemonSet.
#
#   make image                                       # this repository's way (podman, below)
#   docker build -t REGISTRY/gossip-agent:0.3.0 .    # anywhere with a container engine
#
# Built and run by tests/e2e/test_image_pods.py: `make image` bootstraps debian:bookworm-slim
# with debootstrap (cached under .cache/), builds this file with podman in chroot isolation, and
# the test runs three pods from the image's root filesystem exactly as the rendered DaemonSet
# describes them (command, env, capabilities, mounts, DNS, read-only root).
#
# Why Debian bookworm and its own Python 3.11: bcc comes from Debian's python3-bpfcc (the PyPI
# package named `bcc` is an unrelated project), built for Debian's Python. bcc's Python package
# is pure Python over ctypes (libbcc.so.0); the agent's virtualenv sees it, and nothing else from
# Debian's dist-packages, through a .pth file naming a directory that holds one symlink to it
# (tools/link_bcc.sh does the same on a host).
#
# Two stages: `build` has pip and the network and makes the virtualenv; the final stage copies
# only that virtualenv onto a base with bcc's runtime. No compiler, headers, pip or pip caches
# reach the final image. bcc's runtime (libbcc, libclang and LLVM) stays: the xdp component's
# agent compiles bpf/service_list.bpf.c at start, against the NODE's kernel headers, which the
# DaemonSet mounts at /lib/modules and /usr/src (no image can ship headers for every kernel).

# The base: the public debian:bookworm-slim by default; `make image` passes a local
# debootstrap of the same release (localhost/debian:bookworm-slim).
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# Unpinned on purpose: bookworm's point and security releases replace exact versions, so a pin
# would break the build at the next update; the release (bookworm) fixes Python 3.11.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Every dependency has a manylinux wheel for CPython 3.11, so nothing is compiled here.
RUN python3 -m venv /opt/gossip-agent
WORKDIR /src
COPY pyproject.toml README.md ./
# bpf/: the XDP program's C source, package data of gossip_agent.dataplane (dataplane/bpf links
# to it), so the installed package compiles it from where it is installed.
COPY bpf ./bpf
COPY gossip_agent ./gossip_agent
# The optional build secret `ca` is a CA bundle for pip, for builds behind a TLS-intercepting
# proxy (`make image` passes the host's when pip is configured with one); it is mounted for this
# step only and never stored in a layer. pip compiles every module to bytecode here: the root
# filesystem is read-only in the pod, so the agent could not write .pyc files at start.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/gossip-agent/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/gossip-agent/bin/pip uninstall -y --disable-pip-version-check pip setuptools \
 && mkdir -p /opt/gossip-agent/system-bcc \
 && ln -s /usr/lib/python3/dist-packages/bcc /opt/gossip-agent/system-bcc/bcc \
 && echo /opt/gossip-agent/system-bcc \
    > /opt/gossip-agent/lib/python3.11/site-packages/system_bcc.pth

FROM ${BASE}
ARG VERSION=0.3.0
LABEL org.opencontainers.image.title="gossip-agent" \
      org.opencontainers.image.description="Keeps every node's pinned eBPF SERVICE_LIST map equal to the leader's snapshot by gRPC gossip under a leader lease, and scales idle services to zero." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gossip-agent/gossip-agent" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# python3-bpfcc: bcc 0.26 (libbcc with libclang and LLVM, compiles at run time); bpftool 7.1:
# `kubectl exec ... bpftool map dump pinned /sys/fs/bpf/gossip-agent/SERVICE_LIST` for
# operators. --no-install-recommends keeps out bpfcc-tools' compilers and kernel headers.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-bpfcc bpftool \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY --from=build /opt/gossip-agent /opt/gossip-agent
ENV PATH=/opt/gossip-agent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# uid 0, on purpose. The node's bpffs directories are root's with mode 0700, so only uid 0 can
# open /sys/fs/bpf/gossip-agent; the bpf() calls then need capabilities that Kubernetes grants
# through securityContext.capabilities.add (BPF, SYS_RESOURCE; the xdp component adds NET_ADMIN
# and SYS_ADMIN). Kubernetes grants no ambient capabilities, so a non-root user would lose them
# at exec: only root keeps the added set in its permitted and effective sets. The pod is not
# privileged, drops ALL other capabilities, and its root filesystem is read-only (k8s/base).
# So the last USER is root, stated rather than inherited from the base.
# hadolint ignore=DL3002
USER 0:0
WORKDIR /
# gRPC (Gossip, State, health, reflection); health only, plaintext, for the kubelet's probes;
# the leader's pushes; Prometheus /metrics.
EXPOSE 50051 50052 50053 9102
# SIGTERM starts the orderly shutdown (health NOT_SERVING, lease released, maps left as they are).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gossip-agent"]
CMD ["run"]
