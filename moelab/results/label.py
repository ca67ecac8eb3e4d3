"""The row's `policy`: the preset a run started from plus every component choice it overrode.

`policy=on_demand prefetch=qhs` is not the on_demand baseline, so it is recorded as `on_demand+prefetch=qhs`;
a parameter changed from the preset's value is recorded too (`spac+decoding.gamma=2`). Figures group and
label runs by this string, so an ablation never shares a label with the preset it ablates. Which draft model
speculative decoding uses is a model, not a policy: it is the row's `draft` column, not part of this label.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
# The parts of a run a preset (conf/policy/*.yaml) chooses.
PRESET_KINDS = ("prefetch", "cache", "balancer", "decoding", "execution")
# Keys of those parts that choose a model rather than a policy (recorded in columns of their own).
MODEL_KEYS = {"decoding": ("draft",)}


def _yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return data if isinstance(data, dict) else {}


def preset_sections(preset: str, conf: Path = CONF) -> dict[str, dict[str, Any]]:
    """What `policy=<preset>` alone resolves each preset kind to (unresolved: interpolations stay strings)."""
    spec = _yaml(conf / "policy" / f"{preset}.yaml")
    chosen: dict[str, str] = {}
    for entry in spec.get("defaults", []):
        if isinstance(entry, Mapping):
            for group, name in entry.items():
                chosen[str(group).strip("/")] = str(name)
    out: dict[str, dict[str, Any]] = {}
    for kind in PRESET_KINDS:
        base = _yaml(conf / kind / f"{chosen.get(kind, 'default')}.yaml") if kind in chosen or kind == "execution" \
            else {}
        own = spec.get(kind) if isinstance(spec.get(kind), Mapping) else {}
        out[kind] = {**base, **own}
    return out


def _differences(prefix: str, expected: Any, actual: Any) -> list[str]:
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        out = []
        for key in sorted(set(expected) | set(actual), key=str):
            out += _differences(f"{prefix}.{key}", expected.get(key), actual.get(key))
        return out
    if isinstance(expected, str) and "${" in expected:  # follows another key: not a choice of this run
        return []
    return [] if expected == actual else [f"{prefix}={_show(actual)}"]


def _show(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def policy_label(cfg: Mapping[str, Any], conf: Path = CONF) -> str:
    """`<preset>` or `<preset>+<kind>=<name>+<kind>.<key>=<value>...` from a resolved run config."""
    preset = str(cfg.get("policy") or "")
    expected = preset_sections(preset, conf) if preset else {}
    parts = [preset or "custom"]
    for kind in PRESET_KINDS:
        actual = cfg.get(kind)
        if not isinstance(actual, Mapping):
            continue
        want = expected.get(kind, {})
        if want.get("name") != actual.get("name") and "name" in actual:
            parts.append(f"{kind}={actual['name']}")
            want = _yaml(conf / kind / f"{actual['name']}.yaml")  # parameters then compare with that component's
        skip = ("name", *MODEL_KEYS.get(kind, ()))
        parts += _differences(kind, {k: v for k, v in want.items() if k not in skip},
                              {k: v for k, v in actual.items() if k not in skip})
    return "+".join(parts)
