"""Models by hub id, without a network: a Hugging Face cache laid out as huggingface_hub writes it
(`models--org--name/{blobs,refs,snapshots}`) in a temporary folder, resolved offline, loaded exactly; one-line
errors for a model that is not cached, gated or private (from a loopback hub), quantized releases; the
host-memory check from safetensors headers alone; the choice of speculative decoding's draft."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from moelab.core.errors import CheckpointError, ConfigError
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.decoding.speculative import SpeculativeDecoding
from moelab.models.build import materialize, plan_model
from moelab.models.drafts import choose_draft
from moelab.models.hub import DOWNLOAD_FILTER, TOKENIZER_FILTER, looks_like_hub_id
from moelab.offload.budget import Budget
from tests.conftest import ROOT, make_executor, random_prompts, tiny_hf_model
from tests.test_cli import run_cli

CPU = torch.device("cpu")
REV = "0123456789abcdef0123456789abcdef01234567"
PRESETS = ("mixtral", "qwen3_moe", "qwen2_moe", "olmoe", "deepseek_v2_lite", "deepseek_v3", "gpt_oss", "phimoe")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty HF cache that this test's process reads, offline."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def cache_model(cache: Path, repo_id: str, model: torch.nn.Module, rev: str = REV, **save_kw) -> Path:
    """Save `model` into `cache` as huggingface_hub stores a download: content-addressed blobs, the snapshot's
    files as relative symlinks to them, and refs/main naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    staging = repo / "staging"
    model.save_pretrained(staging, **save_kw)
    snap = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(staging.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        f.rename(repo / "blobs" / digest)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    staging.rmdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    return snap


def test_hub_id_is_resolved_from_the_cache_offline_and_loads_exactly(hub):
    model = tiny_hf_model("qwen3_moe")
    snap = cache_model(hub, "org/tiny-moe", model, max_shard_size="40KB")
    assert len(list(snap.glob("*.safetensors"))) > 1 and (snap / "config.json").is_symlink()
    plan = plan_model({"path": "org/tiny-moe", "dtype": "float32"}, CPU)
    assert plan.source.dir == snap and plan.source.repo_id == "org/tiny-moe" and plan.source.commit == REV
    om = materialize(plan, CPU)  # experts read from the cached blobs straight into the store
    assert plan.checkpoint_expert_bytes == om.store.total_bytes
    x = torch.tensor([random_prompts(1, model.config.vocab_size)[0]])
    assert torch.equal(model(x).logits, om.model(x).logits)
    random = plan_model({"path": "org/tiny-moe", "random_init": True, "dtype": "float32"}, CPU)
    assert random.source is None and random.spec == plan.spec  # random weights at the cached config's shapes
    pinned = plan_model({"path": "org/tiny-moe", "revision": REV, "dtype": "float32"}, CPU)
    assert pinned.source.dir == snap
    with pytest.raises(CheckpointError) as e:
        plan_model({"path": "org/tiny-moe", "revision": "v2"}, CPU)
    assert "org/tiny-moe@v2" in str(e.value) and "\n" not in str(e.value)


def test_only_safetensors_configs_and_tokenizers_are_downloaded():
    """The filter handed to snapshot_download, applied by huggingface_hub's own matcher to a release's files."""
    from huggingface_hub.utils import filter_repo_objects

    release = ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "pytorch_model.bin",
               "consolidated.00.pt", "original/model.safetensors", "metal/model.bin", "README.md", ".gitattributes"]
    kept = set(filter_repo_objects(release, **DOWNLOAD_FILTER))
    assert kept == set(release[:9])
    # before any weight is read, a workload that filters prompts by token length fetches the tokenizer alone
    assert set(filter_repo_objects(release, **TOKENIZER_FILTER)) == {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "tokenizer.model"}


