"""The one recipe: a resolved config in, one measured run (a results row) out.

`RunRecipe` runs it as named passes, in this order: setup (every component name and the budget are checked
before any weight is read, then the model is loaded), reference (the un-offloaded model; it also warms up the
kernels), warm-up (a short generation through the executor), profile (only for policies that need the coming
routing), timed, accuracy (perplexity), row, tasks (lm-evaluation-harness, last). `run(cfg)` drives it and
records the row, also when a pass fails.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from moelab import config_check
from moelab.core import registry
from moelab.core.context import RunContext
from moelab.core.errors import ConfigError, MoelabError
from moelab.core.types import Execution
from moelab.decoding.base import Decoding
from moelab.decoding.steps import step_for
from moelab.eval.tasks import check_tasks, score_tasks
from moelab.interrupts import Interrupts
from moelab.loggers.base import Logger
from moelab.metrics.floors import compute_floor
from moelab.metrics.host_cost import host_cost_columns
from moelab.metrics.perplexity import corpus_perplexity
from moelab.metrics.summary import run_metrics, step_table, token_agreement, verify_metrics
from moelab.models.build import ModelPlan, materialize, plan_model
from moelab.models.drafts import choose_draft, draft_name
from moelab.models.hub import tokenizer_dir
from moelab.models.lookahead import Lookahead, RouterScorer
from moelab.models.offloaded import OffloadedModel
from moelab.models.tokenizer import load_tokenizer
from moelab.offload.budget import GIB, Budget, free_device_bytes, host_available_bytes, resolve_budget
from moelab.offload.calibrate import h2d_peak_gbps
from moelab.offload.cpu_worker import parse_cpu_dtype
from moelab.offload.executor import OffloadExecutor
from moelab.offload.graph_executor import GraphExecutor
from moelab.offload.graph_plan import choose_path
from moelab.offload.kernels import ExpertKernel
from moelab.policies.base import Balancer, CachePolicy, PrefetchPolicy, run_context
from moelab.results import preflight, safekeeping
from moelab.results.label import policy_label
from moelab.results.row import base_row, device_name
from moelab.results.schema import check_row
from moelab.routing.base import Routing
from moelab.routing.trace import TracingBackend
from moelab.workloads.base import Workload

NAN = float("nan")
COMPONENT_KINDS = ("prefetch", "cache", "balancer", "decoding", "workload", "logger", "routing")


@dataclass
class Components:
    """One instance of every registered kind a run is made of (each a subclass of its kind's base)."""

    prefetch: PrefetchPolicy
    cache: CachePolicy
    balancer: Balancer
    decoding: Decoding
    workload: Workload
    logger: Logger
    routing: Routing


def build_components(cfg: Mapping[str, Any]) -> Components:
    """Instantiate every registered component named in the config (fails fast on unknown names)."""
    built = {}
    for kind in COMPONENT_KINDS:
        section = cfg.get(kind)
        if not isinstance(section, Mapping):
            names = ", ".join(registry.names(kind))
            raise ConfigError(f"config has no `{kind}` section; registered {kind} names: {names}")
        extra = {"results_dir": cfg.get("results_dir", "results")} if kind == "logger" else {}
        params = {k: v for k, v in section.items() if not (kind == "logger" and k == "results_dir")}
        built[kind] = registry.build(kind, params, **extra)
    return Components(**built)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; allowed: auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is available; use device=cpu or device=auto")
    return device


def nonexpert_bytes(plan: ModelPlan) -> int:
    params = sum(p.numel() * p.element_size() for p in plan.skeleton.parameters())
    return params - plan.total_expert_bytes


def check_host_memory(plan: ModelPlan, budget: Budget, device: torch.device, loaded: bool) -> None:
    """The expert store lives in host RAM (pinned on a GPU machine): it must fit before loading starts."""
    need = (0 if loaded else plan.total_expert_bytes) + (
        budget.experts * plan.spec.expert_bytes if device.type == "cpu" else 0
    )
    free = host_available_bytes()
    if need > free:
        per_layer = plan.spec.num_experts * plan.spec.expert_bytes
        raise ConfigError(
            f"the model's experts need {need / GIB:.1f} GiB of host memory but {free / GIB:.1f} GiB is available; "
            f"use fewer layers (model.num_layers <= {max(0, int(free // max(per_layer, 1)) - 1)})"
        )


class ModelMemo:
    """Keeps the last loaded model so runs of a sweep that share the model config skip reloading it."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.model: OffloadedModel | None = None
        self.loads = 0

    @staticmethod
    def _key(model_cfg: Mapping[str, Any], device: torch.device) -> str:
        return json.dumps({"model": model_cfg, "device": str(device)}, sort_keys=True, default=str)

    def holds(self, model_cfg: Mapping[str, Any], device: torch.device) -> bool:
        return self.model is not None and self._key(model_cfg, device) == self.key

    def get(self, model_cfg: Mapping[str, Any], device: torch.device, plan: ModelPlan) -> OffloadedModel:
        key = self._key(model_cfg, device)
        if key != self.key or self.model is None:
            self.model = None  # free the previous model before loading the next
            self.model = materialize(plan, device)
            self.key = key
            self.loads += 1
        return self.model


MODELS = ModelMemo()


def model_row(om: OffloadedModel) -> dict[str, Any]:
    spec = om.spec
    return {
        "model": om.name,
        "architecture": om.config.model_type,
        "layers": int(om.config.num_hidden_layers),
        "moe_layers": len(spec.moe_layers),
        "experts": spec.num_experts,
        "total_experts": spec.total_experts,
        "top_k": spec.top_k,
        "dtype": str(om.dtype).removeprefix("torch."),
        "expert_mib": spec.expert_bytes / 2**20,
        "experts_gib": spec.total_experts * spec.expert_bytes / GIB,
    }


def make_executor(om: OffloadedModel, budget: Budget, comps: Components, cpu_dtype: str | None = None,
                  execution: Execution | None = None, graphs: bool = False) -> OffloadExecutor:
    """The run's executor: the eager one, or with `graphs` the one whose decode steps are captured
    (moelab.offload.graph_plan decides which, before any weight is read)."""
    kernels = {layer: ExpertKernel(m) for layer, m in om.hf_experts.items()}
    dtype = parse_cpu_dtype(cpu_dtype)
    costs = None
    if comps.balancer.needs_costs:  # measured once per machine, model shape and CPU dtype, then cached
        from moelab.offload.calibrate import cost_model

        costs = cost_model(om, cpu_dtype=dtype)
    # caches and balancers that rank by the prefetcher's utility read its estimator from the context
    context = run_context(om.spec, budget.experts, comps.prefetch, costs)
    kind = GraphExecutor if graphs else OffloadExecutor
    executor = kind(om.store, kernels, om.spec, budget.experts, om.device, comps.prefetch, comps.cache,
                    comps.balancer, cpu_dtype=dtype, execution=execution, context=context)
    if comps.balancer.uses_cpu:
        executor.cpu_worker.prepare()  # float copies of the weights, if cpu_dtype asks for them, made untimed
    return executor


def make_lookahead(om: OffloadedModel, executor: OffloadExecutor, prefetch: Any, replay: Any) -> Lookahead | None:
    """The hooks a predicting policy needs (or speculative execution's router logits), else None."""
    spec = prefetch.lookahead
    mode = executor.execution.speculative
    if spec is None and mode == "none":
        return None
    if mode == "predicted" and (spec is None or replay is not None):
        raise ConfigError("execution.speculative=predicted runs the predictor's own top_k: it needs a per-token "
                          "predictor (prefetch=qhs or mlp) and routing=native; allowed modes otherwise: none, router")
    if mode == "predicted" and spec.k is not None and spec.k < om.spec.top_k:
        raise ConfigError(f"execution.speculative=predicted runs the predicted top_k: prefetch.k={spec.k} must be "
                          f"null or >= top_k={om.spec.top_k}")
    scorer = None
    if spec is not None and spec.scorer == "mlp":
        if replay is not None:
            raise ConfigError("prefetch=mlp reads the model's hidden states, which say nothing under routing=replay; "
                              "use prefetch=qhs (it replays the trace's recorded predictions)")
        from moelab.predictors.mlp import mlp_scorer

        scorer = mlp_scorer(om, spec.mlp_path, spec.mlp_layers, RouterScorer(om))
    if replay is not None and spec is not None and spec.state != "post_attn":
        raise ConfigError(f"under routing=replay qhs replays the trace's predictions, recorded with state=post_attn; "
                          f"got prefetch.state={spec.state}")
    # under replay the model's own routers did not choose: speculative execution ranks candidates by order
    return Lookahead(om, spec, executor, scorer=scorer, replay=replay,
                     keep_router_logits=mode == "router" and replay is None,
                     predicted_logits=mode == "predicted",
                     skip_router=executor.execution.true_router == "skip")


@contextmanager
def through_executor(om: OffloadedModel, executor: OffloadExecutor, comps: Components,
                     tracer: Any = None) -> Iterator[Any]:
    """One pass of the model through the executor: routing (native or replayed), the policy's lookahead
    hooks, and optionally a trace recorder around the backend."""
    backend = comps.routing.wrap(executor, om)
    lookahead = make_lookahead(om, executor, comps.prefetch, backend if comps.routing.replays else None)
    outer = tracer(backend) if tracer is not None else backend
    with om.using(outer), (lookahead or nullcontext()):
        yield outer


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
        """Check the config, build the components, plan the model and the budget, then load the model and
        build the executor and the run's batches."""
        c, row = self.cfg, self.row
        config_check.check_config(c)
        c = self.cfg = choose_draft(c)  # speculative decoding's draft: explicit, the model's default, or random
        comps = self.comps = build_components(c)
        execution = Execution.from_config(c.get("execution"))
        self.logger = comps.logger
        device = resolve_device(str(c.get("device", "auto")))
        row.update(device=device.type, device_name=device_name(device))
        plan = plan_model(c["model"], device)
        row["model_commit"] = plan.source.commit if plan.source is not None else None  # the hub snapshot loaded
        reserve = (nonexpert_bytes(plan) + GIB) / GIB if device.type == "cuda" else 0.0
        budget = resolve_budget(c["budget"], plan.spec, device, reserve_gib=reserve)
        check_host_memory(plan, budget, device, loaded=MODELS.holds(c["model"], device))
        comps.cache.bind(RunContext(plan.spec, budget.experts))  # cache params that depend on model and budget,
        # checked before any weight is read
        wl, dec = comps.workload, comps.decoding
        tok_dir = tokenizer_dir(plan.source) if plan.source is not None else None
        wl.prepare(load_tokenizer(tok_dir, plan.skeleton.config).encode)  # length filters: tokenizer, no weights
        config_check.check_planned(c, comps, plan)  # after prepare: a dataset workload's prompts are known
        self.eval_tasks = check_tasks(c)  # lm-eval task names, checked before any weight is read
        row.update(
            policy=policy_label(c), prefetch=c["prefetch"]["name"], cache=c["cache"]["name"],
            balancer=c["balancer"]["name"], decoding=c["decoding"]["name"], gamma=dec.gamma,
            draft=draft_name(c["decoding"]),
            speculative_execution=execution.speculates, speculative_mode=execution.speculative,
            eviction=execution.eviction, compute_order=execution.compute_order, cpu_dtype=str(c.get("cpu_dtype")),
            workload=c["workload"]["name"], prompts=len(wl.prompts), new_tokens=wl.max_new_tokens,
            batch=wl.batch_size, seed=int(c.get("seed", 0)), **budget.row(plan.spec), **wl.describe(),
        )
        routing = comps.routing
        batch = int(routing.header["batch_size"]) if getattr(routing, "replays", False) else wl.batch_size
        self.path = choose_path(c, device, batch, budget.experts, plan.spec.top_k)  # graph or eager, said why
        row.update(self.path.row())
        torch.manual_seed(int(c.get("seed", 0)))
        om = self.om = MODELS.get(c["model"], device, plan)
        row.update(model_row(om))
        self.executor = make_executor(om, budget, comps, c.get("cpu_dtype"), execution, graphs=self.path.graphs)
        self.batches, self.new_tokens, self.ppl_ids = self._inputs()

    def _inputs(self) -> tuple[list[list[list[int]]], int, list[list[int]]]:
        """Batches, new tokens per prompt and perplexity documents: the workload's, or a replayed trace's."""
        routing, dec, om = self.comps.routing, self.comps.decoding, self.om
        if not routing.replays:
            wl = self.comps.workload
            return wl.batches(om.tokenizer.encode), wl.max_new_tokens, wl.ppl_ids(om.tokenizer.encode)
        if self.cfg.get("record_trace"):
            raise ConfigError("record_trace=true records a model's own routing; it cannot be combined with "
                              "routing=replay")
        replayed = routing.workload(int(om.config.vocab_size))
        assert replayed is not None  # a replaying routing always supplies its recording's inputs
        batches, new_tokens = replayed
        script = routing.speculation()
        if script and not dec.follows_script:
            raise ConfigError(f"the trace {routing.path} was recorded with speculative decoding: replay it with "
                              "decoding=speculative")
        if dec.follows_script:
            if not script:
                raise ConfigError(f"the trace {routing.path} was recorded without speculative decoding: replay it "
                                  "with decoding=autoregressive")
            dec.follow(script)
        self.row.update(replay_trace=str(routing.path), prompts=sum(len(b) for b in batches),
                        new_tokens=new_tokens, batch=len(batches[0]))
        return batches, new_tokens, []  # the reference text's routing is not in the trace

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
        """A short generation through the executor, then forgotten."""
        kwargs: dict[str, Any] = {}
        n = min(2, self.new_tokens)
        if self.path.graphs:  # a third token captures the decode graph, untimed, for the timed pass's cache length
            n = min(3, self.new_tokens)
            kwargs["step_factory"] = lambda om, b, length: step_for(om, b, length + self.new_tokens - n)
        with through_executor(self.om, self.executor, self.comps):
            self.comps.decoding.generate(self.om, self.batches[:1], n, **kwargs)
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
