"""Sweeps (`python run.py -m ...`): resume, progress, and a look at an experiment's state.

A sweep is Hydra's Cartesian product of overrides, each point one call of `moelab.runner.run`.
Three things make it practical for long sweeps:
- resume: a run whose config already has an `ok` row in its experiment's results is skipped
  (`finished_row`, checked by `moelab.command.run_from_hydra`; `+rerun=true` runs it again), so an
  interrupted or partly failed sweep is finished by typing the same command again;
- progress: `SweepProgress`, a Hydra callback (conf/config.yaml `hydra.callbacks`), shows runs
  done/total with an ETA; each run adds its own bar of generated tokens;
- `python -m moelab.sweep status|merge RESULTS_DIR [EXPERIMENT]`: what is done, failed or missing,
  and folding per-run row files (cluster sweeps, `logger.row_files=true`) into runs.parquet.

Nothing here imports torch: the callback is loaded by every Hydra command.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_LAST: dict[str, Any] = {}  # how the last run of this process ended, for the progress bar


def note(status: str, run_id: str | None = None, error: str = "") -> None:
    """Record how the current run ended (ok, failed, skipped, ...) and why it failed, for `SweepProgress`."""
    _LAST.update(status=status, run_id=run_id, error=error)


FAILED_POINTS: list[tuple[str, str]] = []  # (overrides, one-line error) of the last sweep's failed points


def exit_code() -> int:
    """The command's exit status once Hydra is done: 128 + N if a signal N came after the last run (it was held
    while Hydra finished), else 1 if any point of a sweep failed, else 0."""
    from moelab.interrupts import Interrupts

    if Interrupts.pending is not None:
        return 128 + int(Interrupts.pending)
    return 1 if FAILED_POINTS else 0


def previous_run(cfg: DictConfig) -> tuple[str | None, dict[str, Any] | None]:
    """This config's run id and, unless `rerun` is set, its stored `ok` row (None if there is none).
    Any problem reading the config or the results gives (None, None): the run itself will report it."""
    from omegaconf import OmegaConf

    from moelab.results.row import run_id

    try:
        c = OmegaConf.to_container(cfg, resolve=True)
        return run_id(c), None if c.get("rerun") else finished_row(c)
    except Exception:
        return None, None


def finished_row(c: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored row of a run with this resolved config's id and status `ok`, or None."""
    from moelab.results.row import run_id
    from moelab.results.store import read_runs

    rid = run_id(c)
    df = read_runs(str(c.get("results_dir", "results")), str(c.get("experiment_name", "default")))
    if df.empty or "run_id" not in df or "status" not in df:
        return None
    done = df[(df["run_id"] == rid) & (df["status"] == "ok")]
    if done.empty:
        return None
    row = done.iloc[-1]
    return {k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}


def objective(row: Mapping[str, Any]) -> float | None:
    """What a sweep's task returns (for optimising sweepers): the run's mean TPOT."""
    v = row.get("tpot_ms")
    return float(v) if isinstance(v, int | float) else None


