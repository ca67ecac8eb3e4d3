"""The one recipe: a resolved config in, one measured run (a results row) out.

`RunRecipe` runs it as named passes, in this order: setup (the one assembly of a run, `moelab.assembly`: every
check before any weight is read, then the model is loaded), reference (the un-offloaded model; it also warms up the
kernels), warm-up (a short generation through the executor), profile (only for policies that need the coming
routing), timed, accuracy (perplexity), row, tasks (lm-evaluation-harness, last). `run(cfg)` drives it and
records the row, also when a pass fails.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from moelab.assembly import MODELS, Components, plan_run, through_executor
from moelab.core.errors import MoelabError
from moelab.decoding.steps import step_for
from moelab.interrupts import Interrupts
from moelab.metrics.floors import compute_floor
from moelab.metrics.host_cost import host_cost_columns
from moelab.metrics.perplexity import corpus_perplexity
from moelab.metrics.summary import run_metrics, step_table, token_agreement, verify_metrics
from moelab.models.offloaded import OffloadedModel
from moelab.offload.budget import GIB, free_device_bytes
from moelab.offload.calibrate import h2d_peak_gbps
from moelab.results import preflight, safekeeping
from moelab.results.row import base_row
from moelab.results.schema import check_row
from moelab.routing.trace import TracingBackend

NAN = float("nan")


def _reference_fits(om: OffloadedModel) -> bool:
    if om.device.type == "cpu":
        return True
    return om.store.total_bytes < free_device_bytes(om.device) - GIB


class RunRecipe:
    """One measured run as named passes over one loaded model, in the order `execute` gives them.

    Each pass reads what the earlier ones left on the recipe (the components, the model, the executor, the
    batches) and adds its columns to `row`. Nothing is measured before `setup` has checked every name, the
    budget and the host memory; the reference runs un-offloaded before anything goes through the executor.
    """

    def __init__(self, cfg: Mapping[str, Any], experiment: str, row: dict[str, Any]):
        self.cfg: Mapping[str, Any] = cfg
        self.experiment = experiment
        self.row = row
        self.logger: Any = None  # set as soon as the components are built: a failed run is logged by it too
        self.steps: Any = None  # the timed pass's step table, kept also when a later pass fails
        self.ref_tokens: list[list[int]] | None = None
        self.ppl_ref = NAN

    def execute(self) -> dict[str, Any]:
        """Every pass, in order; returns the finished row."""
        self.setup()
        self.reference()
        self.floor()
        self.warm_up()
        self.profile()
        self.timed()
        self.accuracy()
        self.fill_row()
        self.tasks()
        check_row(self.row)
        return self.row

    # ------------------------------------------------------------------ setup: checks first, then weights
    def setup(self) -> None:
        """The one assembly (moelab.assembly): check the config, the components, the budget and the host memory
        before any weight is read, then load the model and build the executor and the run's batches."""

        def built(comps: Components) -> None:
            self.logger = comps.logger  # a run that fails from here on is logged by its own logger

        planned = plan_run(self.cfg, serves="run", row=self.row, on_components=built)
        self.cfg, self.comps, self.path, self.eval_tasks = planned.cfg, planned.comps, planned.path, planned.eval_tasks
        run = self.assembly = planned.load(row=self.row)
        self.om, self.executor = run.om, run.executor
        self.batches, self.new_tokens, self.ppl_ids = run.batches, run.new_tokens, run.ppl_ids

    # ------------------------------------------------------------------ the passes through the model
    def reference(self) -> None:
        """The un-offloaded model on the same prompts (when it fits or is asked for): the tokens and perplexity
        the offloaded run is compared with, and its speed. It also warms up the kernels."""
        om, dec = self.om, self.comps.decoding
        want = str(self.cfg.get("reference", "auto")).lower()
        fits = _reference_fits(om)
        if not (want in ("true", "auto") and (want == "true" or fits)):
            return
        if fits:
            om.reference.materialize()
        with om.using(self.comps.routing.wrap(om.reference, om)):
            ref_gen = dec.generate(om, self.batches, self.new_tokens)
            self.ppl_ref = corpus_perplexity(om, self.ppl_ids)
        self.ref_tokens = ref_gen.new_tokens
        per_token = ref_gen.decode_ms_per_token()
        if per_token:  # the un-offloaded model's speed, same prompts (its first steps include warm-up)
            self.row["ref_tpot_median_ms"] = float(np.median(per_token))
        om.reference.release()

    def floor(self) -> None:
        """What the floors are measured from, on this machine: the plain model's decode step as a CUDA graph on the
        run's prompts (NaN on a CPU) and the copy engine's peak H2D bandwidth (once per machine, cached)."""
        self.compute_floor = compute_floor(self.om, self.batches, self.new_tokens)
        self.h2d_gbps_calibrated = h2d_peak_gbps(self.om.device)

    def warm_up(self) -> None:
        """Short generations through the executor that run every (phase, tokens) shape the timed pass runs, then
        forgotten: a prefill and a one-token decode step of each batch size (speculative decoding: verification
        passes of gamma+1 tokens and of each shorter length; `Decoding.warming_up`). Under replayed routing the
        recording decides every step's tokens: its first batch only, as recorded."""
        dec, kwargs = self.comps.decoding, dict[str, Any]()
        sizes = [b for i, b in enumerate(self.batches) if all(len(a) != len(b) for a in self.batches[:i])]
        with through_executor(self.om, self.executor, self.comps), dec.warming_up(self.new_tokens) as n:
            if self.path.graphs:  # a third token captures the decode graph, untimed, for the timed cache length
                n = min(3, self.new_tokens)
                kwargs["step_factory"] = lambda om, b, length: step_for(om, b, length + self.new_tokens - n)
            for batch in sizes[:1] if self.comps.routing.replays else sizes:
                dec.generate(self.om, [batch], n, **kwargs)
        self.executor.reset()

    def profile(self) -> None:
        """For the oracle and a static hot set profiled in-sample: a first pass records the routing the timed
        pass will have. Then the cache's preloaded experts (e.g. the hot set) are placed, untimed."""
        comps, executor = self.comps, self.executor
        if comps.prefetch.needs_future or comps.cache.needs_future:
            with through_executor(self.om, executor, comps):
                comps.decoding.generate(self.om, self.batches, self.new_tokens)
            future = list(executor.counters.routing)
            executor.reset()
            executor.bind(executor.context.with_future(future))
        executor.preload(comps.cache.preload())  # not in the run's transfers

    def timed(self) -> None:
        """The measured generation (optionally recording a trace), then its metrics from the timeline."""
        c, om, executor, comps, row = self.cfg, self.om, self.executor, self.comps, self.row
        tracers: list[TracingBackend] = []

        def make_tracer(backend: Any) -> TracingBackend:
            tracers.append(TracingBackend(backend, om, states=bool(c.get("record_states"))))
            return tracers[-1]

        with through_executor(om, executor, comps, make_tracer if c.get("record_trace") else None):
            total = sum(len(b) for b in self.batches) * self.new_tokens
            with tqdm(total=total, desc=f"run {row['run_id']}", unit="tok", disable=not c.get("progress", True),
                      leave=False) as bar:
                gen = self.gen = comps.decoding.generate(om, self.batches, self.new_tokens, on_tokens=bar.update)
        for part in (comps.decoding, comps.balancer, comps.cache):  # acceptance, solver counts, hot evictions
            row.update(part.stats())
        if tracers:
            tracers[0].close()
            row["trace_path"] = str(save_trace(tracers[0], gen, om, self.batches, self.new_tokens, c,
                                               self.experiment, row["run_id"]))
        timeline = executor.finish()
        self.steps = step_table(gen, timeline)
        metrics = run_metrics(gen, self.steps, timeline, executor.counters, executor.transfers.count,
                              executor.capacity, om.spec.expert_bytes, self.compute_floor, self.h2d_gbps_calibrated,
                              executor.execution.speculates)
        metrics.update(executor.observers.row(), **verify_metrics(gen, executor.counters),
                       cpu_ms=executor.cpu_worker.busy_ms, cpu_wait_ms=executor.cpu_worker.wait_ms)
        failures = [s.failure for s in getattr(executor, "graph_steps", {}).values() if s.failure]
        metrics.update(host_cost_columns(gen, executor.counters, self.path.graphs, failures))
        self.metrics = metrics
        # into the row now: a later pass that fails (perplexity, tasks) leaves a failed row that keeps them
        row.update(metrics)
        row["token_agreement"] = (token_agreement(gen.new_tokens, self.ref_tokens) if self.ref_tokens is not None
                                  else NAN)
        executor.reset()

    def accuracy(self) -> None:
        """Perplexity of the workload's reference text through the executor."""
        with through_executor(self.om, self.executor, self.comps):
            self.ppl = corpus_perplexity(self.om, self.ppl_ids)

    def fill_row(self) -> None:
        """The accuracy columns, compared with the reference (the timed pass's metrics are in already)."""
        gen, ppl_ids = self.gen, self.ppl_ids
        self.row.update(
            ppl=self.ppl, ppl_ref=self.ppl_ref, ppl_delta=self.ppl - self.ppl_ref, ppl_docs=len(ppl_ids),
            ppl_tokens_scored=sum(max(0, len(d) - 1) for d in ppl_ids),
            output_sample=self.om.tokenizer.decode(gen.new_tokens[0])[:200] if gen.new_tokens else "",
            status="ok",
        )

    def tasks(self) -> None:
        """lm-evaluation-harness task scores through the executor, last: if a task fails, the row still holds
        every measurement above."""
        if self.eval_tasks:
            from moelab.eval.tasks import score_tasks

            with through_executor(self.om, self.executor, self.comps):
                self.row.update(score_tasks(self.om, self.comps.decoding, self.cfg, self.eval_tasks,
                                            self.row["run_id"], self.experiment))


