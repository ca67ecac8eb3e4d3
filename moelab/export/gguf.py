"""moelab's weights as a GGUF file for llama.cpp (F16 or BF16), written tensor by tensor with gguf-py's writer.

    python -m moelab.export.gguf --model code_moe --out /tmp/code_moe.gguf                # trained, Mixtral classes
    python -m moelab.export.gguf --model code_moe_fine --outtype bf16 --out /tmp/fine.gguf # trained, Qwen3-MoE
    python -m moelab.export.gguf --model qwen3_moe --num-layers 24 --out /tmp/q.gguf       # random, preset shapes
    python -m moelab.export.gguf --model olmoe --out /tmp/o.gguf                           # 16 layers, random
    python -m moelab.export.gguf --model tiny --set config.vocab_size=512 --out /tmp/t.gguf

The model is built by moelab itself (`moelab.models.build.plan_model` / `materialize`, experts in the
`ExpertStore`), so the file holds the weights a moelab run with the same model config holds: a checkpoint's, or
the random ones of `random_init` (drawn on the GPU when there is one, as moelab's GPU runs draw them; on the CPU
otherwise; a preset given by name defaults to `random_init` at its shapes). Nothing is held twice: the header and
tensor table are written first (sizes are known from the config), then each tensor is converted and appended, one
at a time (the largest, one layer's experts of one projection, e.g. 0.8 GB for Qwen3-30B-A3B).

What llama.cpp gets (names and keys from gguf-py's constants, as llama.cpp's convert_hf_to_gguf.py writes them):

| moelab `arch` | GGUF architecture | notes |
|---|---|---|
| mixtral | `llama` (+ `llama.expert_count`) | q/k rows permuted to llama.cpp's rotary layout (`LlamaModel.permute`) |
| qwen3_moe | `qwen3moe` | `expert_feed_forward_length` = moe_intermediate_size; per-head q/k norms; top-k renormed |
| olmoe | `olmoe` | full-width q/k norms (needs as many kv heads as heads); top-k not renormalised |

Experts are the merged 3-D tensors `blk.N.ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps` (numpy shapes [E, I, H],
[E, I, H], [E, H, I]: the store's `gate_up_proj` split in its two halves, and `down_proj`); the router
`ffn_gate_inp`, norms and 1-D tensors are F32, everything else `--outtype`. `output.weight` is always written (tied
embeddings: a copy of `token_embd.weight`; OLMoE's loader requires it).

Vocabulary (`moelab.vocab` in the file says which): a checkpoint whose tokenizer.json is a byte-level BPE (the
trained v1 models: 8192 tokens, GPT-2 pre-tokenizer) is written as llama.cpp's `gpt2` tokenizer with its merges, so
llama.cpp tokenizes prompts as moelab does (no BOS added, as the HF tokenizer adds none). Anything else (random
weights, other tokenizers) gets a placeholder of the model's vocabulary size: the 256 byte-level symbols, one merge
and filler tokens `<moelab_placeholder_N>`, enough for llama.cpp to load and benchmark the model (its speed does not
depend on the vocabulary), not to read text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFS = ROOT / "conf" / "model"

# moelab arch (HF model_type) -> GGUF architecture name
ARCHES = {"mixtral": "llama", "qwen3_moe": "qwen3moe", "olmoe": "olmoe"}
OUTTYPES = ("f16", "bf16")

# non-expert HF parameter names -> GGUF tensor names ({i}: the decoder layer)
_NAMES: tuple[tuple[str, str], ...] = (
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "blk.{i}.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", "blk.{i}.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", "blk.{i}.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", "blk.{i}.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", "blk.{i}.attn_output.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_norm\.weight", "blk.{i}.attn_q_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_norm\.weight", "blk.{i}.attn_k_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "blk.{i}.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate\.weight", "blk.{i}.ffn_gate_inp.weight"),
)
# expert tensors: GGUF name -> (store tensor, which half of its rows: 0 first, 1 second, None all)
_EXPERTS = {
    "blk.{i}.ffn_gate_exps.weight": ("gate_up_proj", 0),
    "blk.{i}.ffn_up_exps.weight": ("gate_up_proj", 1),
    "blk.{i}.ffn_down_exps.weight": ("down_proj", None),
}


def log(msg: str) -> None:
    print(f"[gguf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ model config
def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for k in path:
        cfg = cfg.setdefault(k, {})
    cfg[last] = value


def model_config(model: str, random_init: bool | None = None, num_layers: int | None = None,
                 overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A `model` config as moelab's Hydra group holds it: a conf/model preset by name, or a checkpoint directory.

    `overrides` are `key=value` (dotted keys into the config, YAML values), like `model.<key>=<value>` on run.py.
    """
    import yaml

    preset = MODEL_CONFS / f"{model}.yaml"
    if preset.exists():
        cfg = yaml.safe_load(preset.read_text())
    else:
        cfg = {"name": Path(model).name, "arch": None, "path": model, "random_init": False, "num_layers": None,
               "dtype": "auto", "seed": 0, "tiny": False, "config": {}}
    cfg.setdefault("config", {})
    if random_init is not None:
        cfg["random_init"] = bool(random_init)
    if num_layers is not None:
        cfg["num_layers"] = int(num_layers)
    for kv in overrides:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set {kv!r}: expected KEY=VALUE")
        _set(cfg, key.removeprefix("model."), yaml.safe_load(value))
    return cfg


