#!/usr/bin/env bash
# Makes Debian's bcc Python package (python3-bpfcc) importable from the project's virtualenv.
# Only the bcc package is exposed, through a directory holding a single symlink, so nothing
# else from the system's dist-packages can shadow what pip installed.
set -euo pipefail
venv="${1:-.venv}"
src=/usr/lib/python3/dist-packages/bcc
if [ ! -d "$src" ]; then
  echo "link_bcc: $src is missing; run tools/setup_system.sh (python3-bpfcc)" >&2
  exit 1
fi
link_dir="$(cd "$venv" && pwd)/system-bcc"
mkdir -p "$link_dir"
ln -sfn "$src" "$link_dir/bcc"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$link_dir" > "$site/system_bcc.pth"
