#!/usr/bin/env bash
# The device takes at most 64 MiB of working tree; the trained checkpoints' weights (~118 MB, tracked) do not fit.
#   bash tools/device_slim.sh out    # before a device call: take them out of the index (files stay) and ignore them
#   bash tools/device_slim.sh in     # right after it: put them back
# While they are out, .git/hooks/pre-commit refuses commits (they would delete them). Benchmarks that need the
# trained models on the device (none of decode_speed's default sections) need another way there.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
paths=(checkpoints/v1/code_moe checkpoints/v1/code_moe_fine checkpoints/v1/code_draft)
case "${1:-}" in
  out) git rm -r -q --cached "${paths[@]}"
       for p in "${paths[@]}"; do grep -qx "/$p/" "$exclude" 2>/dev/null || echo "/$p/" >> "$exclude"; done ;;
  in)  for p in "${paths[@]}"; do sed -i "\#^/$p/\$#d" "$exclude"; done
       git reset -q -- "${paths[@]}" ;;
  *) echo "usage: $0 out|in" >&2; exit 2 ;;
esac
git ls-files -z | du --apparent-size --files0-from=- -ch 2>/dev/null | tail -1
