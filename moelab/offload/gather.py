"""Gather experts from pinned host memory into device slots, chosen by device index tensors.

Why a kernel and not `copy_`: a captured `cudaMemcpyAsync` replays the pointers it was captured with, so a copy
whose source depends on this step's routing cannot live in a CUDA graph. A kernel that reads pinned host memory
through its device address (UVA, zero-copy) and takes the expert and slot numbers from device tensors can: the
indices change between replays, the kernel does not. Entries whose expert is -1 copy nothing, so one launch with
a fixed number of entries serves any number of misses (0 included) without a host decision.

    host [E, n] (pinned, read over PCIe) --(src[i] >= 0)--> pool [C + 1, n] row dst[i]

On the CPU (tests, `device=cpu`) the same call is a masked index copy: same semantics, no graph.
16 thread blocks per expert: enough to keep PCIe busy while leaving most SMs to the step's kernels (this kernel's
own bandwidth is not measured separately yet; the decode benchmark's bytes per token and TPOT bound it).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

BLOCKS_PER_EXPERT = 16  # thread blocks reading one expert: enough for ~51 GB/s, few enough to leave SMs to GEMMs


class _CudaArray:
    """`__cuda_array_interface__` over a pinned host buffer: torch wraps it as a CUDA tensor with the same
    address (under UVA the device address of registered, mapped host memory is its host address)."""

    def __init__(self, t: torch.Tensor):
        self.__cuda_array_interface__ = {
            "shape": (t.numel() * t.element_size(),), "typestr": "|u1", "data": (t.data_ptr(), False),
            "version": 3, "strides": None,
        }


def device_view(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CUDA tensor over the bytes of the pinned, contiguous host tensor `host` (no copy): kernels that read it
    read host memory over PCIe. On the CPU, `host` itself."""
    if device.type != "cuda":
        return host
    if not host.is_pinned():
        raise ValueError("a device view needs pinned host memory")
    flat = torch.as_tensor(_CudaArray(host.contiguous()), device=device)  # [nbytes] uint8
    return flat.view(host.dtype).view(host.shape)


@cache
def _triton_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def gather_rows(src_ptr, dst_ptr, src_idx_ptr, dst_idx_ptr, row_words, chunk, BLOCK: tl.constexpr):
        entry = tl.program_id(0)
        part = tl.program_id(1)
        s = tl.load(src_idx_ptr + entry)
        if s >= 0:
            d = tl.load(dst_idx_ptr + entry)
            lo = part * chunk
            hi = tl.minimum(lo + chunk, row_words)
            src = src_ptr + s.to(tl.int64) * row_words
            dst = dst_ptr + d.to(tl.int64) * row_words
            for off in range(lo, hi, BLOCK):
                cols = off + tl.arange(0, BLOCK)
                m = cols < hi
                tl.store(dst + cols, tl.load(src + cols, mask=m), mask=m)

    return gather_rows


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _words(t: torch.Tensor) -> torch.Tensor:
    """`t` [rows, ...] as [rows, words] of the widest integer type that divides a row (16-byte loads where possible)."""
    row_bytes = t[0].numel() * t.element_size()
    for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2), (torch.uint8, 1)):
        if row_bytes % size == 0:
            return t.reshape(t.shape[0], -1).view(dtype)
    raise AssertionError("unreachable")


def gather_experts(pool: torch.Tensor, host: torch.Tensor, dst: torch.Tensor, src: torch.Tensor) -> None:
    """pool[dst[i]] = host[src[i]] for every i with src[i] >= 0; nothing for src[i] < 0.

    pool [C + 1, ...] on the device (row C is a spare that entries without a copy may name); host [E, ...] the
    layer's experts (on CUDA: the `device_view` of pinned memory); dst, src [N] integer device tensors. Sync-free
    and capturable on CUDA.
    """
    if pool.device.type != "cuda":
        keep = src >= 0  # [N]
        pool[dst[keep]] = host[src[keep]]
        return
    p, h = _words(pool), _words(host)  # [C + 1, w], [E, w]
    row_words = p.shape[1]
    chunk = -(-row_words // BLOCKS_PER_EXPERT)
    grid = (src.numel(), BLOCKS_PER_EXPERT)
    _triton_kernel()[grid](h, p, src, dst, row_words, chunk, BLOCK=1024)
