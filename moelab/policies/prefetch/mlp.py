"""Learned lookahead: small per-layer MLPs where the router on the quasi-hidden state guesses poorly."""

from __future__ import annotations

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.core.types import LookaheadSpec
from moelab.models.hub import in_checkout
from moelab.policies.prefetch.qhs import QhsPrefetch
from moelab.predictors.files import read_predictor_config


@register("prefetch", "mlp")
class MlpPrefetch(QhsPrefetch):
    """Like qhs, but the layers in `layers` (all the predictors saved at `path` when null) are scored by MLPs
    trained with `python -m moelab.train_predictor`; the other layers fall back to the router (qhs). The
    predictors fix `distance` and `state`: they were trained for them."""

    def __init__(
        self,
        path: str | None = None,
        layers: list[int] | None = None,
        k: int | None = None,
    ):
        if not path or path == "???":  # ??? is Hydra's mark of a value still to be given
            raise ConfigError("prefetch=mlp needs prefetch.path=DIR (saved by python -m moelab.train_predictor)")
        self.path = str(in_checkout(path))
        info = read_predictor_config(self.path)
        self.layers = None if layers is None else tuple(int(x) for x in layers)
        super().__init__(distance=info["distance"], k=k, state=info["state"])

    def _spec(self, distance: int, k: int | None, state: str) -> LookaheadSpec:
        return LookaheadSpec(distance=distance, k=k, state=state, scorer="mlp", mlp_path=self.path,
                             mlp_layers=self.layers)