def needs_random_init(model: str) -> bool | None:
    """A preset with `shapes` (a released model's sizes) is exported at random weights unless asked otherwise."""
    preset = MODEL_CONFS / f"{model}.yaml"
    if not preset.exists():
        return None
    import yaml

    cfg = yaml.safe_load(preset.read_text())
    return True if cfg.get("shapes") else None


def default_name(cfg: Mapping[str, Any], outtype: str) -> str:
    layers = f"-{cfg['num_layers']}L" if cfg.get("num_layers") else ""
    rand = "-random" if cfg.get("random_init") else ""
    conf = json.dumps(cfg.get("config") or {}, sort_keys=True, default=str)  # overrides: a short digest
    extra = "-" + hashlib.sha1(conf.encode()).hexdigest()[:8] if cfg.get("config") else ""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{cfg.get('name', 'model')}{rand}{layers}{extra}-{outtype}.gguf")


# ------------------------------------------------------------------------------------------------ tensor plan
@dataclass
class Tensor:
    """One GGUF tensor: its name, numpy-order shape, GGML type, and how to fetch it (as a torch tensor)."""

    name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    fetch: Callable[[Any], torch.Tensor]  # (OffloadedModel) -> tensor in `shape`, any dtype, any device
    layer: int | None = None

    @property
    def nbytes(self) -> int:
        import gguf

        n = int(np.prod(self.shape))
        return n * (4 if self.qtype == gguf.GGMLQuantizationType.F32 else 2)


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half q/k rows to llama.cpp's interleaved rotary pairs (arch `llama` only)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _param(hf_name: str, permute_heads: int | None = None) -> Callable[[Any], torch.Tensor]:
    def fetch(om: Any) -> torch.Tensor:
        t = dict(om.model.named_parameters(remove_duplicate=False))[hf_name].detach()
        return _permute(t, permute_heads) if permute_heads else t

    return fetch


def _expert(layer: int, tensor: str, half: int | None) -> Callable[[Any], torch.Tensor]:
    def fetch(om: Any) -> torch.Tensor:
        t = om.store.layer_tensors(layer)[tensor]
        if half is None:
            return t
        rows = t.shape[1] // 2
        return t[:, rows * half: rows * (half + 1)]

    return fetch


