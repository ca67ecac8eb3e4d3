"""Speculating Experts: the quasi-hidden state fed to a later layer's router says what that layer will need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.core.types import LOOKAHEAD_STATES, CacheView, ExpertKey, LookaheadSpec, Prediction, PrefetchRequest
from moelab.policies.base import PrefetchPolicy


@register("prefetch", "qhs")
class QhsPrefetch(PrefetchPolicy):
    """While layer l runs, layer l+`distance`'s router is applied to the quasi-hidden state (`state`, see
    moelab.models.lookahead) and its top-`k` experts per token (k=None: the model's top_k) are requested, so
    their copies overlap layer l's compute. Experts predicted by more tokens come first."""

    def __init__(
        self, distance: int = 1, k: int | None = None, state: str = "post_attn",
        default_decay: float = 0.9, defaults_file: str | None = None,
    ):
        if int(distance) < 1:
            raise ConfigError(f"prefetch.distance must be >= 1, got {distance}")
        if k is not None and int(k) < 1:
            raise ConfigError(f"prefetch.k must be >= 1 (or null for the model's top_k), got {k}")
        if state not in LOOKAHEAD_STATES:
            raise ConfigError(f"unknown prefetch.state {state!r}; allowed: {', '.join(LOOKAHEAD_STATES)}")
        if isinstance(default_decay, bool) or not 0 <= float(default_decay) < 1:
            raise ConfigError(f"prefetch.default_decay must be in [0, 1), got {default_decay!r}")
        if defaults_file is not None and (state != "default_vectors" or not Path(defaults_file).is_file()):
            raise ConfigError(f"prefetch.defaults_file={defaults_file} needs prefetch.state=default_vectors and an "
                              f"existing file (save_default_vectors writes one); got state={state}")
        self.lookahead = replace(self._spec(int(distance), None if k is None else int(k), str(state)),
                                 default_decay=float(default_decay), defaults_path=defaults_file and str(defaults_file))

    def _spec(self, distance: int, k: int | None, state: str) -> LookaheadSpec:
        return LookaheadSpec(distance=distance, k=k, state=state)

    def on_prediction(self, prediction: Prediction, cache: CacheView) -> Sequence[PrefetchRequest]:
        return [PrefetchRequest(ExpertKey(prediction.layer, e), priority=float(c))
                for e, c in prediction.counts.items()]
