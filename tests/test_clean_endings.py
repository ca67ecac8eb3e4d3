"""Faults end cleanly (issue 31 item 3): Ctrl-C or SIGTERM at any moment of `python run.py` ends it with one line,
and an uncached hub model with no network (and no HF_HUB_OFFLINE) fails in one line within seconds. The full-disk
row and `sweep merge` are in test_faults.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from moelab.core.errors import CheckpointError
from moelab.models import hub
from tests.conftest import ROOT

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


def _no_network_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *hub._PROXY_VARS)}
    return {**env, "HF_ENDPOINT": CLOSED, "HF_HUB_CACHE": str(tmp_path / "hub")}


@pytest.mark.parametrize(("sig", "delay_s"), [(signal.SIGINT, 0.3), (signal.SIGINT, 1.5), (signal.SIGINT, 3.0),
                                             (signal.SIGTERM, 1.5)])
def test_a_signal_during_start_up_ends_the_command_with_one_line(tmp_path, sig, delay_s):
    """Imports and Hydra's composition, before any run: one line, the shell's exit code, no traceback."""
    p = subprocess.Popen([sys.executable, "run.py", "model=tiny", "progress=false", "workload.max_new_tokens=200",
                          f"results_dir={tmp_path}"],  # (long enough that a fast machine is still running at 3 s)
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay_s)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 128 + sig, (out, err)
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM)" if sig == signal.SIGTERM
                                                   else "interrupted"), err
    assert "Traceback" not in err + out


def test_no_network_is_found_out_in_seconds(tmp_path, monkeypatch):
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *hub._PROXY_VARS):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_PROBED", {})
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="cannot be reached") as e:
        hub.locate("someorg/not-cached")
    assert time.perf_counter() - t0 < hub.PROBE_TIMEOUT_S + 1
    assert "\n" not in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    assert hub._PROBED == {CLOSED: False}  # probed once; later calls use the answer


def test_an_uncached_hub_model_with_no_network_fails_in_one_line_within_seconds(tmp_path):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "run.py", "model=hf", "model.path=someorg/not-cached",
                        f"results_dir={tmp_path / 'results'}"], cwd=ROOT, capture_output=True, text=True,
                       env=_no_network_env(tmp_path), timeout=120)
    elapsed = time.perf_counter() - t0  # start-up included (imports: ~4 s on 2 cores); retries took ~30 s
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("error: someorg/not-cached is neither a local directory nor in the Hugging Face cache")
    assert "cannot be reached" in lines[0] and "Retrying" not in p.stdout + p.stderr
    assert elapsed < 20, elapsed
