"""Read a local HF checkpoint: non-expert tensors into the model, experts straight into the store.

Expert bytes are read from the safetensors file directly into the (pinned) store with
`readinto`, so no second copy of the experts ever sits in pageable memory. Both layouts
transformers writes are accepted: per-expert tensors (what `save_pretrained` and the hub
use) and fused `[num_experts, ...]` tensors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from moelab.core.errors import CheckpointError
from moelab.models.adapter import MoeAdapter
from moelab.offload.store import ExpertStore

DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file
    nbytes: int


def read_header(file: Path) -> dict:
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"corrupted safetensors file {file}: shorter than its 8-byte header length")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > size - 8:
            raise CheckpointError(
                f"corrupted safetensors file {file}: header length {n} does not fit a {size}-byte file"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"corrupted safetensors file {file}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"corrupted safetensors file {file}: header is not a JSON object")
    header["__data_start__"] = 8 + n
    header["__file_size__"] = size
    return header


def index_checkpoint(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of every *.safetensors file in `path`, validated against the file sizes."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {path}")
    index: dict[str, TensorEntry] = {}
    for file in files:
        header = read_header(file)
        data_start, size = header.pop("__data_start__"), header.pop("__file_size__")
        header.pop("__metadata__", None)
        for key, meta in header.items():
            try:
                dtype = DTYPES[meta["dtype"]]
                shape = tuple(int(s) for s in meta["shape"])
                begin, end = (int(x) for x in meta["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"corrupted safetensors file {file}: bad entry for {key!r}") from None
            numel = 1
            for s in shape:
                numel *= s
            elem = torch.empty((), dtype=dtype).element_size()
            if end - begin != numel * elem or data_start + end > size:
                raise CheckpointError(
                    f"corrupted safetensors file {file}: tensor {key!r} extends past the end of the file "
                    f"or does not match its shape (truncated download?)"
                )
            index[key] = TensorEntry(file, dtype, shape, data_start + begin, end - begin)
    return index


def read_into(entry: TensorEntry, dst: torch.Tensor, offset: int = 0) -> None:
    """Fill contiguous CPU tensor `dst` with bytes of `entry` starting `offset` bytes into its data."""
    view = dst.view(torch.uint8).reshape(-1)
    with open(entry.file, "rb", buffering=0) as f:
        f.seek(entry.start + offset)
        got = f.readinto(memoryview(view.numpy()))
    if got != view.numel():
        raise CheckpointError(f"corrupted safetensors file {entry.file}: short read")


def _load_tensor(entry: TensorEntry, key: str) -> torch.Tensor:
    with safe_open(str(entry.file), framework="pt", device="cpu") as f:
        return f.get_tensor(key)


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _is_quantized_expert(key: str) -> bool:
    return key.endswith(("_blocks", "_scales", "weight_scale_inv")) and ".experts." in key


def refuse_quantized(config: dict, name: str) -> None:
    """Released quantized checkpoints (gpt-oss's MXFP4, DeepSeek-V3's FP8) store experts moelab cannot stream."""
    q = config.get("quantization_config")
    if q:
        method = q.get("quant_method", "unknown") if isinstance(q, dict) else "unknown"
        raise CheckpointError(
            f"{name} is a quantized checkpoint (quantization_config.quant_method={method}); moelab reads "
            "bf16/fp16/fp32 weights only: give model.path a bf16 copy of it (a hub id or a directory), or set "
            "model.random_init=true for random weights at its shapes")


def expert_bytes_from_headers(tensors: Iterable[tuple[str, str, tuple[int, ...]]], adapter: MoeAdapter,
                              num_layers: int, dtype: torch.dtype, name: str) -> int:
    """Bytes the routed experts of the first `num_layers` layers take in the store (at `dtype`), from the
    checkpoint's tensor names and shapes alone: the host-memory check runs before any weight is read."""
    elem = torch.empty((), dtype=dtype).element_size()
    total = 0
    for raw_key, _, shape in tensors:
        if _is_quantized_expert(raw_key):
            raise CheckpointError(f"{name} has quantized experts ({raw_key}, ...); moelab reads bf16/fp16/fp32 "
                                  "experts only")
        key = adapter.rename(raw_key)
        m = _LAYER.search(key)
        if (m and int(m.group(1)) >= num_layers) or adapter.expert_key(key) is None:
            continue
        numel = 1
        for s in shape:
            numel *= s
        total += numel * elem
    return total


