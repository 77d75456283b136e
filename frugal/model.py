"""TinyGPT: the one model every lesson trains, from 0.1M parameters on a laptop to GPT-2 small on a GPU.

A GPT-2-style decoder (Radford et al. 2019): pre-norm blocks, causal self-attention through
F.scaled_dot_product_attention, a 4x GELU MLP, tied input/output embeddings. Its blocks are a
plain nn.ModuleList (`model.blocks`) so later lessons can checkpoint, shard or split them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 256     # tokens; 256 = the byte-level tokenizer of frugal.data
    block_size: int = 64      # longest sequence the model accepts (learned positions)
    n_layer: int = 2          # transformer blocks
    n_head: int = 4           # attention heads per block; must divide n_embd
    n_embd: int = 64          # hidden size d
    dropout: float = 0.0      # dropout on attention, residual and embeddings (0 = deterministic)
    bias: bool = True         # biases in Linear and LayerNorm, as GPT-2

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name}={value!r}: must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                f"pick n_embd a multiple of n_head (e.g. {self.n_head * max(1, self.n_embd // self.n_head)})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Named sizes. 'gpt2-small' is GPT-2 small (124M) with its vocabulary padded to a multiple of 64.
PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=64),
    "small": GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128),
    "medium": GPTConfig(vocab_size=256, block_size=256, n_layer=6, n_head=8, n_embd=256),
    "gpt2-small": GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(vocab_size=50304, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
}


def preset(name: str, **overrides) -> GPTConfig:
    """A copy of a named size, with fields overridden: preset('tiny', n_layer=4)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: pick one of {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(GPTConfig)})
    if unknown:
        raise TypeError(f"preset({name!r}, {', '.join(unknown)}=...): GPTConfig has no such field; "
                        f"its fields are {[f.name for f in fields(GPTConfig)]}")
    return replace(PRESETS[name], **overrides)


class AttentionCore(nn.Module):
    """softmax(q·kᵀ/√d, causal) · v through F.scaled_dot_product_attention: no weights, T² work per head.
    A module of its own so a policy can name it (lesson 02's selective recompute keeps its output)."""

    def __init__(self, dropout: float):
        super().__init__()
        self.dropout = dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                              is_causal=True)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.core = AttentionCore(cfg.dropout)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                           # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, nh, T, hs)
        y = self.core(q, k, v)                                              # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                    # (B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(self.gelu(self.c_fc(x))))              # (B, T, C)


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class TinyGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)   # token embedding, tied with lm_head
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)   # learned positions
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight                   # tied embeddings
        self.recompute = None    # lesson 02: a frugal.recompute.Recompute that runs the blocks, or None (plain)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():                 # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting the tied embedding once; non_embedding drops token and position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n

    def _check_ids(self, ids: torch.Tensor, what: str) -> None:
        """Token ids must be a (B, T) integer tensor of ids in [0, vocab_size); values are checked on CPU only
        (on a GPU the check would wait for the device every step)."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{what} is a {type(ids).__name__}: pass a (B, T) torch.long tensor of token ids")
        if ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"{what} has dtype {ids.dtype}: token ids are integers; pass {what}.long()")
        if ids.dim() != 2:
            raise ValueError(f"{what} has shape {tuple(ids.shape)}: pass (batch, time), e.g. {what}[None] for one "
                             f"sequence")
        if ids.device.type == "cpu" and ids.numel() and not torch.compiler.is_compiling():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.cfg.vocab_size:
                raise ValueError(f"{what} holds ids from {lo} to {hi}, outside [0, vocab_size={self.cfg.vocab_size}): "
                                 f"tokenize with the model's vocabulary or raise GPTConfig.vocab_size")

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        self._check_ids(idx, "idx")
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(
                f"sequence length {T} is longer than block_size={self.cfg.block_size}: "
                f"use seq_len <= {self.cfg.block_size} or a GPTConfig with a larger block_size"
            )
        pos = torch.arange(T, device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))                       # (B, T, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, V) and, given targets (B, T), the mean cross-entropy loss (else None).

        With `model.fused_cross_entropy = True` and targets, the loss is chunked and logits come back None."""
        x = self.embed(idx)
        if targets is not None:
            self._check_ids(targets, "targets")
            if targets.shape != idx.shape:
                raise ValueError(f"targets {tuple(targets.shape)} and idx {tuple(idx.shape)} differ in shape: each "
                                 f"position needs one target (the next token)")
        if self.recompute is not None:                                       # activation checkpointing
            x = self.recompute(self.blocks, x)
        else:
            for block in self.blocks:
                x = block(x)
        x = self.ln_f(x)
        if targets is not None and getattr(self, "fused_cross_entropy", False):
            # lesson 06: projection + loss chunk by chunk, the (B·T, V) logits never exist (so none are returned)
            from frugal.kernels.fused_linear_cross_entropy import linear_cross_entropy
            return None, linear_cross_entropy(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
        logits = self.lm_head(x)                                             # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample max_new_tokens tokens after idx (B, T), cropping the context to block_size; temperature=0 is
        greedy (always the most likely token)."""
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature={temperature}: pick a finite number >= 0 (1.0 samples the model's "
                             f"distribution, lower is more conservative, 0 is greedy)")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: pick a whole number >= 0")
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            if temperature == 0:
                nxt = logits[:, -1, :].argmax(dim=-1, keepdim=True)             # (B, 1)
            else:
                probs = F.softmax(logits[:, -1, :] / temperature, dim=-1)       # (B, V)
                nxt = torch.multinomial(probs, 1, generator=generator)          # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