def run(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Execute one run (a `RunRecipe`) and record it, also when it fails; returns the results row."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    experiment = str(c.get("experiment_name", "default"))
    exp_dir = preflight.check_results(c)  # a row that could not be stored: refuse before measuring anything
    recipe = RunRecipe(c, experiment, base_row(c, experiment))
    row = recipe.row
    t_start = time.time()
    try:
        recipe.execute()
    except BaseException as e:
        row["status"] = "failed" if not isinstance(e, KeyboardInterrupt) else "interrupted"
        row["error"] = f"{type(e).__name__}: {e}"
        if not isinstance(e, MoelabError | KeyboardInterrupt):
            row["traceback"] = traceback.format_exc()[-4000:]
        raise
    finally:
        row["wall_s"] = time.time() - t_start
        stored = _record(row, recipe.steps, recipe.logger, recipe.cfg, exp_dir)
    safekeeping.require_stored(stored)  # a finished run whose row went to a fallback file is an error
    return row


def save_trace(tracer: TracingBackend, gen: Any, om: OffloadedModel, batches: list, new_tokens: int,
               c: Mapping[str, Any], experiment: str, rid: str) -> Path:
    step_batch = {s.step: s.batch for s in gen.steps}
    tracer.rows["batch"] = [step_batch.get(s, 0) for s in tracer.rows["step"]]
    header = {"model": om.name, "architecture": om.config.model_type, "num_layers": int(om.config.num_hidden_layers),
              "moe_layers": list(om.spec.moe_layers), "num_experts": om.spec.num_experts, "top_k": om.spec.top_k,
              "prompts": [p for b in batches for p in b], "batch_size": len(batches[0]),
              "max_new_tokens": new_tokens, "run_id": rid,
              # per forward step: phase, tokens fed, tokens committed (speculative replay follows these)
              "steps": [[s.step, s.phase, s.tokens, s.new_tokens] for s in gen.steps]}
    return tracer.save(Path(str(c.get("results_dir", "results"))) / experiment / rid / "trace.parquet", header)


def _record(row: dict[str, Any], steps: Any, logger: Any, c: Mapping[str, Any], exp_dir: Path
            ) -> safekeeping.Stored:
    """Write the row even when the run failed before its logger was built (a fallback file if it must)."""
    row.setdefault("model_loads", MODELS.loads)  # models this process has loaded so far: a sweep's runs share one
    if logger is None:
        from moelab.loggers.local import LocalLogger

        logger_cfg = c.get("logger") if isinstance(c.get("logger"), Mapping) else {}
        logger = LocalLogger(results_dir=str(c.get("results_dir", "results")), console=False,
                             row_files=bool(logger_cfg.get("row_files", False)))
    with Interrupts.held():  # a signal while the row is written waits until it is written
        return safekeeping.record(row, steps, logger, exp_dir)
