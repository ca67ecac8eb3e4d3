"""The `python run.py` task: one run, or one point of a sweep, with one line for each way it can end.

A bad input ends a single run with one `error:` line and exit 2 (a sweep records it and goes on); results that
cannot be stored or read stop the command before anything is measured; SIGINT and SIGTERM record the run in
progress as interrupted (exit 130 / 143) and the same command resumes a sweep; a single run ends by saying
where its row went.
"""

from __future__ import annotations

import sys
import traceback

from omegaconf import DictConfig, OmegaConf

from moelab.core.errors import MoelabError, ResultsError
from moelab.interrupts import Interrupts, describe, exit_code, signum_of
from moelab.results import preflight, safekeeping
from moelab.runner import run


def run_from_hydra(cfg: DictConfig) -> float | None:
    """Hydra task: a bad input ends a single run with one line; in a sweep it is recorded and skipped.

    In a sweep, a run whose config already has an `ok` row in its experiment is not run again (so the
    same command finishes an interrupted sweep); `+rerun=true` runs it anyway. Single runs always run.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from moelab import sweep

    try:
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        multirun = False
    Interrupts.install()  # SIGTERM (a scheduler's time limit) is handled as Ctrl-C is
    library_bars(bool(cfg.get("progress", True)))
    if Interrupts.pending is not None:  # the signal came between two runs of a sweep: stop before the next
        _stop(Interrupts.take_pending(), multirun)
    try:  # results that could not be stored or read stop the whole command: every run would hit them
        preflight.check_results(OmegaConf.to_container(cfg, resolve=True))
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        pass  # a config that does not resolve: the run reports it
    rid, done = sweep.previous_run(cfg) if multirun else (None, None)
    if done is not None:
        sweep.note("skipped", rid)
        print(f"skipped run {rid}: already ok in {cfg.get('results_dir')}/{cfg.get('experiment_name')} "
              "(+rerun=true runs it again)", flush=True)
        return sweep.objective(done)
    try:
        with Interrupts.measuring():
            row = run(cfg)
        sweep.note(str(row.get("status")), rid)
        if not multirun and safekeeping.LAST is not None:
            print(safekeeping.LAST.line(), flush=True)
        if Interrupts.pending is not None:  # came while the row was written: it is written, now stop
            _stop(Interrupts.take_pending(), multirun)
        return row.get("tpot_ms")
    except safekeeping.RowNotStoredError as e:  # measured, but the row is in a fallback file
        sweep.note("failed", rid, str(e))
        print(f"error: {e}", file=sys.stderr)
        if multirun:
            return None
        sys.exit(1)
    except MoelabError as e:
        sweep.note("failed", rid, str(e))
        print(f"error: {e}", file=sys.stderr)
        if multirun:
            return None
        sys.exit(2)
    except KeyboardInterrupt as e:  # the run is recorded as interrupted; rows of finished runs are untouched
        _stop(signum_of(e), multirun, recorded=True)
    except Exception as e:
        sweep.note("failed", rid, f"{type(e).__name__}: {e}")
        if multirun:
            print(f"run failed ({type(e).__name__}: {e}); recorded as failed, sweep continues", file=sys.stderr)
            traceback.print_exc()
            return None
        raise


def library_bars(on: bool) -> None:
    """`progress=false` also hides the bars of the libraries a run calls (transformers' "Loading weights" when a
    draft or reference loads with from_pretrained, huggingface_hub's downloads)."""
    import huggingface_hub.utils
    import transformers.utils.logging as tlog

    if on:
        tlog.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()
    else:
        tlog.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()


def _stop(signum: int, multirun: bool, recorded: bool = False) -> None:
    """End the command after SIGINT/SIGTERM with the shell's exit code and one line on what was kept."""
    where = f" ({safekeeping.LAST.line()})" if recorded and safekeeping.LAST is not None else ""
    what = ("finished runs keep their rows, the same command resumes the sweep" if multirun
            else "recorded as interrupted" if recorded else "nothing was run")
    print(f"\n{describe(signum)}; {what}{where}", file=sys.stderr, flush=True)
    sys.exit(exit_code(signum))
