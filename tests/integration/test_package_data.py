"""The wheel holds the product and the XDP program's C source, and nothing of the lab.

A wheel is built from a copy of the files the Dockerfile copies (pyproject.toml, README.md,
gossip_agent/, bpf/), so the checkout's own build/ and egg-info stay untouched, then installed
into a throwaway directory with pip. The installed package must find the C source through
itself (dataplane/xdp.py SOURCE), identical to the top-level bpf/, with no checkout on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
C_FILES = ("service_list.bpf.c", "service_list.h")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for tree in ("gossip_agent", "bpf"):
        shutil.copytree(ROOT / tree, source / tree, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (path,) = out.glob("gossip_agent-*.whl")
    return path


def test_wheel_carries_the_c_source_and_no_lab(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in C_FILES:
            member = f"gossip_agent/dataplane/bpf/{name}"
            assert member in names, f"{member} is not in {wheel.name}"
            assert archive.read(member) == (ROOT / "bpf" / name).read_bytes(), (
                f"{member} in the wheel differs from bpf/{name}")
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.startswith("gossip_agent")} == set(), (
        f"the wheel ships more than the product: {sorted(tops)}")
    lab = [n for n in names if "/testing/" in n or "fakekube" in n or "localcluster" in n]
    assert lab == [], f"lab code in the wheel: {lab}"


def test_installed_package_finds_the_c_source_through_itself(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, f"pip install failed:\n{installed.stderr}"
    # -S: no site-packages, so neither the editable install nor the checkout is importable;
    # the xdp module imports only the standard library until it compiles (bcc is lazy).
    probe = ("import gossip_agent.dataplane.xdp as xdp; "
             "print(xdp.__file__); print(xdp.SOURCE); print(xdp.SOURCE.read_text())")
    env = {**os.environ, "PYTHONPATH": str(target)}
    ran = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, f"the installed package does not import:\n{ran.stderr}"
    module_file, source, text = ran.stdout.split("\n", 2)
    assert module_file.startswith(str(target)), f"imported {module_file}, not the install"
    assert source == str(target / "gossip_agent" / "dataplane" / "bpf" / "service_list.bpf.c")
    assert text.rstrip("\n") == (ROOT / "bpf" / C_FILES[0]).read_text().rstrip("\n")
