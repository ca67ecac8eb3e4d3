"""The list of predictors and the per-layer recall and signal tables the figures are built from."""

from __future__ import annotations

import json
import math

import pandas as pd

from moelab.analysis.recall import predictor_labels, predictors, recall_by_layer
from tests.conftest import ROOT


def test_predictors_are_the_predictor_config_group():
    """The one list of predictors is conf/experiment/predictor/: each file is one label, mlp only with its path."""
    files = {p.stem for p in (ROOT / "conf" / "experiment" / "predictor").glob("*.yaml")}
    listed = predictors()
    assert {ov[0].split("=", 1)[1] for ov in listed.values()} == files - {"mlp"}
    assert list(listed)[0] == "ar_binary" and list(listed)[-1] == "oracle" and "qhs d=2" in listed
    assert predictors("DIR")["mlp"] == ["+experiment/predictor=mlp", "prefetch.path=DIR"]
    assert predictor_labels() == list(predictors("DIR"))


def test_recall_by_layer_table():
    rows = pd.DataFrame({
        "predictor": ["qhs", "ar"],
        "prediction_recall_layers": [json.dumps({"1": 0.5, "3": 0.25}), json.dumps({"0": 1.0, "1": 0.75, "3": 0.5})],
    })
    table = recall_by_layer(rows)
    expected = pd.DataFrame(
        {0: [math.nan, 1.0], 1: [0.5, 0.75], 3: [0.25, 0.5], "mean": [0.375, 0.75]},
        index=pd.Index(["qhs", "ar"], name="predictor"),
    )
    pd.testing.assert_frame_equal(table, expected, check_names=True)
    assert list(table.columns[:-1]) == [0, 1, 3] and all(isinstance(c, int) for c in table.columns[:-1])


def test_signal_tables():
    """Means per (model, gamma) and the per-layer long table come from the rows' `signal_*` columns unchanged."""
    from moelab.analysis.signals import signal_by_layer, signal_table

    per = {"binary_recall": {"0": 0.25, "1": 0.5}, "freq_recall": {"0": 0.75, "1": 1.0}}
    rows = pd.DataFrame({"model": ["m", "m"], "cfg.decoding.gamma": [4, 2], "acceptance_rate": [0.5, 0.6],
                         "signal_layers": [json.dumps(per), "{}"],
                         **{f"signal_{s}_{m}": [0.1, 0.2] for s in ("binary", "freq", "freq_at_k")
                            for m in ("recall", "precision")}})
    table = signal_table(rows)
    assert list(table.index) == [("m", 2), ("m", 4)]
    assert table.loc[("m", 4), "acceptance"] == 0.5 and table.loc[("m", 2), "freq_recall"] == 0.2
    long = signal_by_layer(rows)
    assert len(long) == 4 and set(long.gamma) == {4}
    assert long.set_index(["signal", "layer"]).loc[("freq", 1), "value"] == 1.0
