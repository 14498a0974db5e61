"""Multi-head attention, written once for every form: self or cross, dense or locally
banded, with padding/causal masks, relative bias, rotary positions and a KV cache.

Attention runs through ``scaled_dot_product_attention``, except where softmax(QK^T * scale +
mask) computed explicitly is what is asked for (a ``weights`` list to keep the probabilities
in) or is faster (:func:`explicit_is_faster`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triform.config import ModelConfig
from triform.nn.cache import KVCache
from triform.nn.linear import Linear
from triform.nn.masks import AttentionMask, allowed_positions
from triform.nn.positions import RotaryEmbedding
from triform.runtime.cpu_paths import eager_cpu_autograd


class Attention(nn.Module):
    """Scaled dot-product attention over ``num_heads`` heads.

    Self-attention projects queries, keys and values with one fused linear (``qkv``);
    cross-attention projects queries from the decoder (``q``) and keys/values from the
    encoder output with one fused linear (``kv``).
    """

    def __init__(self, config: ModelConfig, *, cross: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_size
        inner = self.num_heads * self.head_dim
        hidden, bias = config.hidden_size, config.bias
        self.cross = cross
        if cross:
            self.q = Linear(hidden, inner, bias=bias)
            self.kv = Linear(hidden, 2 * inner, bias=bias)
        else:
            self.qkv = Linear(hidden, 3 * inner, bias=bias)
        self.out = Linear(inner, hidden, bias=bias)
        self.scale = config.attention_scale
        self.dropout = config.attention_dropout

    def _heads(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(B, L, parts * heads * D) -> ``parts`` tensors of shape (B, heads, L, D)."""
        batch, length, _ = x.shape
        # Unbound at the parts dimension, so that the backward stacks the parts' gradients
        # straight into (B, L, parts, heads, D): one copy, where unbinding a permuted view
        # stacks and then copies again to undo the permutation.
        x = x.view(batch, length, parts, self.num_heads, self.head_dim)
        return tuple(part.transpose(1, 2) for part in x.unbind(2))

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        *,
        context: torch.Tensor | None = None,
        rotary: tuple[RotaryEmbedding, torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, Lq, H); context: (B, Lk, H) encoder output for cross-attention. -> (B, Lq, H)

        Given a ``weights`` list, the attention probabilities (B, heads, Lq, Lk) are
        appended to it."""
        if self.cross:
            (q,) = self._heads(self.q(x), 1)
            cached = cache.cross_kv[layer] if cache is not None else None
            if cached is None:
                k, v = self._heads(self.kv(context), 2)
                if cache is not None:
                    cache.cross_kv[layer] = (k, v)
            else:
                k, v = cached
        else:
            q, k, v = self._heads(self.qkv(x), 3)
            if rotary is not None:
                rope, cos, sin = rotary
                q, k = rope.apply(q, cos, sin), rope.apply(k, cos, sin)
            if cache is not None:
                k, v = cache.append(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if weights is not None:
            out, probs = self._explicit(q, k, v, mask, dropout)
            weights.append(probs)
        elif explicit_is_faster(q, k, mask.bias):
            out, _ = self._explicit(q, k, v, mask, dropout)
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask.bias,
                dropout_p=dropout,
                is_causal=mask.is_causal,
                scale=self.scale,
            )  # (B, heads, Lq, D)
        batch, _, length, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(batch, length, -1))

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, dropout: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What SDPA computes, step by step: (B, h, Lq, D) queries over (B, h, Lk, D) keys
        and values -> output (B, h, Lq, D) and probabilities (B, h, Lq, Lk)."""
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, h, Lq, Lk)
        if scale != 1.0:  # T5 does not scale
            scores = scores * scale
        if mask.bias is not None:
            scores = scores + mask.bias
        if mask.is_causal:
            allowed = allowed_positions(
                q.shape[-2],
                k.shape[-2],
                past_len=k.shape[-2] - q.shape[-2],
                causal=True,
                device=q.device,
            )
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        attended = F.dropout(probs, dropout) if dropout else probs
        return torch.matmul(attended, v), probs


# Where the explicit path trains faster in bf16 on a CPU (see below), and the most
# scores (B * h * Lq * Lk) it may hold: each layer keeps them for the backward, fp32 and bf16.
EXPLICIT_MAX_KEYS = 512
EXPLICIT_MAX_SCORES = 1 << 23  # 50 MB a layer


def explicit_is_faster(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether attention over queries ``q`` (B, h, Lq, D) and keys ``k`` (B, h, Lk, D), with
    an additive ``bias`` (broadcast to (B, h, Lq, Lk)) or none, is faster explicitly (matmul,
    softmax, matmul) than through SDPA when training on a CPU:

    - in bf16 with at most :data:`EXPLICIT_MAX_KEYS` keys, where SDPA's CPU kernel takes
      several times as long forward + backward; at a thousand keys and more the explicit
      (B, h, L, L) scores cost more than they save, and in fp32 the two are even at short
      lengths and SDPA is faster beyond. Unlike SDPA's kernel, the explicit path keeps every
      layer's scores for the backward, so it is taken only while they stay under
      :data:`EXPLICIT_MAX_SCORES`. This is what ``transformers``' eager attention computes
      in bf16 (the scores rounded to bf16, the softmax in fp32).
    - with a bias that learns (T5's relative positions), in any precision: SDPA's CPU kernel
      takes no bias gradient, so SDPA falls back to its own explicit computation, which
      adds two scalings of q and k (by 1 for T5) and a guarded softmax (checks for rows with
      no allowed key, which triform's finite masks never leave).

    The measurements behind both rules: docs/performance-notes.md, "Attention"."""
    if not eager_cpu_autograd(q):
        return False
    if bias is not None and bias.requires_grad:
        return True
    batch, heads, queries, _ = q.shape
    keys = k.shape[-2]
    return (
        q.dtype == torch.bfloat16
        and keys <= EXPLICIT_MAX_KEYS
        and batch * heads * queries * keys <= EXPLICIT_MAX_SCORES
    )
