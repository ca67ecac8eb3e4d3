"""Routing traces record what the executor ran (and the next layers' routers applied to each layer's
post-attention state); replay maps a trace onto models of other sizes and drives the executor with it."""

from __future__ import annotations

import pytest
import torch

from moelab.core.errors import ConfigError
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.routing.replay import ReplayRouting, map_experts
from moelab.routing.trace import TracingBackend, read_trace
from tests.conftest import make_executor, offloaded_copy, random_prompts, tiny_hf_model

DEC = AutoregressiveDecoding()


def record(tmp_path, arch="qwen3_moe", layers=3, **over):
    om = offloaded_copy(tiny_hf_model(arch, num_hidden_layers=layers, **over))
    ex = make_executor(om, om.spec.top_k * 2)
    batches = [[p] for p in random_prompts(2, 256, lengths=(6, 4))]
    tracer = TracingBackend(ex, om)
    with om.using(tracer):
        DEC.generate(om, batches, 3)
    tracer.close()
    header = {"model": "t", "architecture": arch, "num_layers": layers, "moe_layers": list(om.spec.moe_layers),
              "num_experts": om.spec.num_experts, "top_k": om.spec.top_k, "prompts": [b[0] for b in batches],
              "batch_size": 1, "max_new_tokens": 3}
    return om, ex, tracer.save(tmp_path / "trace.parquet", header)


def test_trace_holds_the_executed_routing(tmp_path):
    om, ex, path = record(tmp_path)
    header, df = read_trace(path)
    assert header["lookahead"] == [1, 2] and header["top_k"] == 2
    # one row per token per MoE layer per step: prefill 6 + 2 decode, prefill 4 + 2 decode, 3 layers
    assert len(df) == (6 + 2 + 4 + 2) * 3
    from_trace = [(s, layer, tuple(sorted({e for t in g.topk for e in t})))
                  for (s, layer), g in df.groupby(["step", "layer"], sort=True)]
    assert from_trace == sorted(ex.counters.routing)
    assert all(len(r) == om.spec.num_experts for r in df.ranking)
    assert all(list(r[:2]) == sorted(t, key=list(r).index) for r, t in zip(df.ranking, df.topk))


def test_recorded_prediction_is_the_next_router_on_this_layers_post_attention_state(tmp_path):
    """pred_d of layer l = ranking of router_{l+d}(norm_{l+d}(layer l's residual after attention)), by hand."""
    model = tiny_hf_model("mixtral", num_hidden_layers=3)
    om = offloaded_copy(model)
    x = torch.tensor([random_prompts(1, 256, lengths=(7,))[0]])
    seen = {}

    def keep(module, args):
        seen.setdefault("h", args[0][0])

    hook = model.model.layers[0].post_attention_layernorm.register_forward_pre_hook(keep)
    model(x)
    hook.remove()
    tracer = TracingBackend(make_executor(om, 16), om)
    with om.using(tracer):
        om.backend.begin_step("prefill", 7)
        om.model(x)
        om.backend.end_step()
    tracer.close()
    rows = [i for i, layer in enumerate(tracer.rows["layer"]) if layer == 0]
    for d in (1, 2):
        nxt = model.model.layers[d]
        manual = nxt.mlp.gate(nxt.post_attention_layernorm(seen["h"]))[0].argsort(-1, descending=True)
        assert [tracer.rows[f"pred_d{d}"][i] for i in rows] == manual.tolist()
    assert all(tracer.rows["pred_d1"][i] == [] for i, layer in enumerate(tracer.rows["layer"]) if layer == 2)


