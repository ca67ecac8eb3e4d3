"""lm-eval tasks of a run (`eval.*` in the config): names checked before any weight loads, scores into the row.

Task names are looked up in moelab's own task folder (moelab/eval/task_configs), in `eval.include_path`,
and, unless `eval.include_defaults=false`, in lm-eval's bundled tasks (indexing those takes ~25 s).
Offline (`HF_HUB_OFFLINE`/`HF_DATASETS_OFFLINE`, or the hub unreachable), each task's hub dataset must be cached:
one that is not is refused in one line before any weight loads (`check_datasets`), not after the timed run.
The full lm-eval results JSON is written beside the run as `<results_dir>/<experiment>/<run_id>/lm_eval.json`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from moelab.config_schema import Count, NonNegative, Range
from moelab.core.errors import ConfigError, MissingDependencyError

OWN_TASKS = Path(__file__).resolve().parent / "task_configs"
_MANAGERS: dict[tuple, Any] = {}


@dataclass
class EvalOptions:
    """The schema of `eval.*` (conf/config.yaml), read by the functions below."""

    tasks: list[str] | str | None = None  # a list, or names separated by commas
    limit: Count | Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] | None = None  # per task; < 1: a share
    num_fewshot: NonNegative | None = None
    include_path: str | list[str] | None = None
    include_defaults: bool = True
    gen_kwargs: dict[str, Any] | None = None
    bootstrap_iters: NonNegative = 1000
    max_length: Count | None = None
    log_samples: bool = False


def _eval_cfg(c: Mapping[str, Any]) -> Mapping[str, Any]:
    ev = c.get("eval") or {}
    return ev if isinstance(ev, Mapping) else {}


def requested_tasks(c: Mapping[str, Any]) -> list[str]:
    tasks = _eval_cfg(c).get("tasks") or []
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    return [str(t).strip() for t in tasks if str(t).strip()]


def task_manager(ev: Mapping[str, Any]) -> Any:
    """lm-eval's task index over moelab's tasks, the user's folders and (optionally) lm-eval's own; cached."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise MissingDependencyError("eval.tasks needs lm-evaluation-harness: pip install 'moelab[eval]'") from None
    extra = ev.get("include_path") or []
    paths = [str(OWN_TASKS)] + [str(Path(str(p)).expanduser()) for p in ([extra] if isinstance(extra, str) else extra)]
    for p in paths[1:]:
        if not Path(p).exists():
            raise ConfigError(f"eval.include_path {p} does not exist (a folder of lm-eval task YAML files)")
    key = (tuple(paths), bool(ev.get("include_defaults", True)))
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=paths, include_defaults=key[1])
    return _MANAGERS[key]


def check_tasks(c: Mapping[str, Any]) -> list[str]:
    """The run's task names, each known to lm-eval (else one ConfigError naming it); [] when none asked."""
    tasks = requested_tasks(c)
    if not tasks:
        return []
    routing = c.get("routing") if isinstance(c.get("routing"), Mapping) else {}
    if routing.get("name") == "replay":
        raise ConfigError("eval.tasks runs new text through the model; a replayed trace only holds the routing of "
                          "its own prompts: use routing=native")
    ev = _eval_cfg(c)
    known = set(task_manager(ev).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        own = sorted(p.stem for p in OWN_TASKS.glob("*.yaml"))
        where = "" if ev.get("include_defaults", True) else " (eval.include_defaults=false: lm-eval's own tasks off)"
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)}{where}; moelab's tasks: {', '.join(own)}; "
                          "list lm-eval's with `lm_eval ls tasks`, or add a folder of task YAMLs with "
                          "eval.include_path=DIR")
    check_datasets(task_manager(ev), tasks)
    return tasks


LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder"}


