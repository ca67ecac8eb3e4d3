"""A few built-in prompts of different kinds (code, prose, arithmetic, lists): no download needed."""

from __future__ import annotations

from collections.abc import Sequence

from moelab.core.registry import register
from moelab.workloads.base import Workload

PROMPTS = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three laws of thermodynamics can be summarised as follows:",
    "Q: A train leaves at 9:40 and arrives at 13:05. How long is the journey?\nA:",
    "Ingredients for a simple bread: flour, water, salt,",
    "import torch\n\nclass Attention(torch.nn.Module):\n    def __init__(self, dim, heads):\n",
    "Once upon a time, in a village between two rivers, there lived",
)

REFERENCE_TEXT = (
    "Mixture-of-experts models replace the feed-forward block of a transformer with many experts and a router "
    "that sends each token to a few of them. Only the chosen experts run, so the model has far more parameters "
    "than it uses per token. When the experts do not fit in GPU memory they are kept in host memory and copied "
    "over PCIe when needed; the copy is then the bottleneck, and predicting which experts come next decides how "
    "much of it can be hidden behind computation."
)


@register("workload", "builtin")
class BuiltinWorkload(Workload):
    name = "builtin"

    def __init__(
        self,
        prompts: Sequence[str] | None = None,
        max_new_tokens: int = 16,
        batch_size: int = 1,
        num_prompts: int | None = None,
        reference_text: str | None = None,
        ppl_tokens: int = 128,
        ppl_docs: int = 1,
    ):
        super().__init__(
            prompts if prompts is not None else PROMPTS, max_new_tokens, batch_size, num_prompts,
            reference_text if reference_text is not None else REFERENCE_TEXT, ppl_tokens, ppl_docs,
        )
