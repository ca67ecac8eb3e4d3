#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (it cannot download anything), for Python 3.12 x86-64.
#
#   here, once:   bash tools/device_wheels.sh            # fills .whl/ (git-ignored)
#   there:        source tools/device_env.sh             # installs them to /tmp/site, sets PYTHONPATH
#
# Pass the .whl folder in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
exclude="$(git rev-parse --git-path info/exclude)"   # a worktree's .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .whl hydra-core==1.3.2 omegaconf==2.3.0 gguf==0.19.0   # gguf: moelab.export.gguf (benchmarks/llama_cpp.py)
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is published as a source archive only:
# build its pure-Python wheel here.
ls .whl/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 || \
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
