"""Peers' offloading, run on moelab's weights, prompts and routing so that benchmarks compare like with like.

Importing this package needs none of the peers' packages; each baseline imports its own on first use.
"""

from moelab.baselines.accelerate_offload import Placement, accelerate_model, placement, plain_copy, require_accelerate

__all__ = ["Placement", "accelerate_model", "placement", "plain_copy", "require_accelerate"]
