"""The prediction-recall command end to end on the embedded tiny model, and the per-layer table it builds."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd

from moelab.analysis.recall import PREDICTORS, recall_by_layer
from tests.conftest import ROOT


def test_prediction_recall_command_writes_table_and_figure(tmp_path):
    results = tmp_path / "results"
    args = [sys.executable, "-m", "moelab.analysis.prediction_recall", "model=tiny", "device=cpu", "progress=false",
            f"results_dir={results}", "workload.num_prompts=2", "workload.max_new_tokens=6"]
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    table = pd.read_csv(results / "prediction_recall" / "prediction_recall.csv", index_col="predictor")
    assert table.index.tolist() == list(PREDICTORS)
    values = table.to_numpy().ravel()
    known = values[~pd.isna(values)]
    assert len(known) and ((known >= 0) & (known <= 1)).all()
    assert table.loc["oracle", "mean"] == 1.0
    assert (table.loc["oracle"] == 1.0).all()  # the oracle predicts every layer
    runs = pd.read_parquet(results / "prediction_recall" / "runs.parquet")
    assert len(runs) == len(PREDICTORS) and (runs.status == "ok").all()
    for ext in ("png", "pdf"):
        fig = results / "figures" / f"prediction_recall.{ext}"
        assert fig.exists() and fig.stat().st_size > 0
    assert (results / "prediction_recall" / "prediction_recall.md").read_text().count("| oracle |") == 2
    assert p.stdout.rstrip().splitlines()[-1].startswith("oracle")  # the recall table is printed last


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
