"""tools/behaviour_snapshot.py keeps composing: the combinations it fingerprints are valid run configs."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from tools import behaviour_snapshot as snap


def covering_combinations() -> list[tuple[str, ...]]:
    """Few combinations that between them use every override the tool passes (composing all 78 takes ~10 s)."""
    seen: set[str] = set()
    out = []
    for combo in snap.combinations():
        new = set(snap.overrides(*combo, new_keys=True)) - seen
        if new:
            seen |= new
            out.append(combo)
    return out


def test_the_combinations_compose_on_the_small_random_model():
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        for combo in covering_combinations():
            cfg = compose("config", overrides=[*snap.MODEL, *snap.BASE, *snap.overrides(*combo, new_keys=True)])
            assert cfg.model.random_init and cfg.model.config.hidden_size == 64, combo
