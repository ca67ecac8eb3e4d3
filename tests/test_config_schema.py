"""Every key of every config group is typed: a wrong-typed value at any key, null defaults included, fails in one
line naming the key before any weight is read (moelab/config_schema.py derives the schema from the code that owns
each key, so a key added later is covered the moment it exists). A few CLI samples check the one line on stderr and
exit 2; the checks against the model and the data (positions, shapes, top-k, batch, speculation) are at the end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from unittest import mock

import hydra
import pytest
from omegaconf import OmegaConf

from moelab import assembly, runner
from moelab.config_schema import Count, Range, check_value, describe
from moelab.core.errors import ConfigError, MoelabError
from tests.conftest import ROOT

CONF = ROOT / "conf"
# groups that are not a run's: Hydra's launchers, and `python -m moelab.train`'s (conf/training.yaml)
NOT_RUN_GROUPS = ("hydra", "train")
BASE = ["device=cpu", "reference=false", "progress=false", "logger.console=false"]
TRACE = ROOT / "checkpoints/v1/traces/code_moe_ar.parquet"
MAPPING = {"bad": [1]}  # a mapping where a scalar or a list belongs
WORD = "abc"  # a word where a number, a boolean or a mapping belongs


class Reached(Exception):
    """setup got as far as reading weights: nothing refused the config."""


def config_files() -> list[tuple[str, str, Path]]:
    """(group, choice, file) of every file of every group a run composes, experiments' subgroups included."""
    out = []
    for path in sorted(CONF.rglob("*.yaml")):
        rel = path.relative_to(CONF)
        if len(rel.parts) == 1 or rel.parts[0] in NOT_RUN_GROUPS:
            continue
        out.append(("/".join(rel.parts[:-1]), path.stem, path))
    return out


def file_keys(group: str | None, path: Path) -> list[str]:
    """Every key a config file sets (its sections and their leaves), as full dotted paths of the run's config."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    global_ = group is None or path.read_text().startswith("# @package _global_")
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if prefix == "" and k in ("defaults", "hydra"):
                continue
            full = f"{prefix}{k}"
            keys.append(full)
            if isinstance(v, dict):
                walk(v, f"{full}.")

    walk(raw, "" if global_ else f"{group}.")
    return keys


def overrides_for(group: str, choice: str, tmp: Path) -> list[str]:
    if group.startswith("experiment"):
        return [*BASE, f"+{group}={choice}"]
    extra = {
        ("model", "hf"): ["model.path=checkpoints/v1/code_moe"],
        ("routing", "replay"): [f"routing.trace={TRACE}"],
        ("workload", "dataset"): [f"workload.path={tmp}", "workload.field=text"],
    }.get((group, choice), [])
    return [*BASE, f"{group}={choice}", *(["model.random_init=true"] if group == "model" else []), *extra]


def compose(overrides: list[str]) -> dict[str, Any]:
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base=None):
        return OmegaConf.to_container(hydra.compose("config", overrides=overrides), resolve=True)


def setup_until_weights(c: dict[str, Any]) -> None:
    """RunRecipe.setup (every check a run makes) up to where the weights would be read (host memory not asked)."""
    recipe = runner.RunRecipe(c, "walk", {"run_id": "walk"})
    with mock.patch.object(runner.MODELS, "get", side_effect=Reached), \
            mock.patch.object(assembly, "check_host_memory", lambda *a, **k: None):
        try:
            recipe.setup()
        except Reached:
            pass


def refusal(c: dict[str, Any], key: str, value: Any) -> str | None:
    """The one-line error of `c` with `value` at `key`, or None when it runs."""
    bad = copy.deepcopy(c)
    *parents, last = key.split(".")
    node = bad
    for p in parents:
        node = node[p]
    node[last] = value
    try:
        setup_until_weights(bad)
    except MoelabError as e:  # a ConfigError, or a path that is not there (CheckpointError): one line, exit 2
        return str(e)
    return None


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return"}) + "\n" for i in range(40)))
    return path


@pytest.mark.parametrize("group,choice,path", config_files(), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_every_key_of_every_group_refuses_a_wrong_type_in_one_line(group, choice, path, prompts):
    c = compose(overrides_for(group, choice, prompts))
    setup_until_weights(copy.deepcopy(c))  # the file itself is a good config
    keys = file_keys(group, path)
    assert keys or group == "routing" or "policy" in group, path
    for key in keys:
        default = OmegaConf.select(OmegaConf.create(c), key)
        default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
        if default is None:  # null: a word is refused unless the key takes a string; then a mapping is
            candidates = [WORD, MAPPING]
        elif isinstance(default, str | list):
            candidates = [MAPPING]
        else:
            candidates = [WORD]
        messages = [refusal(c, key, v) for v in candidates]
        named = [m for m in messages if m is not None and key in m]
        assert named, f"{path.relative_to(ROOT)}: {key} accepts {candidates} ({messages})"
        assert all("\n" not in m for m in named), named


def test_the_top_level_keys_refuse_a_wrong_type_in_one_line():
    c = compose(BASE)
    for key in file_keys(None, CONF / "config.yaml"):
        default = OmegaConf.select(OmegaConf.create(c), key)
        default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
        value = MAPPING if isinstance(default, str | list) else WORD
        msg = refusal(c, key, value)
        if msg is None and default is None:
            msg = refusal(c, key, MAPPING)
        assert msg is not None and key in msg and "\n" not in msg, (key, msg)


@pytest.mark.parametrize("key,value,expected", [
    ("workload.max_new_tokens", "abc", "workload.max_new_tokens must be an integer, got 'abc'"),
    ("prefetch.k", 1.5, "prefetch.k must be an integer, or null, got 1.5"),
    ("model.num_layers", 0.5, "model.num_layers must be an integer >= 1, or null, got 0.5"),
    ("budget.fraction", 2, "budget.fraction must be a number in (0, 1], or null, got 2"),
    ("budget.gpu_gib", -1, "budget.gpu_gib must be a number > 0, or null, got -1"),
    ("rerun", "maybe", "rerun must be true or false, got 'maybe'"),
    ("eval.limit", -1, "eval.limit must be an integer >= 1, or a number in (0, 1), or null, got -1"),
    ("+model.foo", 1, "unknown key model.foo=1; allowed under model: name, arch"),
])
def test_a_wrong_value_names_key_value_and_what_is_allowed(key, value, expected):
    c = compose([*BASE, "prefetch=qhs"])
    msg = refusal(c, key.lstrip("+"), value)
    assert msg is not None and msg.startswith(expected), msg


def test_a_new_key_is_typed_by_its_annotation():
    """A field added to an owner's dataclass or constructor is checked with no other change (as execution.graphs)."""
    mode = Literal["auto", "on", "off"]
    check_value("execution.graphs", "on", mode)
    with pytest.raises(ConfigError, match="execution.graphs must be one of: auto, on, off, got True"):
        check_value("execution.graphs", True, mode)
    assert describe(Annotated[int, Range(0, 8)] | None) == "an integer in 0..8, or null"
    assert describe(list[Count]) == "a list [...] of an integer >= 1"
    with pytest.raises(ConfigError, match=r"prefetch.layers\[1\] must be an integer >= 1, got 'x'"):
        check_value("prefetch.layers", [1, "x"], list[Count] | None)