def test_a_model_not_cached_offline_fails_in_one_line_at_once(hub):
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        plan_model({"path": "nobody/missing-moe"}, CPU)
    msg = str(e.value)
    assert time.perf_counter() - t0 < 5
    assert "\n" not in msg
    for text in ("nobody/missing-moe", "HF_HUB_OFFLINE", str(hub), "model.random_init=true", "hf download"):
        assert text in msg, (text, msg)
    snap = cache_model(hub, "org/config-only", tiny_hf_model("olmoe"))
    for f in snap.glob("*.safetensors"):
        f.unlink()  # an interrupted download: config.json cached, weights not
    with pytest.raises(CheckpointError, match="org/config-only: its config.json is in the Hugging Face cache but not"):
        plan_model({"path": "org/config-only"}, CPU)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_name_the_released_checkpoint(name, hub):
    """Offline with an empty cache, a preset looks up its hub id (and says so); with random_init=true it builds
    at its shapes without looking anything up."""
    preset = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    assert looks_like_hub_id(preset["path"]) and not preset["random_init"]
    with pytest.raises(CheckpointError, match=preset["path"]):
        plan_model(preset, CPU)
    plan = plan_model({**preset, "random_init": True, "num_layers": 4}, CPU)
    shapes = preset["shapes"]
    experts = shapes.get("num_local_experts") or shapes.get("num_experts") or shapes.get("n_routed_experts")
    assert plan.source is None and plan.spec.num_experts == experts


def test_cli_exits_2_with_one_line_for_a_preset_that_is_not_cached(tmp_path):
    t0 = time.perf_counter()
    p = run_cli(tmp_path, "model=qwen3_moe", f"+hydra.job.env_set.HF_HUB_CACHE={tmp_path / 'empty'}",
                "+hydra.job.env_set.HF_HUB_OFFLINE=1")
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Qwen/Qwen3-30B-A3B" in lines[0] and "Traceback" not in p.stderr
    assert time.perf_counter() - t0 < 60  # interpreter start-up; no retries