def hparams(plan: Any) -> dict[str, Any]:
    """The numbers llama.cpp reads, from the HF config of a `ModelPlan` (checked against what llama.cpp computes)."""
    config = plan.skeleton.config
    arch = config.model_type
    if arch not in ARCHES:
        raise SystemExit(f"architecture {arch!r}: GGUF export supports {', '.join(ARCHES)}")
    n_layers = len(plan.adapter.decoder_layers(plan.skeleton))
    if len(plan.spec.moe_layers) != n_layers:
        raise SystemExit(f"{arch}: every decoder layer must be an MoE layer for this exporter "
                         f"({len(plan.spec.moe_layers)} of {n_layers} are)")
    heads, kv = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"rope_type {rope['rope_type']!r}: only default RoPE is exported")
    names = [t.name for t in plan.layout.tensors]
    if sorted(names) != ["down_proj", "gate_up_proj"]:
        raise SystemExit(f"expert tensors {names}: expected gate_up_proj and down_proj (no biases)")
    shapes = {t.name: t.shape for t in plan.layout.tensors}
    inter = shapes["down_proj"][1]
    if shapes["gate_up_proj"] != (2 * inter, int(config.hidden_size)):
        raise SystemExit(f"gate_up_proj {shapes['gate_up_proj']}: expected (2 x {inter}, hidden)")
    norm_topk = bool(getattr(config, "norm_topk_prob", arch == "mixtral"))
    if arch == "qwen3_moe" and not norm_topk:
        raise SystemExit("qwen3moe in llama.cpp renormalises the top-k weights: norm_topk_prob=false differs")
    if arch == "olmoe":
        if norm_topk:
            raise SystemExit("olmoe in llama.cpp does not renormalise the top-k weights: norm_topk_prob=true differs")
        if kv != heads:
            raise SystemExit("olmoe in llama.cpp has full-width k norms: needs num_key_value_heads == heads")
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        log(f"warning: sliding_window={config.sliding_window} is not exported (llama.cpp attends to everything)")
    return {
        "arch": arch, "gguf_arch": ARCHES[arch], "n_layers": n_layers, "hidden": int(config.hidden_size),
        "heads": heads, "kv_heads": kv, "head_dim": head_dim, "rope_theta": float(theta or 10000.0),
        "rms_eps": float(config.rms_norm_eps), "n_ctx": int(config.max_position_embeddings),
        "experts": plan.spec.num_experts, "top_k": plan.spec.top_k, "expert_ff": inter,
        "ff": int(getattr(config, "intermediate_size", inter)), "vocab": int(config.vocab_size),
        "norm_topk": norm_topk, "clip_qkv": getattr(config, "clip_qkv", None),
        "tied": bool(getattr(config, "tie_word_embeddings", False)),
    }


def tensor_plan(plan: Any, outtype: str) -> list[Tensor]:
    """Every tensor of the file, in file order (from the meta skeleton: no weights are read)."""
    import gguf

    hp = hparams(plan)
    wtype = gguf.GGMLQuantizationType.F16 if outtype == "f16" else gguf.GGMLQuantizationType.BF16
    f32 = gguf.GGMLQuantizationType.F32
    out: list[Tensor] = []
    seen = set()
    for hf_name, p in plan.skeleton.named_parameters(remove_duplicate=False):
        if ".mlp.experts." in hf_name:
            continue
        hit = next(((m, g) for pat, g in _NAMES if (m := re.fullmatch(pat, hf_name))), None)
        if hit is None:
            raise SystemExit(f"{hf_name} {tuple(p.shape)}: no GGUF name for this parameter")
        m, gname = hit
        layer = int(m.group(1)) if m.groups() else None
        name = gname.format(i=layer)
        permute = None
        if hp["gguf_arch"] == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            permute = hp["heads"] if name.endswith("attn_q.weight") else hp["kv_heads"]
        qtype = f32 if p.dim() <= 1 or name.endswith(("_norm.weight", "ffn_gate_inp.weight")) else wtype
        out.append(Tensor(name, tuple(p.shape), qtype, _param(hf_name, permute), layer))
        seen.add(name)
    if "output.weight" not in seen:  # a tied head that the module does not list: write the embedding again
        emb = next(t for t in out if t.name == "token_embd.weight")
        out.append(Tensor("output.weight", emb.shape, emb.qtype, emb.fetch))
    E, inter, hidden = hp["experts"], hp["expert_ff"], hp["hidden"]
    for layer in plan.spec.moe_layers:
        for gname, (tensor, half) in _EXPERTS.items():
            shape = (E, hidden, inter) if half is None else (E, inter, hidden)
            out.append(Tensor(gname.format(i=layer), shape, wtype, _expert(layer, tensor, half), layer))

    def order(t: Tensor) -> tuple[int, int]:
        if t.layer is None:
            return (-1 if t.name == "token_embd.weight" else 1 << 30, 0)
        return (t.layer, 0)

    return sorted(out, key=order)  # stable: within a layer, attention first, then the experts


