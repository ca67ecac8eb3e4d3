"""Turn a `model` config into an OffloadedModel.

`plan_model` reads only configs (a meta-device skeleton, no weights), so a run can check its
budget and component names before a single byte is loaded. `materialize` then allocates
the store, puts the non-expert weights on the device and fills the experts: from a checkpoint
(a local directory or a hub id, see `moelab.models.hub`), or random (`random_init`) at any size,
generated on the device when there is one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from moelab.config_schema import Count
from moelab.core import registry
from moelab.core.errors import CheckpointError, ConfigError
from moelab.core.types import ModelSpec
from moelab.models.adapter import MoeAdapter
from moelab.models.checkpoint import expert_bytes_from_headers, find_config, load_checkpoint, refuse_quantized
from moelab.models.hub import ModelSource, locate, tensor_shapes, weight_dir
from moelab.models.offloaded import OffloadedExperts, OffloadedModel
from moelab.models.tokenizer import load_tokenizer
from moelab.offload.layout import ExpertLayout
from moelab.offload.store import ExpertStore

# the config fields whose product the attention's projections must match (named when a shape cannot run)
SHAPE_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """A dtype name; `auto` is float32 on the CPU (bitwise checks) and bfloat16 on a GPU."""
    if name == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise ConfigError(f"unknown dtype {name!r}; allowed: auto, {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def adapter_for(model_type: str) -> MoeAdapter:
    """The adapter of an HF `model_type`, or an error naming the supported ones."""
    supported = registry.names("arch")
    if model_type not in supported:
        raise ConfigError(
            f"architecture {model_type!r} has no moelab MoE adapter; supported architectures: {', '.join(supported)}"
        )
    return registry.get("arch", model_type)()


@dataclass
class ModelOptions:
    """The schema of a `model` config (conf/model/*.yaml), read by `hf_config` and `plan_model` below (`draft` by
    moelab.models.drafts, `predictors` by prefetch=mlp's default path). `config` and `shapes` are transformers
    config fields, checked by the architecture's config class and by `check_buildable`."""

    name: str = "model"
    arch: str | None = None  # HF model_type; selects the adapter
    path: str | None = None  # hub id or local directory
    revision: str | None = None
    random_init: bool = False
    num_layers: Count | None = None
    dtype: str = "auto"  # parse_dtype
    seed: int = 0
    tiny: bool = False
    draft: str | None = None
    predictors: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, Any] | None = None


@dataclass
class ModelPlan:
    """A model known by its config alone: its skeleton lives on the meta device."""

    name: str
    adapter: MoeAdapter
    skeleton: nn.Module
    spec: ModelSpec
    layout: ExpertLayout
    dtype: torch.dtype
    source: ModelSource | None  # the checkpoint to load; None: random weights
    seed: int
    checkpoint_expert_bytes: int | None = None  # from the safetensors headers, at `dtype`

    @property
    def total_expert_bytes(self) -> int:
        """The store's size; a checkpoint holding more than its config says (an error the loader names) counts."""
        return max(self.spec.total_experts * self.spec.expert_bytes, self.checkpoint_expert_bytes or 0)


def hf_config(cfg: Mapping[str, Any]) -> tuple[Any, MoeAdapter, ModelSource | None]:
    """The transformers config a model config describes, its adapter, and where its checkpoint is.

    With `random_init: true` and an `arch`, the model is built from `shapes` (a preset's copy of the released
    config's sizes) and `config` (overrides); `path` is then only the model's name and is not looked up.
    Otherwise `path` (a hub id or a local directory) supplies config.json, with `config` as overrides.
    """
    path = cfg.get("path")
    overrides = dict(cfg.get("config") or {})
    arch = cfg.get("arch")
    if path and not (cfg.get("random_init", False) and arch):
        source = locate(str(path), cfg.get("revision"))
        raw = find_config(source.dir)
        model_type = raw.get("model_type")
        if not model_type:
            raise CheckpointError(f"{source}: config.json has no model_type")
        adapter = adapter_for(model_type)
        refuse_quantized(raw, str(source))
        try:
            config = AutoConfig.from_pretrained(str(source.dir), **overrides)
        except Exception as e:
            if overrides:
                raise ConfigError(f"{_named_field(e, cfg)} cannot be applied to {source}'s {model_type} config: "
                                  f"{_first_line(e)}") from None
            raise CheckpointError(f"{source}: config.json cannot be read as a {model_type} config: "
                                  f"{_first_line(e)}") from None
    else:
        if not arch:
            raise ConfigError("model needs either `path` (a hub id or a local HF directory) or `arch` with "
                              "`random_init: true`")
        source = None
        adapter = adapter_for(str(arch))
        overrides = {**(cfg.get("shapes") or {}), **overrides}
        if cfg.get("tiny"):
            overrides = adapter.tiny_config(**overrides)
        try:
            config = AutoConfig.for_model(str(arch), **overrides)
        except Exception as e:  # transformers validates fields with its own error types
            def build(**kw: Any) -> Any:
                return AutoConfig.for_model(str(arch), **(adapter.tiny_config(**kw) if cfg.get("tiny") else kw))

            raise ConfigError(f"invalid {_named_field(e, cfg, build)} for {arch}: {_first_line(e)}") from None
    if cfg.get("num_layers") is not None:
        adapter.set_num_layers(config, int(cfg["num_layers"]))
    return config, adapter, source


def plan_model(cfg: Mapping[str, Any], device: torch.device | None = None) -> ModelPlan:
    """Everything about the model except its weights (`device` only resolves `dtype: auto`)."""
    config, adapter, source = hf_config(cfg)
    random_init = bool(cfg.get("random_init", False))
    if source is None and not random_init:
        raise ConfigError("model.path is not set: give a hub id or a local HF directory, or set "
                          "model.random_init=true")
    weights = None if random_init else source
    dtype = parse_dtype(str(cfg.get("dtype", "auto")), device)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    blocks = adapter.moe_blocks(skeleton)
    if not blocks:
        raise CheckpointError(f"{source or cfg.get('arch')}: the model has no MoE layers with fused experts")
    first = next(iter(blocks.values())).experts
    layout = ExpertLayout.from_module(first)
    spec = ModelSpec(
        moe_layers=tuple(blocks),
        num_experts=int(first.num_experts),
        top_k=adapter.top_k(config),
        expert_bytes=layout.nbytes,
        hidden_size=int(config.hidden_size),
    )
    if not 1 <= spec.top_k <= spec.num_experts:
        raise ConfigError(f"the model routes each token to top_k={spec.top_k} experts (model.config."
                          f"num_experts_per_tok) but has {spec.num_experts} experts per layer; allowed: "
                          f"1..{spec.num_experts}")
    check_buildable(skeleton, adapter, str(cfg.get("arch") or config.model_type))
    plan = ModelPlan(str(cfg.get("name", config.model_type)), adapter, skeleton, spec, layout, dtype, weights,
                     int(cfg.get("seed", 0)))
    if weights is not None:  # the host-memory check reads the experts' size from the headers, not from weights
        plan.checkpoint_expert_bytes = expert_bytes_from_headers(
            tensor_shapes(weights), adapter, len(adapter.decoder_layers(skeleton)), dtype, str(weights))
    return plan


def check_buildable(skeleton: nn.Module, adapter: MoeAdapter, arch: str) -> None:
    """One forward step of the meta-device skeleton (no memory, no weights; the experts, whose routing is
    data-dependent, stubbed): shapes the architecture cannot run (a hidden size its heads do not divide, heads its
    key/value heads do not divide) fail here in one line instead of after the weights are read."""
    try:
        with torch.no_grad(), _experts_stubbed(adapter.moe_blocks(skeleton).values()):
            skeleton(input_ids=torch.zeros(1, 2, dtype=torch.long, device="meta"), use_cache=True)
    except Exception as e:
        c = skeleton.config
        shape = ", ".join(f"{k}={getattr(c, k)}" for k in SHAPE_FIELDS if getattr(c, k, None) is not None)
        raise ConfigError(f"{arch} cannot run the shape model.config {shape} ({_first_line(e)[:120]}); allowed: "
                          "shapes it builds: hidden_size a multiple of num_attention_heads (or head_dim given), "
                          "num_attention_heads a multiple of num_key_value_heads") from None


@contextmanager
def _experts_stubbed(blocks: Any) -> Iterator[None]:
    experts = [b.experts for b in blocks]

    def zeros(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden_states)

    for m in experts:
        m.forward = zeros
    try:
        yield
    finally:
        for m in experts:
            del m.forward


def _named_field(e: BaseException, cfg: Mapping[str, Any], build: Any = None) -> str:
    """`model.config.<field>=<value>` for the field transformers' validation refuses: the one its error names, else
    the one whose removal lets `build(**overrides)` succeed; `model.config` when neither tells."""
    sections = {f"model.{s}": dict(cfg.get(s) or {}) for s in ("config", "shapes")}
    m = re.search(r"field '(\w+)'", str(e))
    for where, values in sections.items():
        if m and m[1] in values:
            return f"{where}.{m[1]}={values[m[1]]!r}"
    if build is not None:
        merged = {**sections["model.shapes"], **sections["model.config"]}
        for where, values in reversed(list(sections.items())):
            for key in values:
                try:
                    build(**{k: v for k, v in merged.items() if k != key})
                except Exception:
                    continue
                return f"{where}.{key}={values[key]!r}"
    return "model.config"


def _first_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _swap_experts(om: OffloadedModel) -> None:
    for layer, block in om.adapter.moe_blocks(om.model).items():
        om.hf_experts[layer] = block.experts
        block.experts = OffloadedExperts(layer, om.spec.num_experts, om)


def materialize(plan: ModelPlan, device: torch.device) -> OffloadedModel:
    """Allocate the store, place non-expert weights on `device`, fill the experts."""
    path = weight_dir(plan.source) if plan.source is not None else None  # a hub model's download, if any
    store = ExpertStore(plan.layout, plan.spec.moe_layers, plan.spec.num_experts, pin=device.type == "cuda")
    model = plan.skeleton
    om = OffloadedModel(model, plan.adapter, store, plan.spec, device, plan.dtype, name=plan.name)
    _swap_experts(om)
    model.to_empty(device=device)
    torch.manual_seed(plan.seed)
    model.initialize_weights()  # random non-expert weights and the non-persistent buffers (rotary)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    if path is not None:
        load_checkpoint(model, plan.adapter, store, path)
    else:
        fill_random(store, std=float(getattr(model.config, "initializer_range", 0.02)), seed=plan.seed, device=device)
    model.eval().requires_grad_(False)
    om.tokenizer = load_tokenizer(path, model.config)
    return om


def fill_random(store: ExpertStore, std: float, seed: int, device: torch.device) -> None:
    """Normal(0, std) expert weights, zero biases, as transformers initialises them.

    Drawn on the GPU when there is one (filling billions of values on the host takes minutes),
    one expert at a time, and copied into the store.
    """
    for li, layer in enumerate(store.layers):
        for ti, (name, t) in enumerate(store.layer_tensors(layer).items()):
            if name.endswith("_bias"):
                t.zero_()
                continue
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + li * 101 + ti)
            if device.type == "cpu":
                t.normal_(0.0, std, generator=gen)
                continue
            for e in range(t.shape[0]):
                chunk = torch.empty(t.shape[1:], dtype=t.dtype, device=device).normal_(0.0, std, generator=gen)
                t[e].copy_(chunk)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def offload_hf_model(model: nn.Module, device: torch.device | str = "cpu", name: str = "") -> OffloadedModel:
    """Offload an HF model that is already built (its experts move into a store; the rest to `device`)."""
    device = torch.device(device)
    adapter = adapter_for(model.config.model_type)
    blocks = adapter.moe_blocks(model)
    if not blocks:
        raise CheckpointError(f"{type(model).__name__} has no MoE layers with fused experts")
    first = next(iter(blocks.values())).experts
    layout = ExpertLayout.from_module(first)
    spec = ModelSpec(tuple(blocks), int(first.num_experts), adapter.top_k(model.config), layout.nbytes,
                     int(model.config.hidden_size))
    store = ExpertStore(layout, spec.moe_layers, spec.num_experts, pin=device.type == "cuda")
    for layer, block in blocks.items():
        for pname, t in store.layer_tensors(layer).items():
            t.copy_(getattr(block.experts, pname).detach())
        block.experts.to("meta")
    dtype = next(iter(store.layer_tensors(spec.moe_layers[0]).values())).dtype
    om = OffloadedModel(model, adapter, store, spec, device, dtype, name=name or model.config.model_type)
    _swap_experts(om)
    model.to(device).eval().requires_grad_(False)
    om.tokenizer = load_tokenizer(None, model.config)
    return om
