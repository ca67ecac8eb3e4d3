"""The model's own routers decide (the normal case)."""

from __future__ import annotations

from typing import Any

from moelab.core.registry import register


@register("routing", "native")
class NativeRouting:
    replays = False

    def wrap(self, backend: Any, om: Any) -> Any:
        return backend

    def workload(self, vocab_size: int) -> None:
        return None