def test_expert_mapping():
    ranking, topk = [5, 1, 7, 0, 2, 3, 4, 6], [5, 1]
    assert map_experts(ranking, topk, 8, 8, 2) == [5, 1]
    assert map_experts(ranking, topk, 8, 8, 3) == [5, 1, 7]
    assert map_experts(ranking, topk, 8, 4, 2) == [1, 3]  # 5 % 4, 1 % 4 (1 repeats), 7 % 4
    more = map_experts(ranking, topk, 8, 64, 4)  # k a multiple of the source's 2: two of each chosen group
    assert more == [5 * 8 + 0, 5 * 8 + 1, 1 * 8 + 2, 1 * 8 + 3]
    assert map_experts([1, 5, 0, 7, 2, 3, 4, 6], [1, 5], 8, 64, 4) == [8, 9, 42, 43]  # ranks swap: other members
    assert map_experts(list(reversed(ranking)), topk, 8, 64, 4) == more  # only the chosen experts matter
    odd = map_experts(ranking, topk, 8, 64, 3)  # not a multiple: ordered pairs over the full ranking
    assert odd == [5 * 8 + 1, 1 * 8 + 7, 7 * 8 + 0] and len(set(odd)) == 3
    with pytest.raises(ConfigError):
        map_experts(ranking, topk, 8, 64, 9)


@pytest.mark.parametrize("experts,layers", [(8, 3), (4, 5), (32, 2)])
def test_replay_drives_another_model(tmp_path, experts, layers):
    _, _, path = record(tmp_path, arch="mixtral", num_local_experts=8)
    replay = ReplayRouting(str(path))
    om = offloaded_copy(tiny_hf_model("mixtral", num_local_experts=experts, num_hidden_layers=layers))
    ex = make_executor(om, om.spec.top_k * 2)
    batches, new_tokens = replay.workload(om.config.vocab_size)
    assert new_tokens == 3 and [len(b[0]) for b in batches] == [6, 4]
    with om.using(replay.wrap(ex, om)):
        DEC.generate(om, batches, new_tokens)
    header, df = read_trace(path)
    backend = replay.wrap(ex, om)
    step0 = df[(df.step == 0) & (df.layer == backend.layer_map[om.spec.moe_layers[-1]])].sort_values("pos")
    expected = {e for r, t in zip(step0.ranking, step0.topk) for e in map_experts(list(r), list(t), 8, experts, 2)}
    ran = [exps for step, layer, exps in ex.counters.routing if step == 0 and layer == om.spec.moe_layers[-1]]
    assert ran == [tuple(sorted(expected))]


def test_replay_refuses_a_mismatched_workload(tmp_path):
    _, _, path = record(tmp_path, arch="mixtral")
    replay = ReplayRouting(str(path))
    om = offloaded_copy(tiny_hf_model("mixtral"))
    with om.using(replay.wrap(make_executor(om, 4), om)), pytest.raises(ConfigError, match="trace step"):
        DEC.generate(om, [[[1, 2, 3]]], 2)


def test_missing_or_invalid_trace(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ReplayRouting(str(tmp_path / "none.parquet"))
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="not a moelab routing trace"):
        ReplayRouting(str(tmp_path / "x.parquet"))
    with pytest.raises(ConfigError, match="routing.trace"):
        ReplayRouting(None)


@pytest.mark.parametrize("layers", [2, 6])
def test_replayed_prediction_targets_the_source_layer_the_target_replays(tmp_path, layers):
    """4 recorded layers replayed into 2 (0, 2 of the source) or 6 (0, 0, 1, 2, 2, 3): the d=1 prediction of a
    replayed layer is the recording's prediction for the source layer its successor replays (pred_d2 when a
    source layer is skipped, the source layer's own ranking when it repeats)."""
    _, _, path = record(tmp_path, arch="mixtral", layers=4, num_local_experts=8)
    replay = ReplayRouting(str(path))
    om = offloaded_copy(tiny_hf_model("mixtral", num_local_experts=8, num_hidden_layers=layers))
    backend = replay.wrap(make_executor(om, 16), om)
    backend.cursor = 0
    header, df = read_trace(path)
    step0 = df[df.step == 0]
    moe = list(om.spec.moe_layers)
    for i, layer in enumerate(moe[:-1]):
        src, nxt = backend.layer_map[layer], backend.layer_map[moe[i + 1]]
        rows = step0[step0.layer == src].sort_values("pos")
        col = f"pred_d{nxt - src}" if nxt > src else "ranking"
        expected = [list(p[:2]) for p in rows[col]]
        assert backend.predicted(layer, 1, 2, "cpu").tolist() == expected
