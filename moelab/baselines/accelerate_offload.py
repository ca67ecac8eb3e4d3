"""The "HF accelerate offload" baseline: what a transformers user gets today from
`from_pretrained(device_map="auto", max_memory=...)`, on the same weights as a moelab model.

Why a copy of an OffloadedModel and not a second checkpoint load: the benchmark must compare moelab's
executor and accelerate on identical weights (random-init models have no checkpoint), identical prompts
and, under `routing=replay`, identical routing. So the plain transformers model is built on the meta
device (no random init, cheap at any size), given the OffloadedModel's non-expert tensors and the
store's fused expert tensors, and placed by accelerate exactly as from_pretrained does: transformers'
own device-map planner (the "auto" path, accelerate's `infer_auto_device_map` if that is missing)
with the model's `_no_split_modules`, then accelerate's `dispatch_model`.

What accelerate then does: whole decoder layers (all of their experts) either stay on the GPU or
live in CPU memory (or on disk), and every module of an offloaded layer copies its weights to the
GPU at each call and drops them afterwards; one largest layer's worth of the GPU budget is kept
free for that. There is no cache of experts, no prefetch and no overlap: that is the baseline.

Routing replay: moelab's ReplayBackend substitutes routing inside its executor's `run_layer`; the
plain model has no executor, so a forward pre-hook on each MoE block's `experts` module swaps its
(hidden_states, top_k_index, top_k_weights) arguments for `backend.routing(...)`, and the decoding
loop's `begin_step` on the PlainModel's backend (the ReplayBackend) moves the trace's step cursor.
"""

from __future__ import annotations

import copy
import importlib
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from moelab.core.errors import ConfigError, MissingDependencyError
from moelab.models.offloaded import OffloadedModel
from moelab.models.plain import NoBackend, PlainModel

EXPERTS_ARGS = ("hidden_states", "top_k_index", "top_k_weights")


def require_accelerate() -> ModuleType:
    """Import accelerate on first use, so moelab itself never needs it."""
    try:
        return importlib.import_module("accelerate")
    except ImportError as e:
        raise MissingDependencyError(
            f"the accelerate offload baseline needs the `accelerate` package ({e}); "
            'install it with `pip install -e ".[peers]"` (or `pip install "accelerate>=1.0"`)'
        ) from None


