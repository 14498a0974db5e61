"""Attention masks, built once per forward pass and shared by every layer.

A mask is either ``None`` (attend everywhere, or let SDPA apply ``is_causal`` on its fast
path) or an additive float tensor broadcastable to (B, heads, Lq, Lk): 0 where attention is
allowed and the dtype's minimum where not. The minimum rather than ``-inf`` keeps a fully
masked row (a padding query) finite, as the reference implementations do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMask:
    """What one attention call needs: an additive mask (or None) and the causal flag."""

    bias: torch.Tensor | None
    is_causal: bool = False


def allowed_positions(
    query_len: int,
    key_len: int,
    *,
    past_len: int = 0,
    causal: bool = False,
    window: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Boolean (Lq, Lk) pattern of causal and/or banded attention, or None if all allowed.

    Queries sit at positions ``past_len .. past_len + query_len``; keys at ``0 .. key_len``.
    ``window`` keeps only keys within ``window`` positions of the query (locally banded).
    """
    if not causal and window is None:
        return None
    query_pos = torch.arange(past_len, past_len + query_len, device=device)[:, None]
    key_pos = torch.arange(key_len, device=device)[None, :]
    allowed = torch.ones(query_len, key_len, dtype=torch.bool, device=device)
    if causal:
        allowed &= key_pos <= query_pos
    if window is not None:
        allowed &= (query_pos - key_pos).abs() < window
    return allowed


def build_mask(
    query_len: int,
    key_len: int,
    *,
    key_padding: torch.Tensor | None = None,
    past_len: int = 0,
    causal: bool = False,
    window: int | None = None,
    position_bias: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> AttentionMask:
    """Combine padding, causal, local-band and relative-position bias into one mask.

    ``key_padding``: (B, Lk) with 1/True for real tokens. ``position_bias``: (1, H, Lq, Lk).
    """
    if (
        key_padding is not None
        and key_padding.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and bool(key_padding.all())
    ):
        key_padding = None  # no padding after all: keep the fast paths (free on CPU; on a GPU
        # this check would be a host sync, and in a compiled graph a break: there the mask
        # is simply applied)
    if key_padding is None and position_bias is None and window is None:
        if not causal or query_len == 1:  # a single new query may see every cached key
            return AttentionMask(None)
        if query_len == key_len and past_len == 0:
            return AttentionMask(None, is_causal=True)  # SDPA's fast causal path
    pattern = allowed_positions(
        query_len, key_len, past_len=past_len, causal=causal, window=window, device=device
    )
    allowed = None if pattern is None else pattern[None, None]  # (1, 1, Lq, Lk)
    if key_padding is not None:
        keep = key_padding.bool()[:, None, None, :]  # (B, 1, 1, Lk)
        allowed = keep if allowed is None else allowed & keep
    bias = position_bias.to(dtype) if position_bias is not None else None
    if allowed is not None:
        blocked = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
        bias = blocked if bias is None else bias + blocked
    return AttentionMask(bias)
