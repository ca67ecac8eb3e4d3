"""Every point of the replay experiments (conf/experiment/spac_replay.yaml, peers.yaml) composes, resolves and
passes the run's config checks, as `python run.py -m +experiment=NAME` would run it, without loading a model: their
full-size shapes are too large for the suite (test_notebooks.py runs them on the tiny model). Each point names the
committed trace of its own decoding."""

from __future__ import annotations

import itertools
from pathlib import Path

import hydra
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from moelab.config_check import check_config
from tests.conftest import ROOT

REPLAYS = ["peers", "spac_replay"]


def sweep_points(experiment: str) -> list[dict]:
    """The resolved config of each point of the experiment's sweep (Hydra's own parser expands globs)."""
    with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra.compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                else [f"{o.get_key_element()}={o.get_value_element_as_str()}"]
                for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()])]
        return [OmegaConf.to_container(hydra.compose("config", overrides=[f"+experiment={experiment}", *point]),
                                       resolve=True) for point in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", REPLAYS)
def test_every_point_of_a_replay_experiment_composes(experiment):
    points = sweep_points(experiment)
    assert len(points) > 1
    keys = [(p["label"], p["budget"]["fraction"]) for p in points]
    for c in points:
        check_config(c)  # the checks a run makes before any weight loads
        assert c["experiment_name"] == experiment
        assert c["model"]["random_init"] and c["routing"]["name"] == "replay"
        trace = Path(c["routing"]["trace"])
        kind = "ar" if c["decoding"]["name"] == "autoregressive" else f"g{c['decoding']['gamma']}"
        assert (ROOT / trace).is_file() and trace.name == f"code_moe_{kind}.parquet", (c["label"], trace)
    assert len(set(keys)) == len(keys)  # one run per labelled variant and budget
    assert {p["decoding"].get("gamma") for p in points} >= ({None, 4} if experiment == "peers" else {None, 2, 4, 8})
