"""`python -m moelab.train`: a tiny config trains, saves loadable checkpoints with model cards, and a run
cut short resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from moelab.train.corpus import list_sources, read_split
from moelab.train.data import TokenWindows
from moelab.train.loop import train
from tests.conftest import ROOT, tiny_hf_model


def test_corpus_split_is_by_path_hash_and_capped():
    files = list_sources()
    assert len(files) > 100 and [f.rel for f in files] == sorted(f.rel for f in files)
    val = {f.rel for f in files if f.is_val(50)}
    assert 0 < len(val) < len(files) / 5
    texts = list(read_split(files, True, 50, 100_000))
    assert all(f.rel in val for f, _ in texts)
    assert sum(len(t.encode()) for _, t in texts) < 100_000 + 500_000  # stops at the first file past the cap


def train_cmd(out, *extra):
    return [sys.executable, "-m", "moelab.train", "train=tiny", f"out_dir={out}", "progress=false",
            f"hydra.run.dir={out / 'hydra'}", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Trained in two calls, as the reference models are: the second reuses the first one's tokenizer."""
    out = tmp_path_factory.mktemp("train")
    p = subprocess.run(train_cmd(out, "only=[moe,draft]"), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (out / "summary.json").exists() and not (out / "moe_fine").exists()  # cards wait for moe_fine
    tokenizer = (out / "tokenizer" / "tokenizer.json").read_bytes()
    p = subprocess.run(train_cmd(out, "only=[moe_fine]"), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "moe_fine" / "tokenizer.json").read_bytes() == tokenizer
    return out


def test_tiny_training_run_produces_models_and_cards(trained):
    summary = json.loads((trained / "summary.json").read_text())
    vocab = json.loads((trained / "data" / "meta.json").read_text())["vocab_size"]
    for name in ("moe", "moe_fine", "draft"):
        facts = summary["models"][name]
        assert facts["steps"] == 20
        assert facts["val_loss"] < torch.log(torch.tensor(float(vocab))).item()  # learned something in 20 steps
        card = (trained / name / "README.md").read_text()
        for fact in ("val_loss", "corpus_bytes", "corpus_tokens", "train_wall_s", "draft_acceptance_rate"):
            assert fact in card
        assert (trained / name / "tokenizer.json").exists()
    for target, arch in (("moe", "mixtral"), ("moe_fine", "qwen3_moe")):
        card = (trained / target / "README.md").read_text()
        assert "load entropy" in card and "experts under 1% of tokens" in card
        assert summary["models"][target]["arch"] == arch
        assert 0.0 <= summary["acceptance"][target]["acceptance_rate"] <= 1.0
        assert len(summary["routing"][target]["layers"]) == 2
    assert "draft_acceptance_rate_vs_moe_fine" in (trained / "draft" / "README.md").read_text()


def test_unknown_model_name_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run(train_cmd(tmp_path, "only=[nope]"), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert "nope" in p.stderr and "moe_fine" in p.stderr
    assert not (tmp_path / "data").exists()  # refused before any corpus is read


def test_trained_target_runs_offloaded_and_exact(trained, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=code_moe", f"model.path={trained / 'moe'}",
                        "model.dtype=float32", "workload.max_new_tokens=4", "workload.num_prompts=2", "progress=false",
                        f"results_dir={tmp_path}", "logger.console=false", "device=cpu",
                        f"hydra.run.dir={tmp_path / 'h'}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    import pandas as pd

    row = pd.read_parquet(tmp_path / "default" / "runs.parquet").iloc[0]
    assert row.status == "ok" and row.token_agreement == 1.0 and row.architecture == "mixtral"


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    tokens = tmp_path / "tokens.npy"
    import numpy as np

    np.save(tokens, np.random.default_rng(0).integers(0, 256, 20_000).astype(np.uint16))
    spec = dict(minutes=10.0, max_steps=12, batch_size=2, seq_len=16, lr=1e-3, min_lr_ratio=0.1, warmup_steps=3,
                weight_decay=0.1, grad_clip=1.0, aux_loss_coef=0.02, save_every_s=1000)
    cpu = torch.device("cpu")

    def fresh():
        return tiny_hf_model("mixtral", seed=3).train().requires_grad_(True)

    straight = fresh()
    train(straight, TokenWindows(tokens, 16, 0), spec, tmp_path / "a.pt", cpu, float("inf"), "a", False)
    first = fresh()
    r1 = train(first, TokenWindows(tokens, 16, 0), {**spec, "stop_after_steps": 5}, tmp_path / "b.pt", cpu,
               float("inf"), "b", False)
    assert not r1.finished and r1.steps == 5
    resumed = fresh()
    r2 = train(resumed, TokenWindows(tokens, 16, 0), spec, tmp_path / "b.pt", cpu, float("inf"), "b", False)
    assert r2.finished and r2.steps == 12
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n


def test_dense_training_experts_equal_the_sparse_ones():
    """The training-only all-experts path gives the model's own outputs and gradients."""
    import copy

    from moelab.train import dense_experts
    from tests.conftest import tiny_hf_model

    sparse = tiny_hf_model("mixtral", num_local_experts=8, num_experts_per_tok=2).train().requires_grad_(True)
    dense = copy.deepcopy(sparse)
    dense.set_experts_implementation(dense_experts.NAME)
    x = torch.randint(0, 256, (2, 12))
    outs = [m(x, output_router_logits=True) for m in (sparse, dense)]
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=1e-5, atol=1e-5)
    for o in outs:
        (o.logits.square().mean() + o.aux_loss).backward()
    for (name, a), b in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_balance_loss_is_per_layer():
    """Two layers that starve opposite experts: transformers' loss, which counts load over all layers'
    logits together, sees a balanced model; the per-layer loss does not."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from moelab.train.router_losses import load_balance, z_loss

    tokens, experts = 64, 4
    skew = torch.tensor([4.0, 4.0, -4.0, -4.0])
    layers = (skew.expand(tokens, experts).clone(), (-skew).expand(tokens, experts).clone())
    uniform = (torch.zeros(tokens, experts) + torch.randn(tokens, experts) * 1e-3,) * 2
    hf = load_balancing_loss_func(layers, experts, 2)
    hf_uniform = load_balancing_loss_func(uniform, experts, 2)
    assert abs(hf.item() - hf_uniform.item()) < 0.05 * hf_uniform.item()  # blind to per-layer starvation
    assert load_balance(layers, 2).item() > 1.9 and abs(load_balance(uniform, 2).item() - 1.0) < 0.05
    assert z_loss(layers).item() > z_loss(uniform).item() > 0
