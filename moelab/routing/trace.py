"""Routing traces: what every router chose, step by step, recorded through the executor.

Format (one parquet file; pyarrow schema metadata key `moelab_trace` holds a JSON header):

  header:  model, architecture, num_layers, moe_layers, num_experts, top_k, prompts (token ids per
           prompt), max_new_tokens, batch_size, lookahead (the distances d recorded in pred_d*)
  rows:    one per (step, MoE layer, token of the step)
    step     int32   executor step (0 = first prefill of the run)
    phase    string  prefill | decode
    batch    int32   which batch of prompts the step belongs to
    pos      int32   token index within the step (row-major over [batch rows, step tokens])
    layer    int32   decoder layer index
    topk     list<int16>    experts the router chose (the routing the run used)
    weights  list<float32>  their combine weights
    ranking  list<int16>    all experts by descending router logit
    pred_d1, pred_d2 ...  list<int16>  all experts as ranked by the router of the MoE layer d MoE
                          layers ahead applied (after its pre-MoE norm) to this layer's post-attention
                          residual (`qhs` with state=post_attn, see moelab.models.lookahead): what
                          qhs replays under routing=replay

With `states=True` a second file, `<trace>.states.safetensors`, holds for every MoE layer l a tensor
`layer.<l>` [rows of layer l, hidden] (float16): the post-attention residual of each traced token,
in the trace's row order for that layer. `moelab.train_predictor` learns from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from moelab.models.hub import in_checkout
from moelab.models.offloaded import OffloadedModel
from moelab.scorers.router import router_ranking

META_KEY = b"moelab_trace"


class TracingBackend:
    """Wraps a backend; records each layer's routing and the later routers' view of its post-attention state."""

    def __init__(self, inner: Any, om: OffloadedModel, lookahead: tuple[int, ...] = (1, 2), states: bool = False):
        self.inner = inner
        self.om = om
        self.lookahead = lookahead
        self.rows: dict[str, list] = {k: [] for k in ("step", "phase", "batch", "pos", "layer", "topk", "weights",
                                                      "ranking", *(f"pred_d{d}" for d in lookahead))}
        self.states: dict[int, list[torch.Tensor]] | None = {} if states else None
        self._step = -1
        self._phase = ""
        self.batch = 0
        self._logits: dict[int, torch.Tensor] = {}
        self._state: dict[int, torch.Tensor] = {}
        self._hooks = []
        routers, norms = om.routers(), om.pre_moe_norms()
        self._routers, self._norms = routers, norms
        moe = list(om.spec.moe_layers)
        self._targets = {layer: [(d, moe[i + d]) for d in lookahead if i + d < len(moe)] for i, layer in enumerate(moe)}
        self._quiet = False
        for layer, router in routers.items():
            self._hooks.append(router.register_forward_hook(self._router_hook(layer)))
            self._hooks.append(norms[layer].register_forward_pre_hook(self._state_hook(layer)))

    def _router_hook(self, layer: int):
        def hook(module, args, output):
            if not self._quiet:
                self._logits[layer] = output[0].detach().reshape(-1, output[0].shape[-1])
        return hook

    def _state_hook(self, layer: int):
        def hook(module, args):
            if not self._quiet:
                self._state[layer] = args[0].detach().reshape(-1, args[0].shape[-1])
        return hook

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def begin_step(self, phase: str, num_tokens: int) -> int:
        self._phase = phase
        self._step = self.inner.begin_step(phase, num_tokens)
        return self._step

    def end_step(self) -> None:
        self.inner.end_step()

    def run_layer(self, layer, hidden, top_k_index, top_k_weights):
        out = self.inner.run_layer(layer, hidden, top_k_index, top_k_weights)
        n = top_k_index.shape[0]
        r = self.rows
        r["step"] += [self._step] * n
        r["phase"] += [self._phase] * n
        r["batch"] += [self.batch] * n
        r["pos"] += list(range(n))
        r["layer"] += [layer] * n
        r["topk"] += top_k_index.tolist()
        r["weights"] += top_k_weights.float().tolist()
        logits = self._logits.pop(layer, None)
        r["ranking"] += logits.argsort(dim=-1, descending=True).tolist() if logits is not None else [[]] * n
        state = self._state.pop(layer, None)
        targets = dict(self._targets.get(layer, []))
        self._quiet = True  # the later routers' hooks must not take these calls for their own
        try:
            for d in self.lookahead:
                if d in targets and state is not None:
                    nxt = targets[d]
                    r[f"pred_d{d}"] += router_ranking(self._routers[nxt], self._norms[nxt](state), 10**9).tolist()
                else:
                    r[f"pred_d{d}"] += [[]] * n
        finally:
            self._quiet = False
        if self.states is not None and state is not None:
            self.states.setdefault(layer, []).append(state.to(torch.float16).cpu())
        return out

    def save(self, path: Path, header: dict[str, Any]) -> Path:
        """Write the trace atomically with its header."""
        table = pa.table({
            "step": pa.array(self.rows["step"], pa.int32()), "phase": pa.array(self.rows["phase"], pa.string()),
            "batch": pa.array(self.rows["batch"], pa.int32()), "pos": pa.array(self.rows["pos"], pa.int32()),
            "layer": pa.array(self.rows["layer"], pa.int32()),
            **{k: pa.array(self.rows[k], pa.list_(pa.int16())) for k in ("topk", "ranking")},
            "weights": pa.array(self.rows["weights"], pa.list_(pa.float32())),
            **{f"pred_d{d}": pa.array(self.rows[f"pred_d{d}"], pa.list_(pa.int16())) for d in self.lookahead},
        })
        header = {**header, "lookahead": list(self.lookahead)}
        table = table.replace_schema_metadata({META_KEY: json.dumps(header).encode()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
        if self.states is not None:
            tensors = {f"layer.{layer}": torch.cat(parts).contiguous() for layer, parts in self.states.items()}
            spath = states_path(path)
            tmp = spath.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata={"trace": path.name})
            tmp.replace(spath)
        return path


def states_path(trace: str | Path) -> Path:
    """Where the states of a trace recorded with `states=True` are."""
    trace = Path(trace)
    return trace.with_name(trace.stem + ".states.safetensors")


def read_trace(path: str | Path) -> tuple[dict[str, Any], Any]:
    """(header, pandas DataFrame) of a trace file."""
    from moelab.core.errors import ConfigError

    path = in_checkout(path)  # the committed traces (checkpoints/v1/traces/...) from any directory
    if not path.is_file():
        raise ConfigError(f"routing trace {path} does not exist (record one with record_trace=true)")
    try:
        table = pq.read_table(path)
        header = json.loads(table.schema.metadata[META_KEY])
    except (pa.ArrowInvalid, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not a moelab routing trace ({type(e).__name__})") from None
    return header, table.to_pandas()
