"""`python -m moelab.train [train=v1|tiny] [only=[name,...]] [overrides]`: corpus -> tokenizer -> each model
of `train.models` -> model cards. Each stage is skipped when its output exists, so a run cut off (e.g. by a
10-minute command limit) continues where it stopped when started again with the same config, and the models
of one version can be trained in separate calls (`only=`) that share the tokenizer.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from moelab.core.errors import MoelabError
from moelab.train import dense_experts
from moelab.train.corpus import list_sources, read_split
from moelab.train.data import TokenWindows, encode_to_file
from moelab.train.loop import train
from moelab.train.report import eval_loss, greedy_acceptance, routing_stats, write_card
from moelab.train.tokenizer import load_tokenizer, train_tokenizer

MOE_ARCHS = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "phimoe", "deepseek_v2", "deepseek_v3", "gpt_oss"}
CONF = str(Path(__file__).resolve().parents[2] / "conf")


def log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


def prepare_data(c: dict[str, Any], out: Path) -> dict[str, Any]:
    """Tokenizer and token streams, built once per out_dir."""
    meta_path = out / "data" / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    corpus = c["corpus"]
    t0 = time.time()
    files = list_sources()
    train_texts = [t for _, t in read_split(files, False, corpus["val_permille"], corpus["max_bytes"])]
    val_texts = [t for _, t in read_split(files, True, corpus["val_permille"], corpus["val_max_bytes"])]
    sample, size = [], 0
    for t in train_texts:
        sample.append(t)
        size += len(t)
        if size >= corpus["tokenizer_sample_bytes"]:
            break
    # A tokenizer already there (made by an earlier call of this version) is kept: models trained in
    # separate calls must share it.
    tok = (load_tokenizer(out / "tokenizer") if (out / "tokenizer" / "tokenizer.json").exists()
           else train_tokenizer(sample, c["tokenizer"]["vocab_size"], out / "tokenizer"))
    n_train = encode_to_file(train_texts, tok, out / "data" / "train.npy")
    n_val = encode_to_file(val_texts, tok, out / "data" / "val.npy")
    meta = {
        "files_listed": len(files),
        "train_files": len(train_texts), "val_files": len(val_texts),
        "train_bytes": sum(len(t.encode()) for t in train_texts), "val_bytes": sum(len(t.encode()) for t in val_texts),
        "train_tokens": n_train, "val_tokens": n_val, "vocab_size": len(tok), "data_s": time.time() - t0,
        "val_permille": corpus["val_permille"],
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    log(f"corpus: {meta['train_files']} files, {meta['train_bytes'] / 1e6:.1f} MB -> {n_train:,} tokens "
        f"(val {n_val:,}) in {meta['data_s']:.0f} s")
    return meta


def build(spec: dict[str, Any], tok) -> torch.nn.Module:
    cfg = AutoConfig.for_model(
        spec["arch"], vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **spec["config"],
    )
    # Training keeps float32 master weights under bf16 autocast, which transformers' grouped kernel (made for
    # bf16 weights) does not take; all-experts-dense (moelab.train.dense_experts) is the fast exact path.
    # The saved model is reloaded with the default implementation for inference.
    if spec["arch"] not in MOE_ARCHS:
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, experts_implementation=dense_experts.NAME)
    return model


def stage(name: str, c: dict[str, Any], out: Path, tok, device, deadline) -> dict | None:
    """Train one model to completion (or to the deadline); save it in HF format when done."""
    spec = {**c["optim"], **c["models"][name]}
    final = out / name
    if (final / "config.json").exists():
        return json.loads((final / "train_facts.json").read_text())
    torch.manual_seed(c["seed"])
    model = build(spec, tok).to(device)
    windows = TokenWindows(out / "data" / "train.npy", spec["seq_len"], c["seed"])
    res = train(model, windows, spec, out / "state" / f"{name}.pt", device, deadline, name, c["progress"])
    if not res.finished:
        log(f"{name}: stopped at step {res.steps} (deadline); run the same command again to resume")
        return None
    val = TokenWindows(out / "data" / "val.npy", spec["seq_len"], c["seed"] + 1)
    batches = val.fixed_batches(c["report"]["val_batches"], spec["batch_size"], device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        vloss = eval_loss(model, batches)
    facts = {"parameters": sum(p.numel() for p in model.parameters()), "steps": res.steps,
             "train_tokens_seen": res.tokens, "train_wall_s": res.wall_s, "final_train_loss": res.train_loss,
             "val_loss": vloss, "val_ppl": float(torch.tensor(vloss).exp()), "arch": spec["arch"],
             "train_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             "train_torch": torch.__version__, "seed": c["seed"]}
    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(str(final), max_shard_size=c["max_shard_size"])
    tok.save_pretrained(str(final))
    (final / "train_facts.json").write_text(json.dumps(facts, indent=1))
    log(f"{name}: {res.steps} steps, {res.wall_s / 60:.1f} min, val loss {vloss:.3f}")
    return facts


def moe_names(c: dict[str, Any]) -> list[str]:
    return [n for n, m in c["models"].items() if m["arch"] in MOE_ARCHS]


@torch.no_grad()
def finish(c: dict[str, Any], out: Path, meta: dict, device) -> dict[str, Any]:
    """Model cards: each target's routing, the draft's acceptance against each target."""
    def load(name: str):
        return AutoModelForCausalLM.from_pretrained(str(out / name), dtype=torch.float32).to(device).eval()

    rep = c["report"]
    val = TokenWindows(out / "data" / "val.npy", rep["prompt_len"], c["seed"] + 2)
    batches = val.fixed_batches(rep["routing_batches"], 8, device)
    prompts = [x[:1] for x, _ in val.fixed_batches(rep["acceptance_prompts"], 1, device, seed=99)]
    draft = load(c["draft"])
    routing, acceptance = {}, {}
    for name in moe_names(c):
        target = load(name)
        routing[name] = routing_stats(target, batches, target.config.num_experts_per_tok)
        acceptance[name] = greedy_acceptance(target, draft, prompts, rep["gamma"], rep["acceptance_new_tokens"])
        log(f"{name}: draft acceptance@{rep['gamma']} {acceptance[name]['acceptance_rate']:.3f}")
        del target
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    common = {"corpus": "Python source of the stdlib and installed packages (moelab.train.corpus)",
              "corpus_files": meta["train_files"], "corpus_bytes": meta["train_bytes"],
              "corpus_tokens": meta["train_tokens"], "val_files": meta["val_files"], "val_tokens": meta["val_tokens"],
              "held_out_rule": f"sha1(relative path) % 1000 < {meta['val_permille']}",
              "tokenizer": f"byte-level BPE, {meta['vocab_size']} tokens", "report_device": where,
              "torch": torch.__version__, "draft": c["draft"], "draft_acceptance_gamma": rep["gamma"]}
    summary: dict[str, Any] = {"version": c["name"], "models": {}, "routing": routing, "acceptance": acceptance,
                               **common}
    for name in c["models"]:
        facts = json.loads((out / name / "train_facts.json").read_text())
        accept = ({f"draft_acceptance_rate_vs_{t}": a["acceptance_rate"] for t, a in acceptance.items()}
                  if name == c["draft"] else {"draft_acceptance_rate": acceptance[name]["acceptance_rate"],
                                              "mean_accepted_len": acceptance[name]["mean_accepted_len"]})
        write_card(out / name / "README.md", f"moelab {c['name']}/{name}", {**facts, **common, **accept},
                   routing.get(name))
        summary["models"][name] = facts
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


@hydra.main(version_base=None, config_path=CONF, config_name="training")
def main(cfg: DictConfig) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
    c = {**c["train"], **{k: v for k, v in c.items() if k != "train"}}
    device = torch.device("cuda" if c["device"] == "auto" and torch.cuda.is_available() else
                          ("cpu" if c["device"] == "auto" else c["device"]))
    out = Path(c["out_dir"])
    deadline = time.time() + 60 * c["max_wall_minutes"]
    only = c.get("only") or list(c["models"])
    unknown = sorted(set(only) - set(c["models"]))
    if unknown:
        print(f"error: only={unknown} names no model of train={c['name']}; allowed: {sorted(c['models'])}",
              file=sys.stderr)
        sys.exit(2)
    try:
        meta = prepare_data(c, out)
        tok = load_tokenizer(out / "tokenizer")
        for name in only:
            if stage(name, c, out, tok, device, deadline) is None:
                sys.exit(3)
        missing = [n for n in c["models"] if not (out / n / "config.json").exists()]
        if missing:
            log(f"trained {only}; model cards wait for {missing} (train them with only=[...])")
            return
        summary = finish(c, out, meta, device)
    except MoelabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for name, facts in summary["models"].items():
        acc = summary["acceptance"].get(name)
        print(f"{name}: val loss {facts['val_loss']:.3f} (ppl {facts['val_ppl']:.2f}), {facts['steps']} steps, "
              f"{facts['train_wall_s'] / 60:.1f} min"
              + (f", draft acceptance@{summary['draft_acceptance_gamma']} {acc['acceptance_rate']:.3f}" if acc else ""))
    print(out)

if __name__ == "__main__":
    main()
