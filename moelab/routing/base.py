"""Who decides each MoE layer's experts during a run: the model's own routers, or a recorded trace."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Routing(ABC):
    """Registry kind `routing`. A replaying routing also supplies the run's prompts and, for a speculative
    recording, the (proposed, accepted) counts of its verification passes."""

    replays: bool = False  # True: the routing comes from a recording, not from the model's routers
    path: str | None = None  # the recording a replaying routing reads

    @abstractmethod
    def wrap(self, backend: Any, om: Any) -> Any:
        """The backend the model runs through under this routing (the given one, or a wrapper around it)."""

    def workload(self, vocab_size: int) -> tuple[list[list[list[int]]], int] | None:
        """Batches and new tokens that reproduce a recording; None when the run's workload decides."""
        return None

    def mapping(self, spec: Any) -> str | None:
        """How a recording maps onto a model of shape `spec` (one line), None when it needs no mapping; raises
        ConfigError where none exists."""
        return None

    def speculation(self) -> list[tuple[int, int]]:
        """(draft tokens proposed, accepted) of each verification pass of a speculative recording, in order."""
        return []
