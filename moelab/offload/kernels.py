"""Expert feed-forward over the slot pool, with exactly the math of the HF experts module it replaces.

The gate function, weight orientation and biases are read off the HF module (transformers'
`use_experts_implementation` sets `is_transposed`, `has_bias`, `has_gate`, `_apply_gate`).
Rows arrive grouped by slot; one grouped GEMM per projection covers every expert of a phase,
through transformers' own grouped linear, so per-expert results equal the un-offloaded
model's (bitwise on the CPU) and small experts cost one launch per layer, not five per expert.
"""

from __future__ import annotations

import torch

try:  # the helper transformers' grouped experts path is built on (same in 5.17 .. 5.23)
    from transformers.integrations.moe import _grouped_linear
except ImportError:  # pragma: no cover - only on transformers versions that moved it
    _grouped_linear = None  # type: ignore[assignment]


def _per_group_linear(
    x: torch.Tensor, w: torch.Tensor, counts: list[int], bias: torch.Tensor | None, transposed: bool
) -> torch.Tensor:
    """Fallback: one matmul per non-empty group (what grouped_mm does on the CPU)."""
    out = x.new_empty(x.shape[0], w.shape[-1] if transposed else w.shape[-2], dtype=w.dtype)
    start = 0
    for g, n in enumerate(counts):
        if n:
            wg = w[g] if transposed else w[g].t()
            torch.mm(x[start : start + n].to(w.dtype), wg, out=out[start : start + n])
        start += n
    if bias is not None:
        out.add_(bias)
    return out


class ExpertKernel:
    def __init__(self, hf_experts: torch.nn.Module):
        self.module = hf_experts  # parameters may be on the meta device: only its gate/act functions are used
        # declared by every transformers experts module (its `use_experts_implementation` decorator sets them)
        self.transposed = bool(hf_experts.is_transposed)
        self.has_bias = bool(hf_experts.has_bias)
        self.has_gate = bool(hf_experts.has_gate)
        self.up_name = "gate_up_proj" if self.has_gate else "up_proj"

    def _linear(self, x, w, offs, counts, bias, out_dtype=None):
        if out_dtype is not None and w.dtype != out_dtype:
            # weights held in a wider dtype (the CPU worker's float32 copies): multiply in it, then round to the
            # activations' dtype before the bias, exactly where the native path rounds its GEMM output
            out = self._linear(x.to(w.dtype), w, offs, counts, None).to(out_dtype)
            return out if bias is None else out.add_(bias.to(out_dtype))
        if _grouped_linear is not None:
            return _grouped_linear(x, w, offs, bias=bias, is_transposed=self.transposed)
        if counts is None:
            counts = torch.diff(offs, prepend=offs.new_zeros(1)).tolist()
        return _per_group_linear(x, w, counts, bias, self.transposed)

    def __call__(
        self,
        x: torch.Tensor,
        pools: dict[str, torch.Tensor],
        offs: torch.Tensor,
        row_slots: torch.Tensor | None,
        counts: list[int] | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """x: [rows, hidden] sorted by slot; offs: int32 cumulative rows per slot (one entry per slot).

        Returns the unweighted expert outputs [rows, hidden]. `row_slots` (slot of each row) is
        needed for biases only; `counts` (rows per slot, on the host) spares a sync in the fallback.
        `out_dtype`: the dtype of activations when the weights are held wider (each projection rounds to it).
        """
        up_bias = pools[f"{self.up_name}_bias"][row_slots] if self.has_bias else None
        h = self._linear(x, pools[self.up_name], offs, counts, up_bias, out_dtype)
        h = self.module._apply_gate(h) if self.has_gate else self.module.act_fn(h)  # type: ignore[operator]
        down_bias = pools["down_proj_bias"][row_slots] if self.has_bias else None
        return self._linear(h, pools["down_proj"], offs, counts, down_bias, out_dtype)
