"""Scorers: what turns a lookahead's stand-in state into a later layer's ranked experts (a registry kind).

A prefetch policy's `LookaheadSpec.scorer` names one; `moelab.models.lookahead` calls it while layer l runs.
Adding a scorer is one file here: a `Scorer` subclass with `@register("scorer", name)` and a `for_model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moelab.core import registry

if TYPE_CHECKING:
    from moelab.core.types import LookaheadSpec
    from moelab.models.offloaded import OffloadedModel
    from moelab.scorers.base import Scorer


def scorer_class(name: str) -> type[Scorer]:
    """The registered scorer `name` (an unknown one: a one-line ConfigError listing the registered names)."""
    cls: type[Scorer] = registry.get("scorer", name)
    return cls


def build_scorer(om: OffloadedModel, spec: LookaheadSpec) -> Scorer:
    """The scorer `spec.scorer` for this model."""
    return scorer_class(spec.scorer).for_model(om, spec)
