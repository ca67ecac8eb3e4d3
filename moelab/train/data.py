"""Token streams on disk (uint16 when the vocabulary allows) and random training windows over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def encode_to_file(texts: list[str], tok, path: Path, chunk: int = 512) -> int:
    """Encode texts (EOS after each file) into one flat array at `path`; returns its token count."""
    eos = tok.eos_token_id
    dtype = np.uint16 if len(tok) < 2**16 else np.int32
    parts = []
    backend = tok.backend_tokenizer
    for i in range(0, len(texts), chunk):
        for enc in backend.encode_batch(texts[i : i + chunk]):
            parts.append(np.asarray(enc.ids + [eos], dtype=dtype))
    arr = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return int(arr.size)


class TokenWindows:
    """Random (input, target) windows of `seq_len` tokens from one stream."""

    def __init__(self, path: Path, seq_len: int, seed: int):
        self.tokens = torch.from_numpy(np.load(path).astype(np.int64))
        if self.tokens.numel() <= seq_len + 1:
            raise ValueError(f"{path} has {self.tokens.numel()} tokens, fewer than seq_len={seq_len} + 1")
        self.seq_len = seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, self.tokens.numel() - self.seq_len - 1, (batch_size,), generator=self.gen)
        idx = starts[:, None] + torch.arange(self.seq_len + 1)
        w = self.tokens[idx]
        return w[:, :-1].to(device, non_blocking=True), w[:, 1:].to(device, non_blocking=True)

    def fixed_batches(self, n: int, batch_size: int, device: torch.device, seed: int = 1234):
        """The same `n` batches every time (for validation)."""
        gen, self.gen = self.gen, torch.Generator().manual_seed(seed)
        try:
            return [self.batch(batch_size, device) for _ in range(n)]
        finally:
            self.gen = gen
