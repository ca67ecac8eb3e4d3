"""`logger=wandb` with W&B offline: a sweep's runs land in the local table and as offline W&B runs whose config,
per-step history and summary are the run's; no credentials means offline, and W&B trouble never fails a run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import pytest

from tests.test_cli import moelab_warnings, run_cli, runs

wandb = pytest.importorskip("wandb")


def wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file (W&B's leveldb-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += block - pos % block
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def read_offline_run(run_dir: Path) -> dict:
    """config, history (one dict per step) and the final summary of an offline run."""
    config, history, summary = {}, [], {}
    for rec in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            tags = list(rec.run.tags)
            config["_tags"], config["_group"] = tags, rec.run.run_group
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for u in rec.summary.update:
                summary["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
    return {"config": config, "history": history, "summary": summary}


def test_sweep_logs_each_run_to_wandb_offline_without_credentials(tmp_path, monkeypatch):
    for k in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials anywhere: it must go offline itself
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    p = run_cli(tmp_path, "logger=wandb", "logger.tags=[moelab-test]", "experiment_name=wb",
                "budget.fraction=0.25,0.5", multirun=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not moelab_warnings(p.stderr), p.stderr[-3000:]
    df = runs(tmp_path, "wb")  # the local table is written as with logger=local
    assert len(df) == 2 and (df.status == "ok").all()
    run_dirs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 2 and p.stdout.count("wandb: offline run") == 2
    logged = [read_offline_run(d) for d in run_dirs]
    for _, row in df.iterrows():
        run = next(r for r in logged if r["summary"].get("run_id") == row.run_id)
        cfg = run["config"]  # the resolved config, nested as Hydra had it
        assert cfg["budget"]["fraction"] == row["cfg.budget.fraction"] and cfg["model"]["name"] == "tiny-mixtral"
        assert cfg["_tags"] == ["moelab-test"] and cfg["_group"] == "wb"
        steps = pd.read_parquet(tmp_path / "results" / "wb" / row.run_id / "steps.parquet")
        assert len(run["history"]) == len(steps)  # per-step history
        assert [h["wall_ms"] for h in run["history"]] == pytest.approx(steps.wall_ms.tolist())
        assert run["summary"]["tpot_ms"] == pytest.approx(row.tpot_ms)  # summary metrics
        assert run["summary"]["hit_rate"] == pytest.approx(row.hit_rate) and run["summary"]["status"] == "ok"


def test_wandb_failure_is_a_warning_and_the_row_is_written(tmp_path, monkeypatch, capsys):
    from moelab.loggers.wandb_logger import WandbLogger, has_credentials

    def broken(*a, **k):
        raise RuntimeError("no service")

    monkeypatch.setattr(wandb, "init", broken)
    logger = WandbLogger(results_dir=str(tmp_path), mode="offline", console=False)
    logger.log_run({"run_id": "r1", "experiment": "e", "status": "ok", "tpot_ms": 1.0}, None)
    assert pd.read_parquet(tmp_path / "e" / "runs.parquet").run_id.tolist() == ["r1"]
    assert "W&B logging failed" in capsys.readouterr().err

    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password secret\n")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    assert has_credentials()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    assert not has_credentials()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert WandbLogger(results_dir=str(tmp_path), mode="auto").resolved_mode() == "offline"
