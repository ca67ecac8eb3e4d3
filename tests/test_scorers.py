"""Scorers are a registry kind: a lookahead's `LookaheadSpec.scorer` names one, and an unknown name is refused in
one line, listing the registered ones, before any weight is read."""

from types import SimpleNamespace

import pytest

from moelab.assembly import check_lookahead
from moelab.core import registry
from moelab.core.errors import ConfigError
from moelab.core.types import Execution, LookaheadSpec
from moelab.scorers import build_scorer, scorer_class
from moelab.scorers.base import Scorer
from moelab.scorers.mlp import MlpScorer
from moelab.scorers.router import RouterScorer


def test_scorers_are_registered():
    assert {"router", "mlp"} <= set(registry.names("scorer"))
    assert scorer_class("router") is RouterScorer and scorer_class("mlp") is MlpScorer
    assert all(issubclass(scorer_class(n), Scorer) for n in registry.names("scorer"))
    assert RouterScorer.replayable and not MlpScorer.replayable


def test_an_unknown_scorer_is_one_line_listing_the_registered_ones():
    with pytest.raises(ConfigError) as e:
        build_scorer(None, LookaheadSpec(scorer="nope"))  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg and "'nope'" in msg and "mlp" in msg and "router" in msg
    prefetch = SimpleNamespace(lookahead=LookaheadSpec(scorer="nope"))
    with pytest.raises(ConfigError, match="registered scorer names: mlp, router"):
        check_lookahead(prefetch, Execution(), 2, False)  # type: ignore[arg-type]


def test_a_scorer_that_reads_hidden_states_is_refused_under_replay():
    prefetch = SimpleNamespace(lookahead=LookaheadSpec(scorer="mlp"))
    with pytest.raises(ConfigError, match="say nothing under routing=replay"):
        check_lookahead(prefetch, Execution(), 2, True)  # type: ignore[arg-type]
    check_lookahead(SimpleNamespace(lookahead=LookaheadSpec(scorer="router")), Execution(), 2, True)  # type: ignore[arg-type]
