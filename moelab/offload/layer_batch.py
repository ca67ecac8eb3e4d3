"""LayerBatch: one MoE layer call's (token, k) pairs grouped by expert, as transformers' grouped path orders them.

Two parts, kept apart so that the device part can become static buffers (a captured step) while the host part
stays plain Python:

- `RoutedRows` (device): the routed hidden rows, their routing weights, the permutation from (token, k) order to
  expert order and the weighted output rows, all tensors on the compute device;
- `ExpertSpans` (host): expert -> (start, end) rows of the routed rows, read from the layer's one host sync.

The GPU path and the CPU worker compute rows of `routed` (looked up by `spans`) and `scatter` their outputs back;
`combine` sums each token's k outputs in k order, so the result does not depend on which experts ran first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RoutedRows:
    """The device part of a layer batch: tensors only (T tokens, K experts per token, H hidden)."""

    hidden: torch.Tensor  # [T, H] the layer's input
    perm: torch.Tensor  # [T*K] (token, k) pairs in expert order
    routed: torch.Tensor  # [T*K, H] hidden rows in expert order
    routed_w: torch.Tensor  # [T*K] their routing weights
    rows: torch.Tensor  # [T*K, H] expert output x weight per (token, k) pair, in (token, k) order
    num_tokens: int
    top_k: int

    @classmethod
    def group(cls, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
              out_dtype: torch.dtype) -> RoutedRows:
        num_tokens, top_k = top_k_index.shape
        _, perm = torch.sort(top_k_index.reshape(-1))  # [T*K] (token, k) pairs by expert
        rows = torch.empty(num_tokens * top_k, hidden.shape[-1], dtype=out_dtype, device=hidden.device)
        return cls(hidden=hidden, perm=perm, routed=hidden[perm // top_k], routed_w=top_k_weights.reshape(-1)[perm],
                   rows=rows, num_tokens=num_tokens, top_k=top_k)

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def scatter(self, idx: torch.Tensor, y: torch.Tensor) -> None:
        """Weight the outputs `y` [n, H] of the routed rows `idx` [n] and put them in (token, k) order."""
        self.rows[self.perm[idx]] = y * self.routed_w[idx].unsqueeze(-1)

    def combine(self) -> torch.Tensor:
        """Sum over each token's k experts, in k order (independent of which experts ran first)."""
        return self.rows.view(self.num_tokens, self.top_k, -1).sum(dim=1).to(self.hidden.dtype)  # [T, H]


@dataclass(frozen=True)
class ExpertSpans:
    """The host part of a layer batch: expert -> (start, end) rows of `RoutedRows.routed`, experts ascending."""

    spans: dict[int, tuple[int, int]]

    @classmethod
    def of(cls, experts: Sequence[int], counts: Sequence[int]) -> ExpertSpans:
        spans: dict[int, tuple[int, int]] = {}
        start = 0
        for e, c in zip(experts, counts):
            spans[e] = (start, start + c)
            start += c
        return cls(spans)

    def __getitem__(self, expert: int) -> tuple[int, int]:
        return self.spans[expert]

    def count(self, expert: int) -> int:
        a, b = self.spans[expert]
        return b - a


@dataclass(frozen=True)
class LayerBatch:
    """One layer call's (token, k) pairs grouped by expert: the device rows and the host spans."""

    tensors: RoutedRows
    offsets: ExpertSpans

    @classmethod
    def group(cls, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
              experts: Sequence[int], counts: Sequence[int], out_dtype: torch.dtype) -> LayerBatch:
        """`experts` ascending with their (token, k) `counts`, as the host read them from `top_k_index`."""
        return cls(RoutedRows.group(hidden, top_k_index, top_k_weights, out_dtype), ExpertSpans.of(experts, counts))

    def combine(self) -> torch.Tensor:
        return self.tensors.combine()
