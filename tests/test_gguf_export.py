"""moelab.export.gguf: a written file reads back with gguf's reader with llama.cpp's names, shapes, types and moelab's
values (tiny random models of the three architectures, and the trained code_moe with its own tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from moelab.export import gguf as export  # noqa: E402
from moelab.models.build import materialize, plan_model  # noqa: E402

TINY = {
    "mixtral": {"name": "tiny-mixtral", "arch": "mixtral", "random_init": True, "tiny": True, "dtype": "float32",
                "seed": 3, "config": {"vocab_size": 300}},
    "qwen3_moe": {"name": "tiny-qwen3", "arch": "qwen3_moe", "random_init": True, "tiny": True, "dtype": "float32",
                  "seed": 4, "config": {"vocab_size": 300}},
    "olmoe": {"name": "tiny-olmoe", "arch": "olmoe", "random_init": True, "tiny": True, "dtype": "float32",
              "seed": 5, "config": {"vocab_size": 300}},
}


def _write(cfg, path, outtype="f16"):
    plan = plan_model(cfg, torch.device("cpu"))
    om = materialize(plan, torch.device("cpu"))
    export.export(cfg, path, outtype=outtype, device="cpu", progress=False, built=(plan, om))
    return om, gguf.GGUFReader(path)


def _tensor(reader, name):
    t = next(t for t in reader.tensors if t.name == name)
    shape = tuple(int(x) for x in reversed(t.shape))  # numpy order
    data = np.asarray(t.data)
    if t.tensor_type == gguf.GGMLQuantizationType.BF16:
        data = torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    return t, shape, data.reshape(shape).astype(np.float32)


def _field(reader, key):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return str(bytes(f.parts[-1]), "utf-8")
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return len(f.data)
    return f.parts[-1][0].item()


def _param(om, name):
    return dict(om.model.named_parameters(remove_duplicate=False))[name].detach().float()


@pytest.mark.parametrize("arch", list(TINY))
def test_tiny_models_read_back(arch, tmp_path):
    cfg = TINY[arch]
    om, r = _write(cfg, tmp_path / f"{arch}.gguf")
    conf = om.model.config
    garch = export.ARCHES[arch]
    assert _field(r, "general.architecture") == garch
    L, E = conf.num_hidden_layers, om.spec.num_experts
    assert _field(r, f"{garch}.block_count") == L
    assert _field(r, f"{garch}.expert_count") == E
    assert _field(r, f"{garch}.expert_used_count") == om.spec.top_k
    assert _field(r, "tokenizer.ggml.tokens") == conf.vocab_size == 300
    assert "placeholder" in _field(r, "moelab.vocab")
    names = {t.name for t in r.tensors}
    per_layer = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate_inp",
                 "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}
    if arch != "mixtral":
        per_layer |= {"attn_q_norm", "attn_k_norm"}
    want = {"token_embd.weight", "output_norm.weight", "output.weight"}
    want |= {f"blk.{i}.{n}.weight" for i in range(L) for n in per_layer}
    assert names == want

    store = om.store.layer_tensors(1)
    inter = store["down_proj"].shape[2]
    t, shape, gate = _tensor(r, "blk.1.ffn_gate_exps.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.F16 and shape == (E, inter, conf.hidden_size)
    np.testing.assert_array_equal(gate, store["gate_up_proj"][:, :inter].half().float().numpy())
    _, _, up = _tensor(r, "blk.1.ffn_up_exps.weight")
    np.testing.assert_array_equal(up, store["gate_up_proj"][:, inter:].half().float().numpy())
    _, shape, down = _tensor(r, "blk.1.ffn_down_exps.weight")
    assert shape == (E, conf.hidden_size, inter)
    np.testing.assert_array_equal(down, store["down_proj"].half().float().numpy())
    t, _, router = _tensor(r, "blk.0.ffn_gate_inp.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(router, _param(om, "model.layers.0.mlp.gate.weight").numpy())
    t, _, norm = _tensor(r, "blk.0.attn_norm.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(norm, _param(om, "model.layers.0.input_layernorm.weight").numpy())
    _, _, emb = _tensor(r, "token_embd.weight")
    np.testing.assert_array_equal(emb, _param(om, "model.embed_tokens.weight").half().float().numpy())
    _, _, head = _tensor(r, "output.weight")
    np.testing.assert_array_equal(head, _param(om, "lm_head.weight").half().float().numpy())
    q = _param(om, "model.layers.0.self_attn.q_proj.weight")
    if arch == "mixtral":  # llama.cpp's `llama` rotates interleaved pairs: rows permuted per head
        q = export._permute(q, conf.num_attention_heads)
    np.testing.assert_array_equal(_tensor(r, "blk.0.attn_q.weight")[2], q.half().float().numpy())


def test_trained_model_keeps_its_tokenizer_and_weights(tmp_path):
    cfg = export.model_config("code_moe")
    om, r = _write(cfg, tmp_path / "code_moe.gguf", outtype="bf16")
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(r, "tokenizer.ggml.tokens") == 8192
    assert _field(r, "tokenizer.ggml.merges") > 7000
    assert _field(r, "tokenizer.ggml.eos_token_id") == 0
    assert "tokenizer.json" in _field(r, "moelab.vocab")
    tokens = r.fields["tokenizer.ggml.tokens"]
    first = [str(bytes(tokens.parts[i]), "utf-8") for i in tokens.data[:3]]
    assert first == ["<|endoftext|>", "<|pad|>", "!"]
    t, shape, down = _tensor(r, "blk.7.ffn_down_exps.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.BF16 and shape == (16, 256, 224)
    # the checkpoint is bf16: the file holds exactly the weights moelab runs
    np.testing.assert_array_equal(down, om.store.layer_tensors(7)["down_proj"].float().numpy())


def test_llama_cpp_loads_the_file(tmp_path):
    """With a CPU build of llama.cpp (`python benchmarks/llama_cpp.py build --cpu`, ~7 min on 2 cores), llama-bench
    loads a written file and runs it with some experts on the CPU; skipped without the build."""
    import subprocess
    from pathlib import Path

    exe = Path(export.ROOT) / "build" / "llama.cpp-cpu" / "bin" / "llama-bench"
    if not exe.exists():
        pytest.skip("no CPU build of llama.cpp in build/llama.cpp-cpu")
    path = tmp_path / "tiny.gguf"
    _write(TINY["qwen3_moe"], path)
    p = subprocess.run([str(exe), "-m", str(path), "-p", "4", "-n", "2", "-r", "1", "-t", "1", "--n-cpu-moe", "1",
                        "-o", "json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    rows = json.loads(p.stdout[p.stdout.index("["):])
    assert {r["n_gen"] for r in rows} == {0, 2} and all(r["avg_ts"] > 0 for r in rows)
    assert rows[0]["model_type"].startswith("qwen3moe")
