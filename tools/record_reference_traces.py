"""Record the routing traces committed beside a version of the reference models (checkpoints/<version>/traces/).

    python tools/record_reference_traces.py                          # checkpoints/v1: both targets, ar g2 g4 g8
    python tools/record_reference_traces.py --targets code_moe --kinds ar --out /tmp/traces

Each trace is one ordinary run of `moelab.runner.run` (what `python run.py` does) with `record_trace=true`, on
the built-in benchmark prompts, CPU float32, all experts resident (the budget changes timing, never routing):
  ar      autoregressive decoding; the trace carries the routers' next-layer predictions (pred_d1, pred_d2: what
          `prefetch=qhs` replays); post-attention states are not saved (size)
  g<N>    speculative decoding at gamma N with the version's dense draft (greedy verification); the header's
          `steps` keeps each verification pass's proposed/accepted counts, which replay follows
The files land as <out>/<target>_<kind>.parquet; an existing file is never overwritten (a committed version is
frozen), and <version>/SHA256SUMS is rewritten to list the new files with the old ones.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("ar", "g2", "g4", "g8")
TARGETS = ("code_moe", "code_moe_fine")
UNSUMMED = ("SHA256SUMS", "README.md")  # the cards may gain text; the binaries and data may not change


def fail(message: str) -> None:
    """Bad input: one line, exit 2, before any weight is read."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def overrides(version: Path, target: str, kind: str, new_tokens: int, results_dir: Path) -> list[str]:
    """The run.py overrides that record one trace (printed by the tool, so the command can be repeated by hand)."""
    over = ["model=code_moe", f"model.name={target}", f"model.path={_rel(version / target)}", "model.dtype=float32",
            "device=cpu", "budget=full", f"workload.max_new_tokens={new_tokens}", "record_trace=true",
            "record_states=false", f"results_dir={results_dir}", "experiment_name=reference_traces", "progress=false",
            "logger.console=false"]
    if kind == "ar":
        return [*over, "policy=on_demand"]
    if not kind.startswith("g") or not kind[1:].isdigit():
        fail(f"unknown trace kind {kind!r}; allowed: ar, g<gamma> (e.g. {', '.join(KINDS)})")
    return [*over, "policy=on_demand", "decoding=speculative", f"decoding.gamma={int(kind[1:])}",
            f"decoding.draft.path={_rel(version / 'code_draft')}"]


def sha256sums(version: Path) -> str:
    """`sha256sum` lines of every file of the version except UNSUMMED, sorted by path (run from inside it)."""
    lines = []
    for f in sorted(version.rglob("*"), key=lambda p: p.relative_to(version).as_posix()):
        if f.is_file() and f.name not in UNSUMMED:
            h = hashlib.sha256()
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            lines.append(f"{h.hexdigest()}  ./{f.relative_to(version).as_posix()}")
    return "\n".join(lines) + "\n"


def record(version: Path, target: str, kind: str, new_tokens: int, out: Path, results_dir: Path) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir

    from moelab.runner import run

    over = overrides(version, target, kind, new_tokens, results_dir)
    print("python run.py " + " ".join(over), flush=True)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        row = run(compose("config", overrides=over))
    dest = out / f"{target}_{kind}.parquet"
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(row["trace_path"], tmp)
    tmp.replace(dest)
    return {"trace": dest.name, "bytes": dest.stat().st_size, "acceptance": row.get("acceptance_rate"),
            "token_agreement": row.get("token_agreement"), "wall_s": round(row["wall_s"], 1)}


def reference_args(doc: str, folder: str, own: Callable[[argparse.ArgumentParser], None]
                   ) -> tuple[argparse.Namespace, Path, Path]:
    """The options of the tools that add files to a reference version (--version, --targets, --out, --threads) and
    `own`'s; returns the arguments, the version folder and the output folder (default <version>/<folder>)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default=str(ROOT / "checkpoints" / "v1"), help="folder with the reference models")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", default=None, help=f"where the files go (default: <version>/{folder})")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy small machine)")
    own(ap)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    version = Path(args.version).resolve()
    return args, version, Path(args.out).resolve() if args.out else version / folder


def _own_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--kinds", default=",".join(KINDS), help="ar and/or g<gamma>")
    ap.add_argument("--new-tokens", type=int, default=32, help="new tokens per built-in prompt")


def main() -> None:
    args, version, out = reference_args(__doc__ or "", "traces", _own_args)
    jobs = [(t, k) for t in args.targets.split(",") for k in args.kinds.split(",")]
    for t, k in jobs:
        overrides(version, t, k, 1, out)  # bad kinds end here, before any weight is read
        if not (version / t / "config.json").is_file():
            fail(f"no model {t!r} in {version}; allowed: {', '.join(TARGETS)}")
        if (out / f"{t}_{k}.parquet").exists():
            fail(f"{out / f'{t}_{k}.parquet'} exists; traces of a version are frozen "
                             "(record into --out elsewhere, or a new version)")
    out.mkdir(parents=True, exist_ok=True)
    done = []
    with tempfile.TemporaryDirectory(prefix="moelab_traces_") as results_dir:
        for t, k in tqdm(jobs, desc="traces", unit="run"):
            done.append(record(version, t, k, args.new_tokens, out, Path(results_dir)))
            print(OmegaConf.to_yaml({"recorded": done[-1]}), flush=True)
    if out.is_relative_to(version):
        (version / "SHA256SUMS").write_text(sha256sums(version))
    for d in done:
        print(f"{d['trace']:28s} {d['bytes'] / 1e6:6.2f} MB  acceptance {d['acceptance']}  wall {d['wall_s']} s")


if __name__ == "__main__":
    main()
