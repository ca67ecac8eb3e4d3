"""Tokenizers: the checkpoint's own, or a byte-level stand-in for models built from config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moelab.models.hub import has_tokenizer


class ByteTokenizer:
    """UTF-8 bytes shifted past a few special ids, folded into the vocabulary.

    Random-weight models have no tokenizer; this gives them deterministic token ids for the
    built-in prompts so that every run of the same config sees the same inputs.
    """

    offset = 3

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eos_token_id = None
        self.pad_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [(b + self.offset) % self.vocab_size for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes((i - self.offset) % 256 for i in ids if i >= self.offset).decode("utf-8", errors="replace")


class HfTokenizer:
    """A transformers tokenizer behind the same two-method interface."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.eos_token_id = tok.eos_token_id
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


def load_tokenizer(path: Path | None, config: Any) -> ByteTokenizer | HfTokenizer:
    if path is not None and has_tokenizer(path):
        from transformers import AutoTokenizer

        return HfTokenizer(AutoTokenizer.from_pretrained(str(path)))
    return ByteTokenizer(int(config.vocab_size))
