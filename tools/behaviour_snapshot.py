"""Fingerprint of what the executor does, for refactors that must not change it.

Runs many prefetch x cache x balancer x decoding x budget combinations of a small random MoE through the real
runner on the CPU and writes, per combination, the numbers a policy decides (bytes and copies by cause, wasted
bytes, evictions, CPU share) and the tokens it generated. Run it before and after a change and compare:

    python tools/behaviour_snapshot.py --out before.json
    python tools/behaviour_snapshot.py --out after.json --compare before.json

Timings are not part of the fingerprint; everything in it is decided on the host and is deterministic on the CPU,
given the measured CPU/GPU expert costs that cost-aware balancers (cpu_cold, spac) decide with. Those are measured
once and cached (MOELAB_CACHE, by default a `cache` folder beside --out): compare two snapshots taken with the same
cache, or the balancers' choices differ with the machine's load, not with the code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Small enough for ~100 runs in a few minutes on two cores; four MoE layers, 16 experts, top-2.
MODEL = ["model=tiny", "model.config.hidden_size=64", "model.config.intermediate_size=96",
         "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "model.config.vocab_size=256"]
BASE = ["device=cpu", "reference=false", "progress=false", "workload.num_prompts=2", "workload.max_new_tokens=6",
        "workload.ppl_tokens=16", "logger.console=false"]
SPEC_EXEC = "spec"  # marker: speculative execution on (its config key differs between versions)

PREFETCH = ["none", "oracle", "qhs", "ar_binary", "spac", f"qhs+{SPEC_EXEC}", f"ar_binary+{SPEC_EXEC}"]
CACHE = ["lru", "static", "utility"]
BALANCER = ["gpu_only", "cpu_cold", "residency", "spac"]
DECODING = ["autoregressive", "speculative"]
BUDGET = ["0.25", "0.5"]

FIELDS = ["h2d_bytes_demand", "h2d_bytes_prefetch", "h2d_bytes_prefill", "h2d_bytes_wasted", "evictions",
          "cpu_share", "hit_rate", "prefetch_precision", "prefetch_recall", "prediction_topk_recall",
          "prediction_coverage", "spec_exec_changed", "decode_tokens", "belady_bytes", "unique_experts_per_verify",
          "signal_binary_recall", "acceptance_rate"]


def combinations() -> list[tuple[str, str, str, str, str]]:
    """Every prefetch x cache pair (autoregressive, gpu_only, both budgets); every balancer and both decodings with
    a few prefetchers and caches."""
    out = []
    for p in PREFETCH:
        for c in CACHE:
            for b in BUDGET:
                out.append((p, c, "gpu_only", "autoregressive", b))
    for p in ("none", "qhs", "spac", f"qhs+{SPEC_EXEC}"):
        for bal in BALANCER[1:]:
            out.append((p, "lru" if p != "spac" else "utility", bal, "autoregressive", "0.25"))
        for c in ("lru", "utility", "static"):
            for bal in ("gpu_only", "spac"):
                out.append((p, c, bal, "speculative", "0.25"))
    return list(dict.fromkeys(out))


def overrides(prefetch: str, cache: str, balancer: str, decoding: str, budget: str, new_keys: bool) -> list[str]:
    name, _, spec = prefetch.partition("+")
    out = [f"prefetch={name}", f"cache={cache}", f"balancer={balancer}", f"decoding={decoding}",
           *(["decoding.gamma=3"] if decoding == "speculative" else []),
           f"budget.fraction={budget}"]
    if spec:
        out.append("execution.speculative=router" if new_keys else "prefetch.speculative_execution=true")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--compare", help="an earlier snapshot: print every difference, exit 1 if there is one")
    ap.add_argument("--limit", type=int, default=None, help="only the first N combinations (a quick check)")
    args = ap.parse_args()
    os.environ.setdefault("MOELAB_CACHE", str(Path(args.out).resolve().parent / "cache"))  # same costs each time

    import torch
    from hydra import compose, initialize_config_dir

    from moelab.core import registry
    from moelab.runner import run

    torch.set_num_threads(min(2, torch.get_num_threads()))
    new_keys = (ROOT / "conf" / "execution").is_dir()
    last: dict[str, list[list[int]]] = {}
    for name in registry.names("decoding"):  # remember the tokens of the last generation (the timed pass)
        cls = registry.get("decoding", name)
        plain = cls.generate

        def generate(self, *a, _plain=plain, **k):
            gen = _plain(self, *a, **k)
            last["tokens"] = [list(map(int, t)) for t in gen.new_tokens]
            return gen

        cls.generate = generate
    combos = combinations()[: args.limit]
    snap: dict[str, dict] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as results, initialize_config_dir(str(ROOT / "conf"), version_base=None):
        for combo in combos:
            cfg = compose("config", overrides=[*MODEL, *BASE, f"results_dir={results}",
                                               *overrides(*combo, new_keys=new_keys)])
            key = " ".join(combo)
            try:
                row = run(cfg)
            except Exception as e:  # a combination that fails must fail the same way after the change
                snap[key] = {"error": f"{type(e).__name__}: {e}"}
                continue
            expert = row["expert_mib"] * 2**20
            entry = {f: _num(row.get(f)) for f in FIELDS}
            for cause in ("demand", "prefetch", "prefill"):
                entry[f"copies_{cause}"] = round(row[f"h2d_bytes_{cause}"] / expert)
            entry["tokens"] = last.get("tokens")
            snap[key] = entry
    Path(args.out).write_text(json.dumps(snap, indent=1, sort_keys=True))
    print(f"{len(combos)} combinations in {time.time() - t0:.0f} s -> {args.out}")
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    diffs = 0
    for key in sorted(set(before) | set(snap)):
        a, b = before.get(key), snap.get(key)
        if a == b:
            continue
        diffs += 1
        fields = sorted({*(a or {}), *(b or {})})
        changed = {f: ((a or {}).get(f), (b or {}).get(f)) for f in fields if (a or {}).get(f) != (b or {}).get(f)}
        print(f"DIFF {key}: {changed}")
    print(f"{len(snap)} combinations compared, {diffs} differ")
    return 1 if diffs else 0


def _num(v: object) -> float | None:
    """Rounded so that float noise in a ratio's last bit is not a difference; NaN as None (JSON)."""
    if v is None:
        return None
    f = float(v)  # type: ignore[arg-type]
    return None if f != f else round(f, 9)


if __name__ == "__main__":
    raise SystemExit(main())