# ---------------------------------------------------------------------------------------------- weights
@torch.no_grad()
def plain_copy(om: OffloadedModel, share_experts: bool = False) -> nn.Module:
    """An unmodified transformers model with `om`'s weights, on the CPU, built without random init.

    Non-expert parameters and all buffers (non-persistent ones such as rotary `inv_freq` included)
    are copied from `om.model` by name; each MoE layer's fused expert parameters are copied from
    `om.store.layer_tensors(layer)` (same names and [num_experts, ...] layout as the HF module, see
    ExpertLayout). `share_experts=True` aliases the store's tensors instead of copying them: no second
    host copy of the experts, but on a CUDA machine the store is pinned, so accelerate's CPU->GPU
    copies then run faster than a stock transformers user's (pageable) ones.
    """
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(om.config), dtype=om.dtype)
    names = {id(m): n for n, m in model.named_modules()}
    experts: dict[str, torch.Tensor] = {}
    for layer, block in om.adapter.moe_blocks(model).items():
        prefix = names[id(block.experts)]
        for pname, t in om.store.layer_tensors(layer).items():
            experts[f"{prefix}.{pname}"] = t
    model.to_empty(device="cpu")  # meta tensors become uninitialised CPU memory; no normal_ anywhere
    if share_experts:  # the empty expert tensors were never touched, so they never took real memory
        for name, t in experts.items():
            module_name, _, pname = name.rpartition(".")
            model.get_submodule(module_name)._parameters[pname] = nn.Parameter(t, requires_grad=False)
    source = dict(om.model.named_parameters(remove_duplicate=False))
    source.update(om.model.named_buffers(remove_duplicate=False))
    missing = []
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if name in experts:
            if not share_experts:
                t.copy_(experts[name])
        elif name in source:
            t.copy_(source[name])
        else:
            missing.append(name)
    if missing:
        raise RuntimeError(f"no source for {len(missing)} tensors of the plain model: {missing[:5]}")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()  # to_empty gives tied parameters separate storage again
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- routing
def install_replay_hooks(pm: PlainModel, om: OffloadedModel) -> list[Any]:
    """Forward pre-hooks that give each MoE layer's experts the routing of `pm.backend.routing`.

    The backend is read at call time, so `pm.backend = replay.wrap(NoBackend(), om)` installs a fresh
    cursor; a backend without `routing` (native) leaves the arguments alone. Returns the hook handles.
    """
    handles = []
    owner = weakref.ref(pm)  # the model must not keep its PlainModel alive
    for layer, block in om.adapter.moe_blocks(pm.model).items():

        def hook(module: nn.Module, args: tuple, kwargs: dict, layer: int = layer) -> Any:
            routing = getattr(getattr(owner(), "backend", None), "routing", None)
            if routing is None:
                return None
            bound = dict(zip(EXPERTS_ARGS, args), **kwargs)
            hidden, top_k_index, top_k_weights = (bound[n] for n in EXPERTS_ARGS)
            idx, w = routing(layer, top_k_index.shape[0], hidden.device, top_k_weights.dtype)
            return (hidden, idx, w), {}

        handles.append(block.experts.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


# ---------------------------------------------------------------------------------------------- placement
def _plan_device_map(model: nn.Module, max_memory: dict[int | str, int]) -> dict[str, int | str]:
    """The device map from_pretrained(device_map="auto", max_memory=...) computes for this model."""
    try:  # transformers' own planner (tied-weight keys, its balanced-memory step); 5.17 and later have it
        from transformers.integrations.accelerate import _get_device_map
    except ImportError:
        _get_device_map = None
    if _get_device_map is not None:
        return dict(_get_device_map(model, "auto", dict(max_memory), None))
    from accelerate import infer_auto_device_map

    return dict(infer_auto_device_map(model, max_memory=dict(max_memory),
                                      no_split_module_classes=model._no_split_modules, dtype=model.dtype))


def _is_accelerator(d: Any) -> bool:
    return isinstance(d, int) or (d not in ("cpu", "disk") and torch.device(d).type != "cpu")


def dispatch(model: nn.Module, max_memory: dict[int | str, int], device: torch.device,
             offload_folder: str | Path | None = None) -> dict[str, int | str]:
    """Plan the device map and attach accelerate's hooks; returns the map (also `model.hf_device_map`).

    Modules beyond `max_memory` of every device go to "disk" under a fresh folder inside `offload_folder`
    (accelerate silently reuses whatever an existing folder's index.json holds).
    """
    from accelerate import dispatch_model

    device_map = _plan_device_map(model, max_memory)
    kwargs: dict[str, Any] = {"skip_keys": getattr(model, "_skip_keys_device_placement", None)}
    if "disk" in device_map.values():
        if offload_folder is None:
            raise ConfigError(f"accelerate puts {sum(v == 'disk' for v in device_map.values())} modules on disk "
                              f"within max_memory={max_memory}: pass offload_folder, or give more memory")
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
        kwargs["offload_dir"] = tempfile.mkdtemp(prefix="accelerate-", dir=str(offload_folder))
        # written here rather than by dispatch_model, whose own extraction misses a whole-model ("") entry
        from accelerate.utils import offload_state_dict

        disk = [k for k, d in device_map.items() if d == "disk"]
        offload_state_dict(kwargs["offload_dir"], {
            k: v for k, v in model.state_dict().items() if any(m == "" or k == m or k.startswith(m + ".") for m in disk)
        })
    if device.type == "cpu":
        main_device: Any = "cpu"  # from_pretrained's: CPU modules stay resident, only "disk" ones stream
    else:
        main_device = device
        # nothing fitted the GPU: still compute there (streaming everything), not silently on the CPU
        kwargs["force_hooks"] = not any(_is_accelerator(d) for d in device_map.values())
    dispatch_model(model, device_map=device_map, main_device=main_device, **kwargs)
    return device_map


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (tied ones once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def accelerate_model(
    om: OffloadedModel,
    gpu_bytes: int,
    device: torch.device | str | None = None,
    routing: Any = None,
    *,
    host_bytes: int | None = None,
    offload_folder: str | Path | None = None,
    share_experts: bool = False,
) -> PlainModel:
    """`om`'s weights as a plain transformers model placed by accelerate, runnable by moelab.decoding.

    `gpu_bytes` is the memory accelerate may use on `device` (default `om.device`): choose it as the
    bytes moelab keeps there (non-expert bytes + its expert budget). On a CPU `device` it is the CPU's
    share and the rest goes to disk under `offload_folder` (a CPU-only stand-in for the GPU case).
    `host_bytes` bounds the CPU on a GPU device; the default, twice the model's bytes, never spills to
    disk (the weights are in host memory already, and measuring free memory would make the baseline
    depend on the moment and mislead on VMs whose RAM grows on use). `routing` is the run's routing
    component (NativeRouting, ReplayRouting or None): replay wraps the PlainModel's backend in a
    ReplayBackend and installs the experts pre-hooks. `share_experts`: see `plain_copy`.
    """
    require_accelerate()
    device = torch.device(device if device is not None else om.device)
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"the accelerate baseline runs on cuda or cpu, not {device}")
    model = plain_copy(om, share_experts=share_experts)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        host = int(host_bytes) if host_bytes is not None else 2 * model_bytes(model)
        max_memory: dict[int | str, int] = {index: int(gpu_bytes), "cpu": host}
    else:
        max_memory = {"cpu": int(gpu_bytes)}
    backend = routing.wrap(NoBackend(), om) if routing is not None else NoBackend()
    pm = PlainModel(model, device, tokenizer=om.tokenizer, backend=backend)
    if getattr(routing, "replays", False):
        install_replay_hooks(pm, om)
    dispatch(model, max_memory, device, offload_folder)
    return pm


# ---------------------------------------------------------------------------------------------- report
@dataclass
class Placement:
    """Where accelerate put a model's weights: what its benchmark row reports."""

    gpu_bytes: int = 0  # parameters and buffers resident on an accelerator
    cpu_bytes: int = 0  # resident on the CPU, or offloaded to CPU memory
    disk_bytes: int = 0  # offloaded to disk
    streamed_bytes: int = 0  # offloaded: copied to the execution device at every forward pass
    offloaded_modules: int = 0  # modules whose hook loads their weights at each call
    gpu_entries: int = 0  # device-map entries on an accelerator
    offloaded_entries: int = 0  # device-map entries whose weights are offloaded (not resident where they run)
    device_map: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, int]:
        """The numbers, prefixed for a results row (the device map itself is left out)."""
        return {f"accelerate_{k}": v for k, v in asdict(self).items() if k != "device_map"}


