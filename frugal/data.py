"""The shipped corpus, a byte-level tokenizer, `load_tokens` for any text source, the split and batches.

The corpus is an excerpt of the King James Bible (public domain): Genesis, Exodus, Job, Psalms,
Proverbs, Ecclesiastes and the Song of Songs, about 0.8 MB of ASCII text, so lessons run offline.
The split is fixed: the last VAL_FRACTION of a source's token stream (files in sorted path order) is
held out for validation, the rest trains.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from frugal import data_sources

CORPUS_FILE = "kjv_excerpt.txt"
VAL_FRACTION = 0.1        # the held-out tail of every source
NAMED_SOURCES = ("corpus", "stdlib")


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


def load_tokens(source: str, *, glob: str | None = None, cache_dir: str | Path | None = None,
                tokenizer: str = "byte") -> torch.Tensor:
    """Token ids (1-D int64) of 'corpus', 'stdlib' (this Python's standard library source, about 31 MB on 3.11),
    a file or folder (files matching glob, e.g. '**/*.py'), or 'hf:NAME[:CONFIG]' (needs `datasets`).

    Everything but the corpus is tokenized once and kept in cache_dir (default ~/.cache/frugal/tokens) as a
    memory-mapped uint16 array, keyed by the source, glob, tokenizer and each file's size and modification time.
    """
    check_source(source)
    source = str(source)
    if glob is not None and (source in NAMED_SOURCES or source.startswith("hf:") or Path(source).is_file()):
        raise ValueError(f"glob={glob!r} applies to a folder, not to data={source!r}: drop glob or pass a folder")
    if source == "corpus" and tokenizer == "byte":
        return corpus_tokens()
    cache = Path(cache_dir) if cache_dir is not None else data_sources.default_cache_dir()
    if source == "corpus":
        encode = data_sources.encoder(tokenizer)
        ids = encode(load_corpus().encode("utf-8"))
    elif source.startswith("hf:"):
        ids = data_sources.hf_tokens(source, tokenizer, cache)
    else:
        ids = data_sources.local_tokens(source, glob, tokenizer, cache)
    if len(ids) == 0:
        raise ValueError(f"data={source!r} holds no text (0 tokens): point it at files with something in them")
    return torch.from_numpy(np.asarray(ids, dtype=np.int64))


def check_source(source) -> None:
    """Refuse a data source load_tokens cannot read, naming the ones it can."""
    if not isinstance(source, (str, Path)):
        raise TypeError(f"data={source!r}: pass a string, 'corpus', 'stdlib', 'hf:NAME[:CONFIG]' or a path")
    source = str(source)
    if source in NAMED_SOURCES or source.startswith("hf:") or Path(source).expanduser().exists():
        return
    raise ValueError(f"data={source!r}: pick 'corpus' (the shipped text), 'stdlib' (Python's own source), "
                     f"'hf:NAME[:CONFIG]' (a Hugging Face dataset) or a file or folder that exists")


def check_long_enough(tokens: torch.Tensor, seq_len: int, what: str) -> None:
    """A window of seq_len inputs needs seq_len + 1 tokens; refuse a shorter stream, naming the fix."""
    if len(tokens) <= seq_len:
        raise ValueError(f"{what} has {len(tokens)} tokens, fewer than one sequence of seq_len={seq_len} plus its "
                         f"target: lower seq_len below {len(tokens)} or use more text")


def validation_batches(val: torch.Tensor, n_batches: int, batch_size: int, seq_len: int) -> list[tuple]:
    """n_batches fixed (x, y) batches of the held-out tokens: windows at evenly spaced starts, so every
    evaluation of a run sees the same tokens and they cover the whole validation stream."""
    check_long_enough(val, seq_len, "the validation split")
    _check_batch(batch_size, seq_len)
    starts = torch.linspace(0, len(val) - seq_len - 1, n_batches * batch_size).long().tolist()
    x = torch.stack([val[s: s + seq_len] for s in starts]).view(n_batches, batch_size, seq_len)       # (K, B, T)
    y = torch.stack([val[s + 1: s + 1 + seq_len] for s in starts]).view(n_batches, batch_size, seq_len)
    return list(zip(x.unbind(0), y.unbind(0)))


def split(tokens: torch.Tensor, val_fraction: float = VAL_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
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
    check_long_enough(tokens, seq_len, f"seq_len={seq_len}: the token stream")
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
