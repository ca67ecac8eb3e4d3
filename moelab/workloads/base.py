"""A workload: the prompts a run generates from, how much, and the text perplexity is measured on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from moelab.core.errors import ConfigError

Encode = Callable[[str], list[int]]


class Workload:
    name = "workload"

    def __init__(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        batch_size: int = 1,
        num_prompts: int | None = None,
        reference_text: str | None = None,
        ppl_tokens: int = 128,
        ppl_docs: int = 1,
    ):
        if int(max_new_tokens) < 1:
            raise ConfigError(f"workload.max_new_tokens must be >= 1, got {max_new_tokens}")
        if int(batch_size) < 1:
            raise ConfigError(f"workload.batch_size must be >= 1, got {batch_size}")
        if num_prompts is not None and int(num_prompts) < 1:
            raise ConfigError(f"workload.num_prompts must be >= 1 (or null for all), got {num_prompts}")
        if int(ppl_tokens) < 0:
            raise ConfigError(f"workload.ppl_tokens must be >= 0 (0 skips perplexity), got {ppl_tokens}")
        if int(ppl_docs) < 0:
            raise ConfigError(f"workload.ppl_docs must be >= 0 (0 skips perplexity), got {ppl_docs}")
        prompts = [str(p) for p in prompts]
        if not prompts or any(not p for p in prompts):
            raise ConfigError("workload.prompts must be a non-empty list of non-empty strings")
        self.prompts = prompts[: int(num_prompts)] if num_prompts is not None else prompts
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.reference_text = reference_text
        self.ppl_tokens = int(ppl_tokens)
        self.ppl_docs = int(ppl_docs)

    def prepare(self, encode: Encode) -> None:
        """Settle the prompts once the tokenizer is known (before any weight is read). Workloads that filter
        prompts by their token length do it here, and fail here when nothing is left."""

    def ppl_texts(self) -> list[str]:
        """The documents perplexity is measured on (at most `ppl_docs`)."""
        return [self.reference_text][: self.ppl_docs] if self.reference_text else []

    def ppl_ids(self, encode: Encode) -> list[list[int]]:
        """Token ids of the perplexity documents, each cut to its first `ppl_tokens` tokens."""
        if self.ppl_tokens == 0:
            return []
        ids = [encode(t)[: self.ppl_tokens] for t in self.ppl_texts()]
        return [i for i in ids if len(i) >= 2]

    def describe(self) -> dict[str, str]:
        """Columns the run's row gets about where the prompts came from."""
        return {}

    def batches(self, encode: Encode) -> list[list[list[int]]]:
        """Token ids of the prompts, grouped into batches of `batch_size`."""
        self.prepare(encode)
        ids = [encode(p) for p in self.prompts]
        return [ids[i : i + self.batch_size] for i in range(0, len(ids), self.batch_size)]
