"""Which draft speculative decoding uses, decided before any weight is read.

`decoding.draft.path` (a hub id or a directory) wins; else a real target takes its preset's `model.draft`, a
model that shares its tokenizer. A real target without either is refused: a random draft would accept almost
nothing and make every speculative number meaningless. A random-weight target (`model.random_init=true`,
`model=tiny`) gets a small random draft from `decoding.draft.config`, and the console says so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moelab.core.errors import ConfigError
from moelab.models.hub import ModelSource, locate


@dataclass
class DraftOptions:
    """The schema of `decoding.draft` (conf/decoding/speculative.yaml): read here (`path`) and by the speculative
    decoding's DraftModel (a random draft's `arch`, `seed` and `config`, transformers config fields)."""

    path: str | None = None
    arch: str = "llama"
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)


def random_target(model: Mapping[str, Any]) -> bool:
    return bool(model.get("random_init", False)) or not model.get("path")


def choose_draft(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`cfg` with `decoding.draft.path` filled in from the model's default draft where that applies."""
    out = dict(cfg)
    dec = cfg.get("decoding")
    if not isinstance(dec, Mapping) or dec.get("name") != "speculative":
        return out
    model = cfg.get("model") if isinstance(cfg.get("model"), Mapping) else {}
    draft = dict(dec.get("draft") or {})
    check_random_draft(draft)  # typed even where a draft path makes it unused
    path = draft.get("path") or (None if random_target(model) else model.get("draft"))
    if path:
        # a target that cannot be found is named before its draft
        target = None if random_target(model) else locate(str(model["path"]), model.get("revision"))
        draft_source = check_draft_path(str(path))
        if target is not None:
            target_vocab = (model.get("config") or {}).get("vocab_size") or _vocab(target)
            draft_vocab = _vocab(draft_source)
            if target_vocab and draft_vocab and int(target_vocab) != int(draft_vocab):
                raise ConfigError(f"the draft {path} has a vocabulary of {draft_vocab} tokens and the target "
                                  f"{model['path']} one of {target_vocab}; the draft must share the target's "
                                  "tokenizer (decoding.draft.path)")
        out["decoding"] = {**dec, "draft": {**draft, "path": str(path)}}
    elif random_target(model):
        print(f"note: decoding=speculative on a random-weight target: the draft is a small random "
              f"{draft.get('arch', 'llama')} from decoding.draft.config (acceptance near zero); set "
              "decoding.draft.path with a trained target for real acceptance", file=sys.stderr)
    else:
        name = model.get("name") or model.get("path")
        raise ConfigError(f"decoding=speculative needs a draft that shares {name}'s tokenizer and model.draft names "
                          "none: set decoding.draft.path=<hub id or local directory> (or model.random_init=true "
                          "for a random target and draft)")
    return out


def check_random_draft(draft: Mapping[str, Any]) -> None:
    """A random draft's `arch` and `config` as transformers reads them, before any weight is read (one line)."""
    import re

    from transformers import AutoConfig

    arch, config = str(draft.get("arch", "llama")), dict(draft.get("config") or {})
    try:
        AutoConfig.for_model(arch, **config)
    except Exception as e:  # an unknown arch, or a field transformers' validation refuses
        m = re.search(r"field '(\w+)'", str(e))
        key = (f"decoding.draft.config.{m[1]}={config[m[1]]!r}" if m and m[1] in config
               else f"decoding.draft.arch={arch}")
        raise ConfigError(f"invalid {key} for a random draft: {' '.join(str(e).split())[:200]}") from None


def draft_name(dec: Mapping[str, Any]) -> str | None:
    """The row's `draft`: the draft model's path or hub id, `random-<arch>` for a random draft, None without one."""
    if dec.get("name") != "speculative":
        return None
    draft = dec.get("draft") or {}
    return str(draft["path"]) if draft.get("path") else f"random-{draft.get('arch', 'llama')}"


def check_draft_path(path: str) -> ModelSource:
    """A draft that is not cached offline, or a directory that is not there, fails now in one line."""
    source = locate(path)
    if not source.is_hub and not (source.dir / "config.json").is_file():
        raise ConfigError(f"decoding.draft.path {path} is neither a model directory (with config.json) nor a hub id")
    return source


def _vocab(source: ModelSource) -> int | None:
    try:
        raw = json.loads((source.dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # the checkpoint reader names what is wrong with it
    vocab = raw.get("vocab_size") or (raw.get("text_config") or {}).get("vocab_size")
    return int(vocab) if vocab else None