def _hooks(module: nn.Module) -> list[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def _entry(device_map: dict[str, Any], name: str) -> str | None:
    """The device-map key that places tensor `name` (the longest prefix)."""
    best = None
    for key in device_map:
        if (key == "" or name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def placement(model: nn.Module | PlainModel) -> Placement:
    """Bytes per device and offloaded modules of a model dispatched by accelerate (`model.hf_device_map`)."""
    if isinstance(model, PlainModel):
        model = model.model
    device_map = dict(getattr(model, "hf_device_map", {}) or {})
    out = Placement(device_map=device_map)
    seen: set[int] = set()
    offloaded: set[str | None] = set()
    for mname, module in model.named_modules():
        if any(getattr(h, "offload", False) for h in _hooks(module)):
            out.offloaded_modules += 1
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for tname, t in tensors:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            nbytes = t.numel() * t.element_size()
            if t.device.type == "meta":  # offloaded: its home is the device map's cpu or disk
                out.streamed_bytes += nbytes
                entry = _entry(device_map, f"{mname}.{tname}" if mname else tname)
                offloaded.add(entry)
                if device_map.get(entry) == "disk":
                    out.disk_bytes += nbytes
                else:
                    out.cpu_bytes += nbytes
            elif t.device.type == "cpu":
                out.cpu_bytes += nbytes
            else:
                out.gpu_bytes += nbytes
    out.gpu_entries = sum(_is_accelerator(d) for d in device_map.values())
    out.offloaded_entries = len(offloaded)
    return out