def load_checkpoint(model: nn.Module, adapter: MoeAdapter, store: ExpertStore, path: Path) -> None:
    """Load non-expert weights into `model` (already on its device) and experts into `store`."""
    index = index_checkpoint(path)
    num_layers = len(adapter.decoder_layers(model))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    loaded: set[str] = set()
    filled: set[tuple[int, int, str, int | None]] = set()
    quantized = [k for k in index if _is_quantized_expert(k)]
    if quantized:
        raise CheckpointError(
            f"{path} has quantized experts ({quantized[0]}, ...); moelab loads bf16/fp16/fp32 experts only"
        )

    for raw_key, entry in index.items():
        key = adapter.rename(raw_key)
        m = _LAYER.search(key)
        if m and int(m.group(1)) >= num_layers:
            continue  # layers cut off by model.num_layers
        ek = adapter.expert_key(key)
        if ek is not None:
            _load_expert(store, ek, entry, raw_key)
            layer, expert, tensor, half = ek
            for e in range(store.num_experts) if expert is None else (expert,):
                filled.add((layer, e, tensor, half))
            continue
        target = params.get(key)
        if target is None:
            target = buffers.get(key)
        if target is None:
            continue  # e.g. rotary caches of old checkpoints, MTP heads
        tensor = _load_tensor(entry, raw_key)
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{raw_key}: checkpoint shape {tuple(tensor.shape)} does not match the model's {tuple(target.shape)} "
                "(does config.json belong to these weights?)"
            )
        with torch.no_grad():
            target.copy_(tensor)
        loaded.add(key)

    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
        loaded.update(k for k in params if k.startswith("lm_head."))
    missing = [k for k in params if k not in loaded]
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} weight(s) of the model, e.g. {', '.join(missing[:3])}")
    _check_experts_filled(store, filled, path)


def _load_expert(store: ExpertStore, ek: tuple[int, int | None, str, int | None], entry: TensorEntry, key: str) -> None:
    layer, expert, tensor, half = ek
    if layer not in store.layers or tensor not in store.layout.names:
        raise CheckpointError(
            f"{key}: no such expert tensor in the model (layers {store.layers}, tensors {store.layout.names})"
        )
    dst_all = store.layer_tensors(layer)[tensor]
    if expert is None:
        dst = dst_all
    else:
        dst = dst_all[expert]
        if half is not None:
            rows = dst.shape[0] // 2
            dst = dst[half * rows : (half + 1) * rows]
    if tuple(dst.shape) != entry.shape:
        raise CheckpointError(f"{key}: checkpoint shape {entry.shape} does not match the model's {tuple(dst.shape)}")
    if entry.dtype == dst.dtype and dst.is_contiguous():
        read_into(entry, dst)
        return
    with safe_open(str(entry.file), framework="pt", device="cpu") as f:
        sl = f.get_slice(key)
        if expert is None:  # convert one expert at a time: never a second copy of the layer
            for e in range(dst.shape[0]):
                dst[e].copy_(sl[e])
        else:
            dst.copy_(sl[:])


def _check_experts_filled(store: ExpertStore, filled: set, path: Path) -> None:
    """Every (layer, expert, tensor) must have come whole, or as both halves of a fused gate/up."""
    for layer in store.layers:
        for t in store.layout.names:
            for e in range(store.num_experts):
                whole = (layer, e, t, None) in filled
                halves = (layer, e, t, 0) in filled and (layer, e, t, 1) in filled
                if not (whole or halves):
                    raise CheckpointError(f"{path} lacks expert weights: layer {layer}, expert {e}, {t}")


def find_config(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg} is not valid JSON ({e})") from None


def total_size(path: Path) -> int:
    return sum(os.path.getsize(f) for f in path.glob("*.safetensors"))
