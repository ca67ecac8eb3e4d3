"""Differences between the transformers releases moelab supports, decided once.

transformers 5.24 renamed the KV-cache argument of every model's ``forward`` from ``past_key_values``
to ``cache`` (the old name warns until 5.40 removes it); 5.17 knows only the old one. Reading the
signature, rather than the version number, keeps the choice right for any model class.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import torch


@cache
def _cache_keyword(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword argument that passes `cache` (a transformers Cache) to `model`'s forward."""
    return {_cache_keyword(type(model)): cache}
