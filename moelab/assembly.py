"""One assembly of a run, for every entry point: a resolved config in, a loaded model wired to its executor out.

`run.py` (`moelab.runner.RunRecipe.setup`), lm-eval's `moelab` model (`moelab.eval.session`), the benchmarks and
the tests all assemble a run here, with the same checks (in the spirit of lm-evaluation-harness's
`simple_evaluate`: one path, whatever the caller). Two stages, each a keyword-only factory:

- `plan_run(cfg, ...)` -> `RunPlan`: the config checked (types, ranges, component names and parameters, the model
  plan from its config and safetensors headers, the budget, the host memory, the workload against the model,
  lm-eval task names, the lookahead's and a replayed trace's requirements, the execution path). Every
  `ConfigError` a run can raise is raised here, before any weight is read.
- `RunPlan.load(...)` -> `Assembly`: the model (kept across a sweep by `MODELS`), the executor of the chosen path
  and the run's inputs (the workload's batches and perplexity documents, or a replayed trace's).

`assemble(cfg, ...)` does both. What the caller then runs through the executor (a warm-up, a profile pass, the
timed generation, lm-eval's requests) is the caller's; `Assembly.through()` wires one such pass.

Components with `needs_future` (prefetch=oracle, cache=belady, cache=static with profile=run) know the routing of
the run's own prompts from a profile pass (`RunRecipe.profile`). lm-eval's requests are not known before they
run, so these components are refused where a run serves them: with `eval.tasks` and under
`moelab-lm-eval --model moelab` (`serves="lm_eval"`), in one line naming the key and what is allowed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from moelab import config_check
from moelab.core import registry
from moelab.core.context import RunContext
from moelab.core.errors import ConfigError
from moelab.core.types import Execution
from moelab.decoding.base import Decoding
from moelab.eval.tasks import check_tasks
from moelab.loggers.base import Logger
from moelab.models.build import ModelPlan, materialize, plan_model
from moelab.models.drafts import choose_draft, draft_name
from moelab.models.hub import tokenizer_dir
from moelab.models.lookahead import Lookahead
from moelab.models.offloaded import OffloadedModel
from moelab.models.tokenizer import load_tokenizer
from moelab.offload.budget import GIB, Budget, host_available_bytes, resolve_budget
from moelab.offload.cpu_worker import parse_cpu_dtype
from moelab.offload.executor import OffloadExecutor
from moelab.offload.graph_executor import GraphExecutor
from moelab.offload.graph_plan import ExecutionPath, choose_path
from moelab.offload.kernels import ExpertKernel
from moelab.policies.base import Balancer, CachePolicy, PrefetchPolicy, run_context
from moelab.results.label import policy_label
from moelab.results.row import device_index, device_name
from moelab.routing.base import Routing
from moelab.scorers import build_scorer, scorer_class
from moelab.workloads.base import Workload

COMPONENT_KINDS = ("prefetch", "cache", "balancer", "decoding", "workload", "logger", "routing")
Serves = Literal["run", "lm_eval"]  # what the assembled run answers: run.py's passes, or lm-eval's requests
LM_EVAL_PATH_NOTE = "lm-eval requests: scored through the eager executor"


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


# ---------------------------------------------------------------------------------------- checks before weights
def check_lookahead(prefetch: PrefetchPolicy, execution: Execution, top_k: int, replays: bool) -> None:
    """What the lookahead hooks (`make_lookahead`) need from the prefetch policy, the execution rule and the
    routing: decided from the config and the model plan, before any weight is read."""
    spec, mode = prefetch.lookahead, execution.speculative
    if spec is None and mode == "none":
        return
    if mode == "predicted" and (spec is None or replays):
        raise ConfigError("execution.speculative=predicted runs the predictor's own top_k: it needs a per-token "
                          "predictor (prefetch=qhs or mlp) and routing=native; allowed modes otherwise: none, router")
    if mode == "predicted" and spec is not None and spec.k is not None and spec.k < top_k:
        raise ConfigError(f"execution.speculative=predicted runs the predicted top_k: prefetch.k={spec.k} must be "
                          f"null or >= top_k={top_k}")
    if spec is not None and not scorer_class(spec.scorer).replayable and replays:
        raise ConfigError(f"prefetch={spec.scorer} reads the model's hidden states, which say nothing under "
                          "routing=replay; use prefetch=qhs (it replays the trace's recorded predictions)")
    if replays and spec is not None and spec.state != "post_attn":
        raise ConfigError(f"under routing=replay qhs replays the trace's predictions, recorded with state=post_attn; "
                          f"got prefetch.state={spec.state}")


def check_replay(cfg: Mapping[str, Any], comps: Components) -> None:
    """A replayed trace brings its own prompts and, if it was recorded speculatively, its verification script:
    the run must replay it with the decoding it was recorded with (read from the trace's header)."""
    routing, dec = comps.routing, comps.decoding
    if not routing.replays:
        return
    if cfg.get("record_trace"):
        raise ConfigError("record_trace=true records a model's own routing; it cannot be combined with "
                          "routing=replay")
    script = routing.speculation()
    if script and not dec.follows_script:
        raise ConfigError(f"the trace {routing.path} was recorded with speculative decoding: replay it with "
                          "decoding=speculative")
    if dec.follows_script and not script:
        raise ConfigError(f"the trace {routing.path} was recorded without speculative decoding: replay it "
                          "with decoding=autoregressive")


def _without_future(kind: str) -> str:
    return ", ".join(n for n in registry.names(kind) if not getattr(registry.get(kind, n), "needs_future", False))


def check_future(cfg: Mapping[str, Any], comps: Components, serves: Serves, eval_tasks: list[str]) -> None:
    """Components that know the coming routing from a profile pass over the run's own prompts cannot know the
    routing of lm-eval's requests: refused with `eval.tasks` and under lm-eval, in one line."""
    if serves == "run" and not eval_tasks:
        return
    where = "under lm-eval (--model moelab)" if serves == "lm_eval" else "with eval.tasks"
    for kind in ("prefetch", "cache"):
        part = getattr(comps, kind)
        if not part.needs_future:
            continue
        name = str(cfg[kind]["name"])
        key = f"{kind}={name}" + (" with cache.profile=run" if kind == "cache" and name == "static" else "")
        allowed = f"{kind}={_without_future(kind)}"
        if kind == "cache":
            allowed += " (static with cache.profile=<a trace recorded with record_trace=true>)"
        raise ConfigError(f"{key} needs the routing of the requests it serves in advance (a profile pass over the "
                          f"run's own prompts), which lm-eval's requests do not have; allowed {where}: {allowed}")


# ---------------------------------------------------------------------------------------- the two stages
@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """A run decided and checked, no weight read: built by `plan_run`, loaded by `load`."""

    cfg: Mapping[str, Any]  # the checked config, with speculative decoding's draft chosen
    comps: Components
    execution: Execution
    device: torch.device
    plan: ModelPlan
    budget: Budget
    path: ExecutionPath
    eval_tasks: list[str]
    serves: Serves

    def load(self, *, models: ModelMemo = MODELS, row: dict[str, Any] | None = None) -> Assembly:
        """The model (reused across a sweep), the executor of the chosen path and the run's inputs."""
        row = {} if row is None else row
        c, comps = self.cfg, self.comps
        torch.manual_seed(int(c.get("seed", 0)))
        om = models.get(c["model"], self.device, self.plan)
        row.update(model_row(om))
        executor = make_executor(om, self.budget, comps, c.get("cpu_dtype"), self.execution, graphs=self.path.graphs)
        batches, new_tokens, ppl_ids = _inputs(c, comps, om, row)
        return Assembly(run=self, om=om, executor=executor, batches=batches, new_tokens=new_tokens, ppl_ids=ppl_ids)


@dataclass(frozen=True, kw_only=True)
class Assembly:
    """An assembled run: its plan, the loaded model, its executor and its inputs."""

    run: RunPlan
    om: OffloadedModel
    executor: OffloadExecutor
    batches: list[list[list[int]]]
    new_tokens: int
    ppl_ids: list[list[int]] = field(default_factory=list)

    @property
    def comps(self) -> Components:
        return self.run.comps

    def through(self, tracer: Any = None) -> Any:
        """A context in which the model runs through the executor (see `through_executor`)."""
        return through_executor(self.om, self.executor, self.comps, tracer)


def plan_run(cfg: Mapping[str, Any], *, serves: Serves = "run", row: dict[str, Any] | None = None,
             models: ModelMemo = MODELS, on_components: Callable[[Components], None] | None = None) -> RunPlan:
    """Check `cfg` (a resolved config) and decide the run, reading no weight: every configuration error is
    raised here. `row` gets the columns known so far (also when a check fails); `on_components` is called as
    soon as the components exist (the runner's logger records a run that fails later)."""
    row = {} if row is None else row
    config_check.check_config(cfg)
    c = choose_draft(cfg)  # speculative decoding's draft: explicit, the model's default, or random
    comps = build_components(c)
    if on_components is not None:
        on_components(comps)
    execution = Execution.from_config(c.get("execution"))
    device = resolve_device(str(c.get("device", "auto")))
    row.update(device=device.type, device_name=device_name(device), device_index=device_index(device))
    plan = plan_model(c["model"], device)
    row["model_commit"] = plan.source.commit if plan.source is not None else None  # the hub snapshot loaded
    reserve = (nonexpert_bytes(plan) + GIB) / GIB if device.type == "cuda" else 0.0
    budget = resolve_budget(c["budget"], plan.spec, device, reserve_gib=reserve)
    check_host_memory(plan, budget, device, loaded=models.holds(c["model"], device))
    comps.cache.bind(RunContext(plan.spec, budget.experts))  # cache params that depend on model and budget
    wl, dec = comps.workload, comps.decoding
    tok_dir = tokenizer_dir(plan.source) if plan.source is not None else None
    wl.prepare(load_tokenizer(tok_dir, plan.skeleton.config).encode)  # length filters: tokenizer, no weights
    config_check.check_planned(c, comps, plan)  # after prepare: a dataset workload's prompts are known
    eval_tasks = check_tasks(c)  # lm-eval task names
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
    check_future(c, comps, serves, eval_tasks)
    check_lookahead(comps.prefetch, execution, plan.spec.top_k, routing.replays)
    check_replay(c, comps)
    if routing.replays:  # a trace of another shape: say how it maps (or refuse where nothing maps)
        row["replay_mapping"] = mapping = routing.mapping(plan.spec)
        if mapping:
            print(f"note: {mapping}", file=sys.stderr, flush=True)
    if serves == "lm_eval":  # requests are scored and generated one at a time by lm-eval, eagerly
        if execution.graphs == "on":
            raise ConfigError("execution.graphs=on: lm-eval's requests run through the eager executor; "
                              "allowed under lm-eval: auto, off")
        path = ExecutionPath(False, LM_EVAL_PATH_NOTE)
    else:
        batch = int(routing.header["batch_size"]) if routing.replays else wl.batch_size  # type: ignore[attr-defined]
        path = choose_path(c, device, batch, budget.experts, plan.spec.top_k)  # graph or eager, said why
    row.update(path.row())
    return RunPlan(cfg=c, comps=comps, execution=execution, device=device, plan=plan, budget=budget, path=path,
                   eval_tasks=eval_tasks, serves=serves)


def assemble(cfg: Mapping[str, Any], *, serves: Serves = "run", row: dict[str, Any] | None = None,
             models: ModelMemo = MODELS, on_components: Callable[[Components], None] | None = None) -> Assembly:
    """`plan_run` then `RunPlan.load`: the one assembly of a run (checks first, then weights)."""
    return plan_run(cfg, serves=serves, row=row, models=models, on_components=on_components).load(
        models=models, row=row)


# ---------------------------------------------------------------------------------------- the pieces
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


def _inputs(c: Mapping[str, Any], comps: Components, om: OffloadedModel, row: dict[str, Any]
            ) -> tuple[list[list[list[int]]], int, list[list[int]]]:
    """Batches, new tokens per prompt and perplexity documents: the workload's, or a replayed trace's (checked
    by `check_replay`)."""
    routing, dec = comps.routing, comps.decoding
    if not routing.replays:
        wl = comps.workload
        return wl.batches(om.tokenizer.encode), wl.max_new_tokens, wl.ppl_ids(om.tokenizer.encode)
    replayed = routing.workload(int(om.config.vocab_size))
    assert replayed is not None  # a replaying routing always supplies its recording's inputs
    batches, new_tokens = replayed
    if dec.follows_script:
        dec.follow(routing.speculation())
    row.update(replay_trace=str(routing.path), prompts=sum(len(b) for b in batches), new_tokens=new_tokens,
               batch=len(batches[0]))
    return batches, new_tokens, []  # the reference text's routing is not in the trace


def make_lookahead(om: OffloadedModel, executor: OffloadExecutor, prefetch: Any, replay: Any) -> Lookahead | None:
    """The hooks a predicting policy needs (or speculative execution's router logits), else None. Its
    requirements were checked before any weight was read (`check_lookahead`)."""
    spec = prefetch.lookahead
    mode = executor.execution.speculative
    if spec is None and mode == "none":
        return None
    check_lookahead(prefetch, executor.execution, om.spec.top_k, replay is not None)
    scorer = build_scorer(om, spec) if spec is not None else None
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
