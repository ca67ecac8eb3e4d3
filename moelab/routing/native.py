"""The model's own routers decide (the normal case)."""

from __future__ import annotations

from typing import Any

from moelab.core.registry import register
from moelab.routing.base import Routing


@register("routing", "native")
class NativeRouting(Routing):
    replays = False

    def wrap(self, backend: Any, om: Any) -> Any:
        return backend