class _Hub(http.server.BaseHTTPRequestHandler):
    """A loopback hub that refuses every file as the real one refuses a gated or a private repo."""

    def _refuse(self) -> None:
        gated = "/gated/" in self.path
        self.send_response(401 if not gated else 403)
        self.send_header("X-Error-Code", "GatedRepo" if gated else "RepoNotFound")
        self.send_header("X-Error-Message", "Access to this model is restricted" if gated else "Repository not found")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _refuse

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def loopback_hub(hub, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    yield
    server.shutdown()


@pytest.mark.parametrize("repo,expected", [("org/gated", ["org/gated", "gated", "accept its terms", "HF_TOKEN"]),
                                           ("org/private", ["org/private", "private", "hf auth login"])])
def test_gated_and_private_models_fail_in_one_line(repo, expected, loopback_hub):
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        plan_model({"path": repo}, CPU)
    assert time.perf_counter() - t0 < 10
    assert "\n" not in str(e.value)
    for text in expected:
        assert text in str(e.value), (text, str(e.value))


@pytest.mark.parametrize("method", ["mxfp4", "fp8"])
def test_released_quantized_checkpoints_are_refused_in_one_line(method, hub):
    snap = cache_model(hub, f"org/{method}-moe", tiny_hf_model("gpt_oss"))
    raw = json.loads((snap / "config.json").read_text())
    (snap / "config.json").unlink()
    (snap / "config.json").write_text(json.dumps({**raw, "quantization_config": {"quant_method": method}}))
    with pytest.raises(CheckpointError) as e:
        plan_model({"path": f"org/{method}-moe"}, CPU)
    assert f"quant_method={method}" in str(e.value) and "model.random_init=true" in str(e.value)


def test_host_memory_check_reads_only_the_safetensors_headers(hub, monkeypatch):
    """The weights' bytes after each header are cut off: planning and the memory check still work (so neither
    reads a weight), and a host too small for the experts gets a model.num_layers that fits."""
    from moelab import assembly

    snap = cache_model(hub, "org/headers-only", tiny_hf_model("mixtral", num_hidden_layers=4))
    for link in snap.glob("*.safetensors"):
        blob = link.resolve()
        data = blob.read_bytes()
        blob.write_bytes(data[: 8 + int.from_bytes(data[:8], "little")])
    plan = plan_model({"path": "org/headers-only", "dtype": "float32"}, CPU)
    per_layer = plan.spec.num_experts * plan.spec.expert_bytes
    assert plan.checkpoint_expert_bytes == plan.total_expert_bytes == 4 * per_layer
    monkeypatch.setattr(assembly, "host_available_bytes", lambda: int(2.5 * per_layer))
    with pytest.raises(ConfigError, match=r"model.num_layers <= 1"):
        assembly.check_host_memory(plan, Budget(2, "2"), CPU, loaded=False)
    half = plan_model({"path": "org/headers-only", "dtype": "float32", "num_layers": 2}, CPU)
    assert half.checkpoint_expert_bytes == 2 * per_layer
    assembly.check_host_memory(half, Budget(2, "2"), CPU, loaded=False)
    with pytest.raises(CheckpointError, match="corrupted"):
        materialize(half, CPU)  # the weights themselves are gone


def _tiny_draft(vocab: int) -> torch.nn.Module:
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=vocab)
    torch.manual_seed(3)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def test_a_real_target_drafts_with_its_default_draft_from_the_cache(hub):
    target = tiny_hf_model("mixtral", num_hidden_layers=2)
    cache_model(hub, "org/tiny-moe", target)
    cache_model(hub, "org/tiny-draft", _tiny_draft(target.config.vocab_size))
    model = {"path": "org/tiny-moe", "dtype": "float32", "draft": "org/tiny-draft"}
    cfg = choose_draft({"model": model, "decoding": {"name": "speculative", "draft": {"path": None}}})
    assert cfg["decoding"]["draft"]["path"] == "org/tiny-draft"
    om = materialize(plan_model(model, CPU), CPU)
    batches = [[p] for p in random_prompts(1, target.config.vocab_size)]
    sd = SpeculativeDecoding(gamma=3, draft=cfg["decoding"]["draft"])
    with om.using(make_executor(om, 4)):
        spec = sd.generate(om, batches, 5)
        ar = AutoregressiveDecoding().generate(om, batches, 5)
    assert spec.new_tokens == ar.new_tokens
    assert type(sd.draft.model).__name__ == "LlamaForCausalLM"


def test_draft_choice_refuses_a_real_target_without_one_and_notes_a_random_draft(hub, capsys):
    cache_model(hub, "org/tiny-moe", tiny_hf_model("mixtral", num_hidden_layers=1))
    spec = {"name": "speculative", "draft": {"path": None, "arch": "llama"}}
    with pytest.raises(ConfigError, match=r"decoding.draft.path=<hub id or local directory>"):
        choose_draft({"model": {"name": "tiny-moe", "path": "org/tiny-moe"}, "decoding": spec})
    with pytest.raises(CheckpointError, match="nobody/draft"):  # an explicit draft that is not cached, at once
        choose_draft({"model": {"path": "org/tiny-moe"}, "decoding": {**spec, "draft": {"path": "nobody/draft"}}})
    cache_model(hub, "org/other-tokenizer", _tiny_draft(77))
    with pytest.raises(ConfigError, match="vocabulary of 77 tokens"):
        choose_draft({"model": {"path": "org/tiny-moe"},
                      "decoding": {**spec, "draft": {"path": "org/other-tokenizer"}}})
    random_target = {"path": "org/real", "random_init": True, "arch": "mixtral", "draft": "org/real-draft"}
    assert choose_draft({"model": random_target, "decoding": spec})["decoding"]["draft"]["path"] is None
    assert "note: decoding=speculative on a random-weight target" in capsys.readouterr().err
    auto = {"model": {"path": "org/tiny-moe"}, "decoding": {"name": "autoregressive"}}
    assert choose_draft(auto) == auto
