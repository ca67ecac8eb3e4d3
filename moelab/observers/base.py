"""What an observer sees and gives back, and the set of them a run carries.

Observers get the policies' events (prefetch requests, each MoE layer call as it ran) and return results-row
columns. They never change what runs: the executor calls them after it has decided. Every observer registered
under the `observer` kind runs in every run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from moelab.core import registry
from moelab.core.context import RunContext
from moelab.core.types import LayerCall, ModelSpec, PrefetchRequest


class Observer:
    """Base class: override the events you measure from and `row`."""

    name: str = ""
    spec: ModelSpec

    def bind(self, ctx: RunContext) -> None:
        """Take the run's context (the same one the policies get)."""
        self.context = ctx
        self.spec = ctx.spec

    def reset(self) -> None:
        """Forget everything: a new pass starts."""

    def on_requests(self, step: int, requests: Sequence[PrefetchRequest]) -> None:
        """A prefetch policy's requests, as the executor received them."""

    def on_layer(self, call: LayerCall) -> None:
        """One MoE layer call, after the executor chose what runs."""

    def row(self) -> dict[str, Any]:
        """This observer's results-row columns (declared in moelab/results/schema.py)."""
        return {}


class Observers:
    """Every registered observer, one instance each, addressed by name (`observers["prediction_recall"]`)."""

    def __init__(self, observers: Sequence[Observer] | None = None):
        if observers is None:
            observers = [registry.build("observer", {"name": n}) for n in registry.names("observer")]
        self._by_name = {o.name: o for o in observers}

    def __getitem__(self, name: str) -> Any:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Observer]:
        return iter(self._by_name.values())

    def bind(self, ctx: RunContext) -> None:
        for o in self:
            o.bind(ctx)

    def reset(self) -> None:
        for o in self:
            o.reset()

    def on_requests(self, step: int, requests: Sequence[PrefetchRequest]) -> None:
        for o in self:
            o.on_requests(step, requests)

    def on_layer(self, call: LayerCall) -> None:
        for o in self:
            o.on_layer(call)

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for o in self:
            out.update(o.row())
        return out
