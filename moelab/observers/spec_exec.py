"""Speculative execution's cost in fidelity: how often the expert that ran is not one the router chose."""

from __future__ import annotations

from typing import Any

from moelab.core.registry import register
from moelab.core.types import LayerCall
from moelab.observers.base import Observer


@register("observer", "spec_exec")
class SpecExecChanges(Observer):
    """`spec_exec_changed`: over (token, k) pairs run under speculative execution, the share whose executed
    expert is not among that token's router choices. NaN when any speculative call ran without its router
    (execution.true_router=skip): a share over the other calls alone would not be the run's."""

    name = "spec_exec"

    def reset(self) -> None:
        super().reset()
        self.pairs = 0
        self.changed = 0
        self.unmeasured = 0  # speculative calls whose router did not run

    def on_layer(self, call: LayerCall) -> None:
        if not call.speculative:
            return
        if call.router_choice is None:
            self.unmeasured += 1
            return
        k = call.top_k
        self.pairs += len(call.executed)
        self.changed += sum(e not in call.router_choice[t - t % k : t - t % k + k] for t, e in enumerate(call.executed))

    def row(self) -> dict[str, Any]:
        measured = self.pairs and not self.unmeasured
        return {"spec_exec_changed": self.changed / self.pairs if measured else float("nan")}
