# The two commands a user needs on a fresh Debian 12 machine (run as root):
#   make demo   a local cluster of agents on this machine (tools/local_cluster.py)
#   make test   the whole test suite
# Both do all set-up themselves: Debian packages, kernel-header links for bcc, the bpffs mount
# (tools/setup_system.sh) and the virtualenv at .venv (`make venv` builds only that).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NODES ?= 5

.PHONY: venv system link-bcc demo test lint proto bench image clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

system:
	bash tools/setup_system.sh

# bcc is Debian's python3-bpfcc: expose only that package to the virtualenv (not all of
# dist-packages), through a .pth file naming a directory that holds one symlink.
link-bcc: venv
	bash tools/link_bcc.sh $(VENV)

# make demo [NODES=5] [BACKEND=bpffs|redis|configmap|lease] [ROOT=/sys/fs/bpf/DIR]: each run
# pins under a root of its own, removed on exit, unless ROOT names one (then it is kept).
demo: system link-bcc
	$(BIN)/python tools/local_cluster.py --nodes $(NODES) $(if $(BACKEND),--backend $(BACKEND)) $(if $(ROOT),--root $(ROOT))

test: system link-bcc
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check gossip_agent tests tools
	$(BIN)/mypy
	$(BIN)/lint-imports

proto: venv
	$(BIN)/python tools/gen_proto.py

bench: system link-bcc
	$(BIN)/python tools/bench.py

# The container image k8s/ runs (Dockerfile), built with podman in chroot isolation on a
# debootstrapped bookworm base cached under .cache/image; prints its size (tools/build_image.sh).
image:
	bash tools/build_image.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
