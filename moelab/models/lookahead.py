"""Predictions of a later layer's routing, computed from what the model holds while layer l runs.

Speculating Experts' quasi-hidden state: layer l+d's true MoE input does not exist yet while layer
l runs, so a tensor available now stands in for it and goes through layer l+d's own pre-MoE norm
and router. `LookaheadSpec.state` picks the tensor (the paper does not say exactly which one, so
all three are here and `prediction_topk_recall` measures them):

- `post_attn` (default): layer l's residual stream after its attention, the input of layer l's
  pre-MoE norm. It exists before layer l's experts run, so the copies overlap their compute, and it
  is read by layer l's one host sync (no extra round trip). It lacks layer l's MoE update.
- `post_attn_default`: the same plus a running mean (over past tokens) of layer l's MoE-block
  output, a "default vector" standing in for the update that is still missing.
- `default_vectors`: Speculating Experts' released code: the same residual plus the gate-weighted
  sum of per-expert default vectors of layer l, s_l + sum_k w_{l,k} d_{l,k}, with layer l's own
  routing (its router's top-k weights and experts, known before its experts run; under
  `execution.speculative=predicted` the predicted ones layer l runs instead, as in the released code). d_{l,e} is a
  running mean (EMA per layer call, `default_decay`) of expert e's unweighted outputs, read from the
  executor's output taps; or, as the released code loads precomputed ones, fixed vectors from a file
  (`save_default_vectors` writes one from a run). An expert not yet seen contributes nothing.
- `layer_output`: layer l's output residual, i.e. layer l+1's input minus layer l+1's attention.
  Closest to the truth, but it exists only after layer l's experts ran: the copies overlap only
  layer l+1's attention (for d=1), and reading it costs a host sync of its own.

Scorers (a registry kind, `moelab.scorers`; `LookaheadSpec.scorer` names one) turn the state into ranked experts:
`router` (layer l+d's router; its own top-k first, then the rest by logit) or `mlp` (learned per-layer MLPs,
`moelab.predictors`). Under routing replay the
hidden states say nothing about the replayed routing, so the trace's recorded predictions are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moelab.core.errors import ConfigError
from moelab.core.types import LOOKAHEAD_STATES as STATES
from moelab.core.types import LookaheadSpec
from moelab.models.offloaded import OffloadedModel
from moelab.scorers.base import Scorer
from moelab.scorers.router import RouterScorer


class Lookahead:
    """Hooks that compute a predictor's view of layer l+d while layer l runs and hand it to the executor.

    Also keeps each router's full logits for the executor when speculative execution needs them, and with
    `skip_router` (execution.true_router=skip) makes each predicted layer's router hand over the prediction
    instead of computing. Use as a context manager around the generation that should see it.
    """

    def __init__(
        self,
        om: OffloadedModel,
        spec: LookaheadSpec | None,
        executor: Any,
        scorer: Scorer | None = None,
        replay: Any = None,
        keep_router_logits: bool = False,
        predicted_logits: bool = False,
        default_decay: float | None = None,
        skip_router: bool = False,
    ):
        spec = spec or LookaheadSpec(distance=len(om.spec.moe_layers))  # router logits only, no prediction
        if spec.state not in STATES:
            raise ConfigError(f"unknown quasi-hidden state {spec.state!r}; allowed: {', '.join(STATES)}")
        if int(spec.distance) < 1:
            raise ConfigError(f"lookahead distance must be >= 1, got {spec.distance}")
        self.om = om
        self.spec = spec
        self.executor = executor
        self.k = int(spec.k or om.spec.top_k)
        if not 1 <= self.k <= om.spec.num_experts:
            raise ConfigError(f"experts predicted per token (k={spec.k}) must be in 1..{om.spec.num_experts}")
        self.scorer = scorer or RouterScorer(om)
        self.replay = replay
        self.keep_router_logits = keep_router_logits
        self.predicted_logits = predicted_logits
        self.default_decay = spec.default_decay if default_decay is None else default_decay
        self.defaults: dict[int, torch.Tensor] = {}
        # default_vectors: layer -> [experts, hidden] float32, and which experts have an estimate
        self.expert_defaults: dict[int, torch.Tensor] = {}
        self.expert_seen: dict[int, torch.Tensor] = {}
        self.fixed_defaults = spec.defaults_path is not None
        if self.fixed_defaults:
            self._load_defaults(Path(spec.defaults_path))
        self._states: dict[int, torch.Tensor] = {}  # layer -> post-attention residual of the current call
        self.skip_router = skip_router
        self._routing_dtypes: tuple[torch.dtype, torch.dtype] | None = None  # (ids, weights) as the router returns
        self._router_forwards: list[tuple[nn.Module, Any]] = []  # (router, the forward it had before)
        self._predicting = False
        self._hooks: list[Any] = []

    def __enter__(self) -> Lookahead:
        om, adapter = self.om, self.om.adapter
        layers = adapter.decoder_layers(om.model)
        moe = list(om.spec.moe_layers)
        d = int(self.spec.distance)
        for i, layer in enumerate(moe):
            if self.skip_router:
                self._replace_router(layer, adapter.router(adapter.moe_block(layers[layer])))
            if self.keep_router_logits:
                router = adapter.router(adapter.moe_block(layers[layer]))
                self._hooks.append(router.register_forward_hook(self._keep_logits(layer)))
            if i + d >= len(moe):
                continue
            target = moe[i + d]
            if self.spec.state == "layer_output":
                self._hooks.append(layers[layer].register_forward_hook(self._after_layer(layer, target)))
            elif self.spec.state == "default_vectors":
                block = adapter.moe_block(layers[layer])
                norm = adapter.pre_moe_norm(layers[layer])
                self._hooks.append(norm.register_forward_pre_hook(self._keep_state(layer)))
                self._hooks.append(adapter.router(block).register_forward_hook(self._after_router(layer, target)))
            else:
                norm = adapter.pre_moe_norm(layers[layer])
                self._hooks.append(norm.register_forward_pre_hook(self._before_experts(layer, target)))
            if self.spec.state == "post_attn_default":
                block = adapter.moe_block(layers[layer])
                self._hooks.append(block.register_forward_hook(self._track_default(layer)))
        if self.spec.state == "default_vectors" and not self.fixed_defaults:
            self.executor.output_taps.append(self._track_expert_outputs)
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for router, previous in self._router_forwards:
            if previous is None:
                del router.forward  # the class's own forward again
            else:
                router.forward = previous
        self._router_forwards = []
        self.executor.router_logits.clear()
        if self._track_expert_outputs in self.executor.output_taps:
            self.executor.output_taps.remove(self._track_expert_outputs)

    # ---------------------------------------------------------------- hooks
    def _replace_router(self, layer: int, router: nn.Module) -> None:
        """`execution.true_router=skip`: the router's forward returns (None, predicted weights, predicted ids) where
        layer `layer` has a prediction, without computing anything of its own; else (the first `distance` MoE
        layers of a step, the scorers' own calls) it computes as always. The ids' and weights' dtypes are those the
        model's routers returned at the step's first layer, so the block gets what its router would give."""
        previous = router.__dict__.get("forward")  # an instance-level forward someone else installed
        compute = router.forward

        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self._predicting and self._routing_dtypes is not None:
                ran = self.executor.routing_instead_of_router(
                    layer, hidden_states.numel() // hidden_states.shape[-1], self.om.spec.top_k,
                    *self._routing_dtypes, hidden_states.device)
                if ran is not None:
                    return None, ran[1], ran[0]  # no logits: nothing computed them
            out = compute(hidden_states, *args, **kwargs)
            if not self._predicting:
                self._routing_dtypes = (out[2].dtype, out[1].dtype)
            return out

        router.forward = forward
        self._router_forwards.append((router, previous))

    def _rank(self, source: int, target: int, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Ranked experts [T, k] for `target`, and its predicted router logits [T, E] when they are wanted."""
        if self.replay is not None:
            return self.replay.predicted(source, int(self.spec.distance), self.k, state.device), None
        h = state.reshape(-1, state.shape[-1])  # [T, H]
        if self.spec.state == "post_attn_default" and source in self.defaults:
            h = h + self.defaults[source].to(h.dtype)
        self._predicting = True
        try:
            with torch.no_grad():
                ranked = self.scorer(target, h, self.k)  # [T, k]
                logits = self.scorer.logits(target, h) if self.predicted_logits else None  # [T, E]
                return ranked, logits
        finally:
            self._predicting = False

    def _before_experts(self, source: int, target: int):
        def hook(module, args):
            if not self._predicting:  # scoring calls later layers' norms: those calls are not the model's
                self.executor.stage_prediction(source, target, *self._rank(source, target, args[0]))
        return hook

    def _after_layer(self, source: int, target: int):
        def hook(module, args, output):
            if self._predicting:
                return
            h = output[0] if isinstance(output, tuple) else output
            self.executor.predict_now(source, target, *self._rank(source, target, h))
        return hook

    def _keep_state(self, layer: int):
        def hook(module, args):
            if not self._predicting:
                self._states[layer] = args[0]
        return hook

    def _after_router(self, source: int, target: int):
        """Layer l's router has chosen: s_l + sum_k w_k d_{l, e_k} goes through layer l+d's norm and router."""
        def hook(module, args, output):
            if self._predicting or source not in self._states:
                return
            s = self._states.pop(source)
            h = s.reshape(-1, s.shape[-1])
            table = self.expert_defaults.get(source)
            if table is not None and self.replay is None:
                weights, idx = output[1].detach(), output[2]
                ran = self.executor.predicted_routing(source, idx, weights)
                if ran is not None:  # speculative execution with predicted weights: what layer l runs instead
                    idx, weights = ran
                dv = (weights.float().reshape(*idx.shape, 1) * table[idx.reshape(idx.shape[0], -1)]).sum(1)
                h = h + dv.to(h.dtype)
            self.executor.stage_prediction(source, target, *self._rank(source, target, h))
        return hook

    def _track_expert_outputs(self, layer: int, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                              rows: torch.Tensor) -> None:
        """Fold one layer call's per-expert mean output (the weighted rows divided by their weights) into the
        expert's running mean; (token, k) pairs of weight 0 say nothing about the output and are skipped."""
        with torch.no_grad():
            w = top_k_weights.reshape(-1).float()
            ok = w != 0
            idx = top_k_index.reshape(-1)[ok]
            y = rows.float()[ok] / w[ok, None]
            n = self.om.spec.num_experts
            sums = torch.zeros(n, y.shape[-1], device=y.device).index_add_(0, idx, y)
            counts = torch.bincount(idx, minlength=n)
            used = counts > 0
            mean = sums[used] / counts[used, None]
            table = self.expert_defaults.setdefault(layer, torch.zeros(n, y.shape[-1], device=y.device))
            seen = self.expert_seen.setdefault(layer, torch.zeros(n, dtype=torch.bool, device=y.device))
            d = self.default_decay
            old = table[used]
            table[used] = torch.where(seen[used, None], d * old + (1 - d) * mean, mean)
            seen |= used

    def _load_defaults(self, path: Path) -> None:
        data = torch.load(path, map_location="cpu", weights_only=True)
        spec = self.om.spec
        want = (list(spec.moe_layers), spec.num_experts, spec.hidden_size)
        got = (data.get("moe_layers"), data.get("num_experts"), data.get("hidden_size"))
        if got != want:
            raise ConfigError(f"default vectors {path} are for MoE layers / experts / hidden size {got}; this model "
                              f"has {want}")
        device = self.om.device
        self.expert_defaults = {int(k): v.float().to(device) for k, v in data["default_vectors"].items()}

    def _track_default(self, layer: int):
        def hook(module, args, output):
            y = output[0] if isinstance(output, tuple) else output
            mean = y.detach().reshape(-1, y.shape[-1]).float().mean(0)
            prev = self.defaults.get(layer)
            self.defaults[layer] = mean if prev is None else self.default_decay * prev + (1 - self.default_decay) * mean
        return hook

    def _keep_logits(self, layer: int):
        def hook(module, args, output):
            if not self._predicting:
                self.executor.router_logits[layer] = output[0].detach()
        return hook


def save_default_vectors(lookahead: Lookahead, path: str | Path) -> Path:
    """Write the per-expert default vectors a run estimated (state=default_vectors) to `path`, for later runs'
    `prefetch.defaults_file=PATH` (fixed vectors from a calibration workload, as the released code uses). Atomic."""
    spec = lookahead.om.spec
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"moe_layers": list(spec.moe_layers), "num_experts": spec.num_experts, "hidden_size": spec.hidden_size,
                "default_vectors": {k: v.cpu() for k, v in lookahead.expert_defaults.items()}}, tmp)
    os.replace(tmp, path)
    return path
