"""OmegaConf resolvers the experiment configs use, registered when moelab is imported.

`${moelab.trace:SOURCE}` names the committed routing trace of reference model SOURCE that matches the run's own
decoding: `checkpoints/v1/traces/SOURCE_ar.parquet` for autoregressive decoding, `SOURCE_g<gamma>.parquet` for
speculative decoding at `decoding.gamma`. A sweep over variants that decode differently (an autoregressive
baseline next to speculative ones) then replays, point by point, the trace each variant needs.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

TRACES = "checkpoints/v1/traces"  # relative: looked up in moelab's checkout from any directory (routing/trace.py)


def trace_kind(decoding: Any) -> str:
    """`ar` for autoregressive decoding, `g<gamma>` for speculative decoding (the committed traces' naming)."""
    return "ar" if decoding["name"] == "autoregressive" else f"g{int(decoding['gamma'])}"


def reference_trace(source: str, *, _root_: Any) -> str:
    return f"{TRACES}/{source}_{trace_kind(_root_.decoding)}.parquet"


def register() -> None:
    if not OmegaConf.has_resolver("moelab.trace"):
        OmegaConf.register_new_resolver("moelab.trace", reference_trace)
