"""Every bad value is one line naming it and the allowed ones, before any weight loads: the run's own values
(checked in-process, the one-line/exit-2 path is tests/test_cli.py's), Hydra's composition errors, and
`python -m moelab.sweep` errors."""

from __future__ import annotations

import importlib.util

import hydra
import pytest

from moelab import runner, sweep
from moelab.core.errors import ConfigError
from moelab.hydra_errors import compose_error
from moelab.results.store import read_runs
from tests.conftest import ROOT
from tests.test_faults import FAST, corrupt

BAD_VALUES = {
    "seed": (["seed=abc"], ["seed", "'abc'", "integer"]),
    "reference": (["reference=maybe"], ["'maybe'", "auto, true, false"]),
    "distance": (["prefetch=qhs", "prefetch.distance=99"], ["prefetch.distance=99", "4 MoE layers", "1..3"]),
    "gpu_experts": (["budget.gpu_experts=100000"], ["gpu_experts=100000", "64", "2..64"]),
    "num_prompts": (["workload.num_prompts=100"], ["num_prompts=100", "6 prompts", "1..6"]),
    "hf_without_path": (["model=hf"], ["model.path is not set", "model.path="]),
    "replay_without_trace": (["routing=replay"], ["routing.trace is not set", "record_trace=true"]),
    "top_level_key": (["+sede=1"], ["'sede'", "seed"]),
    "boolean": (["record_trace=maybe"], ["record_trace", "true or false"]),
    "true_router_skip_without_predicted": (["execution.true_router=skip"],
                                           ["true_router=skip", "speculative=predicted, got none"]),
    "true_router_skip_with_trace": (["prefetch=qhs", "execution.speculative=predicted", "execution.true_router=skip",
                                     "record_trace=true"], ["record_trace=true", "true_router=compute"]),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_is_one_line_before_any_weight_loads(tmp_path, case):
    overrides, expected = BAD_VALUES[case]
    with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra.compose("config", overrides=[*FAST, f"results_dir={tmp_path}", "model.num_layers=4",
                                                 *overrides])
    loads = runner.MODELS.loads
    with pytest.raises(ConfigError) as e:
        runner.run(cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(t in msg for t in expected), msg
    assert runner.MODELS.loads == loads  # no model was loaded for it
    assert read_runs(tmp_path, "default").status.tolist() == ["failed"]  # and the attempt is on record


HYDRA_ERRORS = {
    "group_choice": (["cache=lfu3"],
                     ["unknown cache 'lfu3'", "belady, fifo, lfu, lru, spac_released, static, utility"]),
    "group_set_by_a_preset": (["balancer=foo"], ["unknown balancer 'foo'", "cpu_cold", "gpu_only"]),
    "sweep_choice": (["budget.gpu_experts=4,6", "cache=lru,lfu3"], ["unknown cache 'lfu3'"]),
    "unknown_key": (["sede=1"], ["unknown key 'sede'", "+sede=1", "seed"]),
    "syntax": (["seed=["], ["cannot parse the override 'seed=['"]),
}


@pytest.mark.parametrize("case", sorted(HYDRA_ERRORS))
def test_hydra_composition_errors_are_one_line(case):
    overrides, expected = HYDRA_ERRORS[case]
    msg = compose_error(overrides, ROOT / "conf", "config")
    assert msg is not None and "\n" not in msg and "policy/on_demand" not in msg, msg
    assert all(t in msg for t in expected), msg


def test_config_name_typo_and_a_good_command():
    msg = compose_error([], ROOT / "conf", "confg")
    assert "no config named 'confg'" in msg and "allowed: config, train_predictor, training" in msg
    assert compose_error(["policy=qhs,spac", "budget=half"], ROOT / "conf", "config") is None
    # a glob over a config group is expanded as the sweeper expands it; one that matches nothing names the files
    glob = ["+experiment=prediction_recall", "model=tiny", "+experiment/predictor=glob(*,exclude=mlp)"]
    assert compose_error(glob, ROOT / "conf", "config") is None
    msg = compose_error([*glob[:2], "+experiment/predictor=glob(nosuch*)"], ROOT / "conf", "config")
    assert "matches no config" in msg and "qhs_d1" in msg


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(_installed("hydra_plugins.hydra_joblib_launcher"), reason="the cluster extra is installed here")
@pytest.mark.parametrize("launcher", ["parallel", "slurm"])
def test_a_launcher_without_its_plugin_says_what_to_install(launcher):
    msg = compose_error([f"hydra/launcher={launcher}"], ROOT / "conf", "config")
    assert msg == (f"hydra/launcher={launcher} needs Hydra's launcher plugins, which are not installed: "
                   'pip install -e ".[cluster]"')


def test_sweep_status_errors_are_one_line(tmp_path, capsys):
    corrupt(tmp_path / "exp" / "runs.parquet")
    assert sweep.main(["status", str(tmp_path)]) == 2
    assert sweep.main(["status", str(tmp_path), "nosuchexp"]) == 2
    assert sweep.main([]) == 2
    assert sweep.main(["status", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(ln.startswith("error: ") for ln in err), err
    assert "runs.parquet cannot be read" in err[0] and "move it aside" in err[0]
    assert "no experiment 'nosuchexp'" in err[1] and "exp" in err[1]
    assert "usage:" in err[2]
