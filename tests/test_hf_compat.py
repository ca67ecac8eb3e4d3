"""The KV-cache keyword follows the installed transformers (`cache=` from 5.24, `past_key_values=` on 5.17),
so moelab's own model calls raise no deprecation warning; and the test helper that tells moelab's warnings from
other libraries' judges by origin."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.decoding.speculative import SpeculativeDecoding
from moelab.models.hf_compat import cache_kwargs
from tests.conftest import ROOT, make_executor, offloaded_copy, random_prompts, tiny_hf_model
from tests.test_cli import moelab_warnings

DRAFT = {"path": None, "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "num_key_value_heads": 1}}


class _NewForward(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None):  # the 5.24+ signature
        return cache


class _OldForward(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):  # the 5.17 signature
        return past_key_values


def test_the_keyword_is_read_from_the_forward_signature():
    marker = object()
    for module in (_NewForward(), _OldForward()):
        kwargs = cache_kwargs(module, marker)
        assert len(kwargs) == 1 and module(**kwargs) is marker


def test_the_installed_models_accept_the_chosen_keyword_without_warning(tmp_path):
    """Autoregressive and speculative decoding through the executor: no warning whose origin is moelab (the
    deprecated keyword's FutureWarning points at the caller, so it would be moelab's), and the cache is used (the
    offloaded output equals the plain model's, which it would not if the cache were dropped)."""
    model = tiny_hf_model("mixtral", num_hidden_layers=2)
    om = offloaded_copy(model)
    batches = [[p] for p in random_prompts(2, 256)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with om.using(make_executor(om, 4)):
            ar = AutoregressiveDecoding().generate(om, batches, 6)
            sd = SpeculativeDecoding(gamma=3, draft=DRAFT).generate(om, batches, 6)
    mine = [w for w in caught if Path(w.filename).resolve().is_relative_to(ROOT)
            or "past_key_values" in str(w.message)]
    assert not mine, [f"{w.filename}:{w.lineno}: {w.message}" for w in mine]
    assert ar.new_tokens == sd.new_tokens  # greedy speculative output is the target's own greedy output


def test_moelab_warnings_are_told_apart_by_origin():
    lib = "/usr/lib/python3/site-packages/transformers/utils/deprecation.py:172: FutureWarning: x is deprecated"
    ours = f"{ROOT}/moelab/decoding/base.py:73: FutureWarning: `past_key_values` is deprecated"
    console = "warning: could not record run abc: disk full"
    assert moelab_warnings("\n".join([lib, "  warnings.warn(msg)"])) == []
    assert moelab_warnings("\n".join([lib, ours, console])) == [ours, console]
