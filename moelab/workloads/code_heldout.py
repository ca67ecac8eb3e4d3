"""Prompts cut from the held-out split of the training corpus (the installed Python sources), made at run time.

The held-out files are the ones the trainer never saw: the same path hash and `val_permille` as
`moelab.train` (its v1 recipe holds out 10 per mille). `split=train` cuts them from the training
files instead, for what must not see the held-out ones (the learned predictors' training traces).
Files are taken in hash order; from each,
one prompt of `prompt_lines` lines starts at a line chosen from the file's own hash, so the prompts
depend only on which files are installed, not on the machine's other state or a seed.
"""

from __future__ import annotations

import functools
import random

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.train.corpus import SourceFile, list_sources, read_split
from moelab.workloads.base import Workload

SPLITS = ("heldout", "train")


@functools.lru_cache(maxsize=8)
def heldout_texts(val_permille: int, max_files: int, split: str = "heldout") -> tuple[tuple[SourceFile, str], ...]:
    """The first `max_files` sources of `split` in hash order; cached, since listing the installed sources takes
    seconds and every run of a sweep builds its workload again."""
    out = []
    for f, text in read_split(list_sources(), split == "heldout", val_permille, max_bytes=1 << 62):
        out.append((f, text))
        if len(out) >= max_files:
            break
    return tuple(out)


def cut_prompt(f: SourceFile, text: str, prompt_lines: int) -> str | None:
    """`prompt_lines` consecutive lines ending just before a non-blank line (what the model is to continue)."""
    lines = text.splitlines(keepends=True)
    ends = [i for i in range(prompt_lines, len(lines)) if lines[i].strip()]
    if not ends:
        return None
    end = ends[random.Random(f.digest).randrange(len(ends))]
    prompt = "".join(lines[end - prompt_lines : end])
    return prompt if prompt.strip() else None


@register("workload", "code_heldout")
class CodeHeldoutWorkload(Workload):
    name = "code_heldout"

    def __init__(
        self,
        num_prompts: int = 8,
        prompt_lines: int = 12,
        max_new_tokens: int = 32,
        batch_size: int = 1,
        ppl_docs: int = 8,
        ppl_tokens: int = 512,
        val_permille: int = 10,
        split: str = "heldout",
    ):
        if split not in SPLITS:
            raise ConfigError(f"workload.split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not 1 <= int(val_permille) <= 1000:
            raise ConfigError(f"workload.val_permille must be in 1..1000 (the trainer's held-out share), "
                              f"got {val_permille}")
        if int(prompt_lines) < 1:
            raise ConfigError(f"workload.prompt_lines must be >= 1, got {prompt_lines}")
        if int(num_prompts) < 1:
            raise ConfigError(f"workload.num_prompts must be >= 1, got {num_prompts}")
        files = heldout_texts(int(val_permille), int(num_prompts) * 4 + int(ppl_docs), split)
        prompts = []
        used = 0
        for used, (f, text) in enumerate(files, 1):  # noqa: B007 (used is read after the loop)
            p = cut_prompt(f, text, int(prompt_lines))
            if p is not None:
                prompts.append(p)
            if len(prompts) == int(num_prompts):
                break
        if not prompts:
            raise ConfigError(f"no {split} Python source with more than {prompt_lines} lines was found "
                              f"(val_permille={val_permille}); lower workload.prompt_lines")
        # perplexity documents: the held-out files after the ones prompts were cut from
        self.docs = [text for _, text in files[used : used + int(ppl_docs)]]
        self.sources = [f for f, _ in files[:used]]
        self.split = split
        super().__init__(prompts, max_new_tokens, batch_size, None, None, ppl_tokens, ppl_docs)

    def ppl_texts(self) -> list[str]:
        return self.docs[: self.ppl_docs]

    def describe(self) -> dict[str, str]:
        split = "held-out" if self.split == "heldout" else "training-split"
        return {"workload_source": f"{split} installed Python sources ({len(self.sources)} files)"}