def sweep_size(config: DictConfig) -> int | None:
    """How many runs Hydra's basic sweeper will launch for this multirun config (None if unknown)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # a sweep syntax we cannot count: the bar shows no total
        return None


class SweepProgress(Callback):
    """A progress bar over the runs of a sweep (done/total, ETA; skipped runs leave the total).

    With the basic launcher every run happens in this process, so the bar sees each one; launchers
    that run jobs elsewhere (joblib, SLURM) call `on_job_end` in their workers, where it stays quiet.
    """

    def __init__(self) -> None:
        self.bar: Any = None
        self.counts: Counter[str] = Counter()
        self.run_ids: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.where = ("results", "default")

    def __getstate__(self) -> dict[str, Any]:  # launchers pickle callbacks to their workers: not the bar
        return {"bar": None, "counts": Counter(), "run_ids": [], "failed": [], "where": self.where}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.where = (str(config.get("results_dir", "results")), str(config.get("experiment_name", "default")))
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if not launcher.endswith("BasicLauncher"):  # runs happen in other processes or on other hosts
            total = sweep_size(config)
            print(f"sweep: {total if total is not None else 'its'} runs through {launcher.rsplit('.', 1)[-1]}; "
                  f"see how far it got with `python -m moelab.sweep status {config.get('results_dir', 'results')} "
                  f"{config.get('experiment_name', 'default')}`", flush=True)
        elif config.get("progress", True):
            self.bar = tqdm(total=sweep_size(config), desc="sweep", unit="run", position=0, dynamic_ncols=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        status, rid, error = _LAST.pop("status", "failed"), _LAST.pop("run_id", None), _LAST.pop("error", "")
        self.counts[status] += 1
        if status in ("failed", "interrupted"):
            overrides = " ".join(config.hydra.overrides.task) if "hydra" in config else ""
            self.failed.append((overrides, (error or status).splitlines()[0][:240]))
        if rid is not None:
            self.run_ids.append(rid)
        if self.bar is None:
            return
        if status == "skipped" and self.bar.total:
            self.bar.total -= 1
        else:
            self.bar.update(1)
        self.bar.set_postfix({k: v for k, v in sorted(self.counts.items())}, refresh=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.counts:
            try:
                table = sweep_table(*self.where, self.run_ids)
                if len(table):
                    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
            except Exception as e:  # a summary must not fail a finished sweep
                print(f"(no sweep table: {type(e).__name__}: {e})")
            if self.failed:
                print(f"failed points ({len(self.failed)}):")
                for overrides, error in self.failed:
                    print(f"  {overrides or '(no overrides)'}\n    {error}")
            parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
            print(f"sweep done: {parts}; results in {'/'.join(self.where)}/runs.parquet", flush=True)
        FAILED_POINTS[:] = self.failed


TABLE_METRICS = ("tpot_ms", "hit_rate", "token_agreement", "tokens_per_s")
TABLE_SETTINGS = ("prefetch", "cache", "balancer", "decoding", "budget_experts")


def sweep_table(results_dir: str, experiment: str, run_ids: Sequence[str]) -> Any:
    """The sweep's runs, one line each: run id, label, the settings that vary, status and headline metrics."""
    from moelab.analysis.load import latest_rows, with_labels
    from moelab.results.store import read_runs

    df = latest_rows(read_runs(results_dir, experiment))
    if df.empty:
        return df
    order = {rid: i for i, rid in enumerate(run_ids)}  # the sweep's own order
    df = with_labels(df[df["run_id"].isin(list(order))].sort_values("run_id", key=lambda s: s.map(order)))
    varying = [c for c in TABLE_SETTINGS if c in df and df[c].astype(str).nunique() > 1]
    cols = ["run_id", "label", *varying, "status", *[c for c in TABLE_METRICS if c in df and df[c].notna().any()]]
    return df[cols].reset_index(drop=True)


def status_table(results_dir: str | Path, experiment: str | None = None) -> Any:
    """Per experiment: runs by their latest status (a later `ok` supersedes an earlier failure)."""
    import pandas as pd

    from moelab.analysis.load import latest_rows
    from moelab.results.store import read_runs

    df = read_runs(results_dir, experiment)
    if df.empty:
        return pd.DataFrame()
    latest = latest_rows(df)
    return latest.groupby(["experiment", "status"]).size().unstack(fill_value=0)


def experiments(root: Path) -> list[str]:
    """Experiments under a results folder: folders with a runs.parquet or row files."""
    from moelab.results.safekeeping import stashed_files
    from moelab.results.store import ROW_FILES

    return sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / "runs.parquet").exists() or any(
        (p / ROW_FILES).glob("*.parquet")) or stashed_files(p)))


USAGE = "usage: python -m moelab.sweep status|merge RESULTS_DIR [EXPERIMENT]"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m moelab.sweep status|merge RESULTS_DIR [EXPERIMENT]`; a bad input is one `error:` line, exit 2."""
    from moelab.core.errors import MoelabError

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(args) not in (2, 3) or args[0] not in ("status", "merge"):
        print(f"error: expected a command and a results folder; {USAGE}", file=sys.stderr)
        return 2
    root = Path(args[1])
    if not root.is_dir():
        print(f"error: no results directory {root}", file=sys.stderr)
        return 2
    known = experiments(root)
    if len(args) == 3 and args[2] not in known:
        print(f"error: no experiment {args[2]!r} under {root}; experiments there: {', '.join(known) or 'none'}",
              file=sys.stderr)
        return 2
    try:
        if args[0] == "merge":
            names = [args[2]] if len(args) == 3 else known
            for name in names:
                print(merge(root / name), flush=True)
            if not names:
                print(f"no experiments under {root}: nothing to merge")
            return 0
        table = status_table(root, args[2] if len(args) == 3 else None)
    except (MoelabError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if not len(table):
        print(f"no runs under {root}")
        return 0
    print(f"{root}: runs by their latest status, per experiment (a later ok supersedes an earlier failure)")
    print(table.to_string())
    return 0


def merge(exp_dir: Path) -> str:
    """Fold an experiment's row files (its rows/ folder, and rows a full disk left in the temporary folder) into
    its runs.parquet; one line saying what was done."""
    from moelab.results.safekeeping import stash_dir, unstash
    from moelab.results.store import merge_row_files, read_runs

    stashed = unstash(exp_dir)
    n = merge_row_files(exp_dir)
    if not n:
        return f"{exp_dir}: no row files to merge; runs.parquet unchanged"
    total = len(read_runs(exp_dir.parent, exp_dir.name))
    extra = f" ({stashed} of them from {stash_dir(exp_dir)})" if stashed else ""
    return f"{exp_dir}: merged {n} row files{extra} into runs.parquet, which now holds {total} rows"


if __name__ == "__main__":
    sys.exit(main())