def _task_configs(tm: Any, name: str, seen: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(task, its YAML config with includes) of a task name, or of each task of a group or tag."""
    if name in seen:
        return
    seen.add(name)
    entry = tm._entry(name) if hasattr(tm, "_entry") else None
    if entry is None or entry.yaml_path is None:  # a Python-defined task, or an lm-eval without this index
        return
    kind = entry.kind.name
    if kind == "TAG":
        for other, e in tm.task_index.items():
            if name in getattr(e, "tags", ()):
                yield from _task_configs(tm, other, seen)
        return
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(entry.yaml_path, resolve_func=False)
    if kind == "GROUP":
        for sub in cfg.get("task") or []:
            if isinstance(sub, str):
                yield from _task_configs(tm, sub, seen)
        return
    yield name, cfg


@contextmanager
def _offline_flags() -> Iterator[None]:
    """The hub's offline mode for this block only (datasets and huggingface_hub read the flags at import)."""
    import datasets.config
    import huggingface_hub.constants

    old = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = old


def check_datasets(tm: Any, tasks: list[str]) -> None:
    """Offline, every task's hub dataset must be in the cache: else one ConfigError naming the task, the dataset
    and what is allowed. Online nothing is checked (lm-eval downloads what it needs)."""
    from moelab.workloads._hf_datasets import hub_reachable

    if hub_reachable():
        return
    import datasets

    why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE") \
        else "the hub cannot be reached"
    seen: set[str] = set()
    for name in tasks:
        for task, cfg in _task_configs(tm, name, seen):
            path, config = cfg.get("dataset_path"), cfg.get("dataset_name")
            if not path or "custom_dataset" in cfg or str(path) in LOCAL_BUILDERS or Path(str(path)).exists():
                continue
            try:
                with _offline_flags():
                    datasets.load_dataset_builder(str(path), config)
            except Exception:
                own = ", ".join(sorted(p.stem for p in OWN_TASKS.glob("*.yaml")))
                raise ConfigError(
                    f"eval.tasks: task {task} needs the hub dataset {path}{f' ({config})' if config else ''}, which "
                    f"is not cached and {why}; allowed offline: tasks whose data is cached (moelab's: {own}), or "
                    "run once with network to cache it") from None


def score_columns(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """lm-eval's per-task metrics as row columns: `task_score.<task>.<metric>` (filter appended unless none;
    stderr as `<metric>_stderr`), and `task_samples.<task>` (examples scored)."""
    row = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not isinstance(value, int | float) or isinstance(value, bool) or metric == "alias":
                continue
            if metric == "sample_len":
                row[f"task_samples.{task}"] = float(value)
                continue
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            row[f"task_score.{task}.{name}"] = float(value)
    return row


def write_json_atomic(path: Path, obj: Any) -> None:
    from lm_eval.utils import handle_non_serializable

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=handle_non_serializable))
    tmp.replace(path)


def score_tasks(om: Any, decoding: Any, c: Mapping[str, Any], tasks: list[str], run_id: str,
                experiment: str) -> dict[str, Any]:
    """Run the tasks on the model as it is now wired (through the executor in a run); the row's new columns."""
    from lm_eval import evaluator

    from moelab.eval.lm import MoelabLM
    from moelab.workloads._hf_datasets import go_offline, hub_reachable

    ev = _eval_cfg(c)
    if not hub_reachable():
        go_offline()  # a task whose data is not cached then fails at once instead of retrying for minutes
    limit = ev.get("limit")
    seed = int(c.get("seed", 0))

    def evaluate(bootstrap_iters: int) -> dict:
        return evaluator.simple_evaluate(
            model=MoelabLM(om, decoding, max_length=ev.get("max_length"), progress=bool(c.get("progress", True))),
            tasks=tasks, task_manager=task_manager(ev), num_fewshot=ev.get("num_fewshot"),
            limit=float(limit) if limit is not None and float(limit) < 1 else (int(limit) if limit else None),
            gen_kwargs=dict(ev["gen_kwargs"]) if ev.get("gen_kwargs") else None,
            bootstrap_iters=bootstrap_iters, log_samples=bool(ev.get("log_samples", False)),
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )

    iters = int(ev.get("bootstrap_iters", 1000))
    try:
        out = evaluate(iters)
    except OverflowError:  # lm-eval's bootstrap of a perplexity near float max (an untrained model): no stderr
        if iters == 0:
            raise
        print("warning: lm-eval's bootstrap standard error overflowed (perplexities near float max); "
              "scoring again with eval.bootstrap_iters=0", file=sys.stderr)
        out = evaluate(0)
    path = Path(str(c.get("results_dir", "results"))) / experiment / run_id / "lm_eval.json"
    write_json_atomic(path, out)
    return {**score_columns(out["results"]), "eval_tasks": ",".join(tasks), "lm_eval_path": str(path)}
