"""Lesson 06's dashboards: the vector add's launch grid, and the fused cross-entropy's memory.

frugal.kernels is imported inside each dashboard: it refuses to import without Triton, and every other
lesson's dashboards must work without it.
"""
from __future__ import annotations

import time

import ipywidgets as W
import torch
from IPython.display import display

from frugal import plots
from frugal.device import pick_device
from frugal.measure import count_saved_tensors
from frugal.widgets._common import _dashboard


def vector_add_explorer(n: int = 3000, device: str | None = None) -> W.Widget:
    """Block-size and size sliders: the grid the add launches (programs, masked lanes), run for real, timed."""
    from frugal.kernels.vector_add import vector_add
    device = pick_device(device)
    controls = {
        "block_size": W.SelectionSlider(options=[2 ** k for k in range(4, 15)], value=1024,
                                        description="BLOCK_SIZE", continuous_update=False),
        "n": W.IntSlider(value=n, min=1, max=20000, step=1, description="elements", continuous_update=False),
    }

    def draw(block_size, n):
        x, y = torch.randn(n, device=device), torch.randn(n, device=device)
        vector_add(x, y, block_size)                                  # warm-up (compile on a GPU)
        t0 = time.perf_counter()
        out = vector_add(x, y, block_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        where = "GPU" if device.type == "cuda" else "CPU, through Triton's interpreter (slow: it runs each program in Python)"
        print(f"{-(-n // block_size)} programs; equals torch.add: {torch.equal(out, x + y)}; "
              f"{dt * 1e3:.2f} ms on {where}")
        display(plots.kernel_grid(n, block_size))

    return _dashboard(controls, draw)


def cross_entropy_memory_explorer(model, device: str | None = None, live_tokens: int = 4096) -> W.Widget:
    """Vocabulary, tokens and width sliders on the head's estimated peak memory, chunked or not; and the
    live TinyGPT's loss through both heads on as many tokens as the slider says (up to live_tokens, so a
    CPU answers in a second), with the bytes each saves for backward."""
    from frugal.kernels.fused_linear_cross_entropy import default_chunk_size, estimate_linear_cross_entropy_memory
    controls = {
        "vocab": W.SelectionSlider(options=[2 ** k for k in range(8, 19)], value=2 ** 16, description="vocab",
                                   continuous_update=False),
        "tokens": W.SelectionSlider(options=[2 ** k for k in range(9, 21)], value=2 ** 13, description="tokens",
                                    continuous_update=False),
        "n_embd": W.Dropdown(options=[256, 768, 1024, 2048, 4096], value=768, description="n_embd"),
    }
    cfg = model.cfg
    device = next(model.parameters()).device
    seq = min(32, cfg.block_size)

    def draw(vocab, tokens, n_embd):
        live = min(tokens, live_tokens)                  # the live model's batch follows the tokens slider
        x = torch.randint(cfg.vocab_size, (2, max(1, live // seq), seq), generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        saved, losses = {}, {}
        for fused in (False, True):
            model.fused_cross_entropy = fused
            with count_saved_tensors(exclude=list(model.parameters())) as rec:
                losses[fused] = model(x[0], x[1])[1].item()
            saved[fused] = rec.nbytes
        model.fused_cross_entropy = False
        capped = f", capped at {live_tokens}" if tokens > live_tokens else ""
        print(f"live TinyGPT (vocab {cfg.vocab_size}, fixed; {x[0].numel()} tokens{capped}): loss {losses[False]:.5f} "
              f"unfused, {losses[True]:.5f} chunked;\n  saved for backward {plots.human_bytes(saved[False])} "
              f"unfused vs {plots.human_bytes(saved[True])} chunked")
        vocabs, token_counts = [2 ** k for k in range(8, 19)], [2 ** k for k in range(9, 21)]
        est = lambda t, v, chunk: estimate_linear_cross_entropy_memory(t, v, n_embd, chunk)
        by_vocab = {"unfused": (vocabs, [est(tokens, v, None) for v in vocabs]),
                    "chunked": (vocabs, [est(tokens, v, default_chunk_size(tokens, v)) for v in vocabs])}
        by_tokens = {"unfused": (token_counts, [est(t, vocab, None) for t in token_counts]),
                     "chunked": (token_counts, [est(t, vocab, default_chunk_size(t, vocab))
                                                for t in token_counts])}
        u, c = est(tokens, vocab, None), est(tokens, vocab, default_chunk_size(tokens, vocab))
        print(f"estimate at vocab {vocab:,}, {tokens:,} tokens, n_embd {n_embd} (fp32): unfused "
              f"{plots.human_bytes(u)}, chunked {plots.human_bytes(c)} ({c / u:.2f}x)")
        display(plots.cross_entropy_memory(by_vocab, by_tokens, vocab=vocab, tokens=tokens))

    return _dashboard(controls, draw, columns=3)