# ------------------------------------------------------------------------------------ checks against model and data
MODEL_AND_DATA = {
    "positions": (["workload.max_new_tokens=1500"], ["workload.max_new_tokens=1500", "max_position_embeddings",
                                                     "1024", "allowed: workload.max_new_tokens <= "]),
    "positions_speculative": (["model=code_moe", "decoding=speculative", "workload.max_new_tokens=2040"],
                              ["+ 4 draft tokens (decoding.gamma)", "2048", "<= 2014"]),
    "ppl_positions": (["workload.ppl_tokens=5000"], ["workload.ppl_tokens=5000", "allowed: 0..1024"]),
    "shape": (["model.config.hidden_size=255"], ["hidden_size=255", "num_attention_heads=8", "allowed"]),
    "heads": (["model.config.num_key_value_heads=3"], ["num_key_value_heads=3", "allowed"]),
    "top_k": (["model.config.num_experts_per_tok=32"], ["top_k=32", "num_experts_per_tok", "16 experts",
                                                        "allowed: 1..16"]),
    "batch": (["workload.batch_size=1000"], ["workload.batch_size=1000", "6 prompt(s)", "allowed: 1..6"]),
    "gpu_gib": (["budget.gpu_gib=1e12"], ["budget.gpu_gib=", "more than the model's 64 routed experts",
                                          "allowed: 2..64"]),
    "speculate_nothing": (["execution.speculative=router"], ["execution.speculative=router", "prefetch=none",
                                                              "predicts nothing", "execution.speculative=none"]),
    "rerun": (["+rerun=maybe"], ["rerun must be true or false", "'maybe'"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_AND_DATA))
def test_checks_against_the_model_and_the_data_are_one_line_before_weights(case):
    overrides, expected = MODEL_AND_DATA[case]
    c = compose([*BASE, "model=tiny", *overrides])
    with pytest.raises(ConfigError) as e:
        setup_until_weights(c)
    msg = str(e.value)
    assert "\n" not in msg and all(t in msg for t in expected), msg


def test_what_the_checks_allow_still_runs():
    """The boundaries themselves pass: the longest builtin prompt + new tokens at the model's positions, a batch of
    every prompt, speculation with a predicting policy, the whole model's size as gpu_gib."""
    c = compose([*BASE, "model=tiny"])
    setup_until_weights(c)
    msg = refusal(c, "workload.max_new_tokens", 1500)
    limit = int(msg.split("allowed: workload.max_new_tokens <= ")[1])
    assert refusal(c, "workload.max_new_tokens", limit) is None
    assert refusal(c, "workload.batch_size", 6) is None
    setup_until_weights(compose([*BASE, "model=tiny", "prefetch=qhs", "execution.speculative=router"]))
    setup_until_weights(compose([*BASE, "model=tiny", "budget.gpu_gib=0.09375"]))  # 64 experts of 1.5 MiB


CLI = {
    "word_for_a_count": (["workload.max_new_tokens=abc"],
                         "error: workload.max_new_tokens must be an integer, got 'abc'"),
    "fraction_for_a_count": (["prefetch=qhs", "prefetch.k=1.5"], "error: prefetch.k must be an integer, or null, "
                                                                  "got 1.5"),
    "shape": (["model.config.hidden_size=255"], "error: mixtral cannot run the shape model.config hidden_size=255"),
}


@pytest.mark.parametrize("case", sorted(CLI))
def test_cli_samples_are_one_line_and_exit_2(tmp_path, case):
    overrides, expected = CLI[case]
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=tiny", "progress=false", "device=cpu",
                        f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'hydra'}", *overrides],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith(" ")]
    assert p.returncode == 2 and lines == [lines[-1]] and lines[-1].startswith(expected), p.stderr
