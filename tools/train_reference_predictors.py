"""Train the learned MLP predictors committed beside a version of the reference models (checkpoints/<v>/predictors/).

    python tools/train_reference_predictors.py                    # checkpoints/v1: code_moe and code_moe_fine
    python tools/train_reference_predictors.py --targets code_moe --out /tmp/predictors

Each is one `python -m moelab.train_predictor` run (the printed overrides repeat it by hand): a routing trace with
post-attention states through the executor, CPU float32, on prompts cut from the corpus' *training* split
(`workload=code_heldout workload.split=train`: the trainer's files, never the held-out ones the accuracy
experiments and tasks use), then one MLP per target layer at lookahead distance 1. The folders land as
<out>/<target>_d1 (predictor.json, predictor.safetensors, report.csv); an existing folder is never overwritten (a
committed version is frozen), and <version>/SHA256SUMS is rewritten to list the new files with the old ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from record_reference_traces import TARGETS, _rel, fail, reference_args, sha256sums  # noqa: E402  (tools/ is the script's folder)

DISTANCE = 1


def overrides(version: Path, target: str, out: Path, results_dir: Path, prompts: int, new_tokens: int,
              width: int) -> list[str]:
    """The train_predictor overrides for one target (printed, so the command can be repeated by hand)."""
    return [f"model={target}", f"model.path={_rel(version / target)}", "model.dtype=float32", "device=cpu",
            "budget=full", "policy=on_demand", "workload=code_heldout", "workload.split=train",
            f"workload.num_prompts={prompts}", f"workload.max_new_tokens={new_tokens}", "workload.ppl_docs=0",
            f"predictor.distance={DISTANCE}", f"predictor.width={width}", f"predictor.out={_rel(out)}",
            f"results_dir={results_dir}", "progress=false", "logger.console=false"]


def _own_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--prompts", type=int, default=48, help="training-split prompts per target")
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy new tokens per prompt")
    ap.add_argument("--width", type=int, default=64, help="hidden units of each layer's MLP (64: < 1 MB a model)")


def main() -> None:
    args, version, out = reference_args(__doc__ or "", "predictors", _own_args)
    targets = args.targets.split(",")
    for t in targets:
        if t not in TARGETS or not (version / t / "config.json").is_file():
            fail(f"no model {t!r} in {version}; allowed: {', '.join(TARGETS)}")
        if (out / f"{t}_d{DISTANCE}").exists():
            fail(f"{out / f'{t}_d{DISTANCE}'} exists; predictors of a version are frozen "
                 "(train into --out elsewhere, or a new version)")
    from hydra import compose, initialize_config_dir

    from moelab.train_predictor import train_and_save

    with tempfile.TemporaryDirectory(prefix="moelab_predictors_") as results_dir:
        for t in targets:
            over = overrides(version, t, out / f"{t}_d{DISTANCE}", Path(results_dir), args.prompts, args.new_tokens,
                             args.width)
            print("python -m moelab.train_predictor " + " ".join(over), flush=True)
            start = time.perf_counter()
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
                cfg = OmegaConf.to_container(compose("train_predictor", overrides=over), resolve=True)
            folder, report = train_and_save(cfg)
            size = sum(f.stat().st_size for f in folder.iterdir())
            print(report.round(3).to_string(index=False))
            print(f"{folder}: {size / 1e6:.2f} MB, {time.perf_counter() - start:.0f} s; mean held-out top-k recall: "
                  f"mlp {report.val_recall_mlp.mean():.3f} | qhs {report.val_recall_qhs.mean():.3f} | constant "
                  f"{report.val_recall_constant.mean():.3f}", flush=True)
    if out.is_relative_to(version):
        (version / "SHA256SUMS").write_text(sha256sums(version))


if __name__ == "__main__":
    main()
