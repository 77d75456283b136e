"""The shipped corpus, a byte-level tokenizer and batches.

The corpus is an excerpt of the King James Bible (public domain): Genesis, Exodus, Job, Psalms,
Proverbs, Ecclesiastes and the Song of Songs, about 0.8 MB of ASCII text, so lessons run offline.
"""
from __future__ import annotations

from importlib import resources

import torch

CORPUS_FILE = "kjv_excerpt.txt"


def load_corpus() -> str:
    """The shipped text, as one string."""
    return resources.files("frugal").joinpath("corpus", CORPUS_FILE).read_text(encoding="utf-8")


class ByteTokenizer:
    """Text to token ids and back: one token per UTF-8 byte, so vocab_size is 256 and nothing is unknown."""

    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def corpus_tokens() -> torch.Tensor:
    """The whole corpus as a 1-D tensor of byte ids."""
    return ByteTokenizer().encode(load_corpus())


def split(tokens: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val): the last val_fraction of the tokens is held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: must be in (0, 1)")
    n = int(len(tokens) * (1 - val_fraction))
    return tokens[:n], tokens[n:]


def _check_batch(batch_size: int, seq_len: int) -> None:
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}={v!r}: must be a positive whole number")


def get_batch(tokens: torch.Tensor, batch_size: int, seq_len: int,
              generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
    """Random windows of the token stream: inputs x (B, T) and next-token targets y (B, T)."""
    _check_batch(batch_size, seq_len)
    if len(tokens) <= seq_len:
        raise ValueError(f"seq_len={seq_len} needs more than {seq_len} tokens, got {len(tokens)}")
    starts = torch.randint(len(tokens) - seq_len, (batch_size,), generator=generator)
    x = torch.stack([tokens[s: s + seq_len] for s in starts.tolist()])          # (B, T)
    y = torch.stack([tokens[s + 1: s + 1 + seq_len] for s in starts.tolist()])  # (B, T)
    return x.to(device), y.to(device)


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
    """Uniformly random tokens for benchmarks (never zeros): x and y, each (B, T)."""
    _check_batch(batch_size, seq_len)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size!r}: must be a whole number >= 2 (the model's GPTConfig.vocab_size)")
    xy = torch.randint(vocab_size, (batch_size, seq_len + 1), generator=generator)
    return xy[:, :-1].to(device), xy[:, 1:].to(device)