def planned_bytes(cfg: Mapping[str, Any], outtype: str = "f16") -> int:
    """The tensor data's size (the file is a few MB more: header, vocabulary, alignment)."""
    from moelab.models.build import plan_model

    return sum(t.nbytes for t in tensor_plan(plan_model(cfg), outtype))


def to_numpy(t: torch.Tensor, qtype: Any) -> np.ndarray:
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return t.to(torch.float32).contiguous().cpu().numpy()
    if qtype == gguf.GGMLQuantizationType.F16:
        return t.to(torch.float16).contiguous().cpu().numpy()
    return t.to(torch.bfloat16).contiguous().cpu().view(torch.uint16).numpy()


# ------------------------------------------------------------------------------------------------ vocabulary
def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet: byte b -> one printable character (the order of tokenizers' ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def checkpoint_vocab(path: Path | None, vocab_size: int) -> dict[str, Any] | None:
    """The tokenizer of a checkpoint as llama.cpp's `gpt2` tokenizer, if it is a plain byte-level BPE; else None."""
    if path is None or not (path / "tokenizer.json").exists():
        return None
    tj = json.loads((path / "tokenizer.json").read_text())
    model, pre = tj.get("model") or {}, tj.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or tj.get("normalizer") is not None:
        return None
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        return None
    if (tj.get("decoder") or {}).get("type") != "ByteLevel" or model.get("byte_fallback"):
        return None
    by_id: dict[int, str] = {i: s for s, i in model["vocab"].items()}
    types = {i: 1 for i in by_id}  # NORMAL
    for a in tj.get("added_tokens", []):
        by_id[a["id"]] = a["content"]
        types[a["id"]] = 3 if a.get("special") else 4  # CONTROL / USER_DEFINED
    n = max(by_id) + 1
    if n > vocab_size or sorted(by_id) != list(range(n)):
        return None
    tokens = [by_id[i] for i in range(n)] + [f"[PAD{i}]" for i in range(n, vocab_size)]
    ttypes = [types[i] for i in range(n)] + [5] * (vocab_size - n)  # UNUSED padding up to the embedding rows
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tc = json.loads((path / "tokenizer_config.json").read_text()) if (path / "tokenizer_config.json").exists() else {}
    ids = {s: i for i, s in enumerate(tokens)}
    special = {k: ids.get(tc.get(f"{k}_token")) for k in ("bos", "eos", "pad", "unk")}
    return {"model": "gpt2", "pre": "gpt-2", "tokens": tokens, "types": ttypes, "merges": merges,
            "special": special, "add_bos": False,
            "note": f"the checkpoint's tokenizer ({path.name}/tokenizer.json: byte-level BPE, {n} tokens, "
                    f"{len(merges)} merges, GPT-2 pre-tokenizer)"}


def placeholder_vocab(vocab_size: int, reason: str) -> dict[str, Any]:
    if vocab_size < 257:
        raise SystemExit(f"vocab_size {vocab_size}: the placeholder vocabulary needs at least 257 tokens")
    alphabet = _bytes_to_unicode()
    tokens = alphabet + ["ĠĠ"] + [f"<moelab_placeholder_{i}>" for i in range(257, vocab_size)]
    return {"model": "gpt2", "pre": "default", "tokens": tokens, "types": [1] * vocab_size, "merges": ["Ġ Ġ"],
            "special": {"bos": 0, "eos": 0, "pad": None, "unk": None}, "add_bos": False,
            "note": f"placeholder ({reason}): the 256 byte-level symbols, one merge and "
                    f"{vocab_size - 257} filler tokens; loads and benchmarks, does not read text"}


# ------------------------------------------------------------------------------------------------ writing
def write_metadata(w: Any, hp: Mapping[str, Any], vocab: Mapping[str, Any], cfg: Mapping[str, Any],
                   outtype: str) -> None:
    import gguf

    w.add_name(str(cfg.get("name", hp["arch"])))
    kind = f"random weights, seed {cfg.get('seed', 0)}" if cfg.get("random_init") else "weights"
    w.add_description(f"moelab export of {cfg.get('path') or cfg.get('name')} ({kind})")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.MOSTLY_BF16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["hidden"])
    w.add_block_count(hp["n_layers"])
    w.add_feed_forward_length(hp["expert_ff"] if hp["gguf_arch"] != "qwen3moe" else hp["ff"])
    if hp["gguf_arch"] == "qwen3moe":
        w.add_expert_feed_forward_length(hp["expert_ff"])
    w.add_head_count(hp["heads"])
    w.add_head_count_kv(hp["kv_heads"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    w.add_expert_count(hp["experts"])
    w.add_expert_used_count(hp["top_k"])
    w.add_expert_weights_norm(hp["norm_topk"])
    if hp["clip_qkv"]:
        w.add_clamp_kqv(float(hp["clip_qkv"]))
    w.add_vocab_size(hp["vocab"])
    w.add_tokenizer_model(vocab["model"])
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    sp = vocab["special"]
    if sp.get("bos") is not None:
        w.add_bos_token_id(sp["bos"])
    if sp.get("eos") is not None:
        w.add_eos_token_id(sp["eos"])
    if sp.get("pad") is not None:
        w.add_pad_token_id(sp["pad"])
    if sp.get("unk") is not None:
        w.add_unk_token_id(sp["unk"])
    w.add_add_bos_token(bool(vocab["add_bos"]))
    w.add_add_eos_token(False)
    w.add_string("moelab.vocab", vocab["note"])
    w.add_string("moelab.source", str(cfg.get("path") or cfg.get("name")))
    w.add_bool("moelab.random_init", bool(cfg.get("random_init")))
    w.add_uint32("moelab.seed", int(cfg.get("seed", 0)))
    w.add_string("moelab.arch", hp["arch"])
    w.add_string("moelab.model_config", json.dumps(dict(cfg), default=str, sort_keys=True))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def export(cfg: Mapping[str, Any], out: Path | str, outtype: str = "f16", device: str = "auto",
           vocab: str = "auto", progress: bool = True, built: tuple[Any, Any] | None = None) -> Path:
    """Build `cfg`'s model with moelab and write it to `out` as GGUF. Returns the path.

    `built`: a (ModelPlan, OffloadedModel) of `cfg` already materialised (tests compare the file with it).
    """
    import gguf

    from moelab.models.build import materialize, plan_model
    from moelab.models.hub import weight_dir

    if outtype not in OUTTYPES:
        raise SystemExit(f"--outtype {outtype!r}: one of {', '.join(OUTTYPES)}")
    out = Path(out)
    dev = resolve_device(device)
    t0 = time.time()
    plan = built[0] if built is not None else plan_model(cfg, dev)
    hp = hparams(plan)
    tensors = tensor_plan(plan, outtype)
    total = sum(t.nbytes for t in tensors)
    ckpt = weight_dir(plan.source) if plan.source is not None else None
    voc = None if vocab == "placeholder" else checkpoint_vocab(ckpt, hp["vocab"])
    if voc is None:
        reason = ("asked for" if vocab == "placeholder" else "random weights, no tokenizer" if ckpt is None
                  else "the checkpoint's tokenizer is not a byte-level BPE llama.cpp reads as gpt2")
        voc = placeholder_vocab(hp["vocab"], reason)
    log(f"{cfg.get('name')}: {hp['gguf_arch']}, {hp['n_layers']} layers x {hp['experts']} experts (top-{hp['top_k']}), "
        f"{len(tensors)} tensors, {total / 1e9:.2f} GB {outtype}; vocabulary: {voc['note']}")
    if built is None:
        log(f"building the model with moelab on {dev} ({'random init' if plan.source is None else plan.source})")
        om = materialize(plan, dev)
    else:
        om = built[1]
    log(f"model built in {time.time() - t0:.1f} s; writing {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(tmp, hp["gguf_arch"])
    write_metadata(w, hp, voc, cfg, outtype)
    for t in tensors:
        np_dtype = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(
            t.qtype, np.uint16)
        raw = t.qtype if t.qtype == gguf.GGMLQuantizationType.BF16 else None
        w.add_tensor_info(t.name, t.shape, np.dtype(np_dtype), t.nbytes, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    done, t1, last = 0, time.time(), 0.0
    for i, t in enumerate(tensors):
        arr = to_numpy(t.fetch(om), t.qtype)
        if tuple(arr.shape) != t.shape:
            raise RuntimeError(f"{t.name}: fetched {tuple(arr.shape)}, planned {t.shape}")
        w.write_tensor_data(arr)
        done += arr.nbytes
        del arr
        if progress and (time.time() - last > 5 or i == len(tensors) - 1):
            rate = done / max(time.time() - t1, 1e-9)
            log(f"  {done / 1e9:7.2f} / {total / 1e9:.2f} GB ({100 * done / total:5.1f}%), {rate / 1e9:.2f} GB/s, "
                f"{t.name}")
            last = time.time()
    w.close()
    tmp.replace(out)
    log(f"wrote {out} ({out.stat().st_size / 1e9:.2f} GB) in {time.time() - t0:.1f} s")
    return out


def iter_names(path: Path | str) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, numpy-order shape) of each tensor in a GGUF file (a quick look without llama.cpp)."""
    from gguf import GGUFReader

    for t in GGUFReader(path).tensors:
        yield t.name, tuple(int(x) for x in reversed(t.shape))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m moelab.export.gguf", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a conf/model preset (code_moe, qwen3_moe, ...) or a checkpoint dir")
    ap.add_argument("--out", required=True, help="the .gguf file to write")
    ap.add_argument("--outtype", choices=OUTTYPES, default="f16")
    ap.add_argument("--num-layers", type=int, help="model.num_layers: keep the first N decoder layers")
    ap.add_argument("--random-init", action=argparse.BooleanOptionalAction, default=None,
                    help="random weights at the model's shapes (default: on for presets with `shapes`, e.g. "
                         "qwen3_moe; off for checkpoints)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a model config override, e.g. config.vocab_size=512 or seed=1")
    ap.add_argument("--device", default="auto", help="where moelab builds the model (auto: cuda if available)")
    ap.add_argument("--vocab", choices=["auto", "placeholder"], default="auto")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    random_init = args.random_init if args.random_init is not None else needs_random_init(args.model)
    cfg = model_config(args.model, random_init=random_init, num_layers=args.num_layers, overrides=args.set)
    export(cfg, args.out, args.outtype, args.device, args.vocab, progress=not args.quiet)


if __name__ == "__main__":
    main()
