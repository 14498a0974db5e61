"""What the models return: small dataclasses, one per form.

Per-layer lists, when asked for: ``*hidden_states`` holds the input of every layer then the
final output; ``*attentions`` the attention probabilities of every layer, (B, heads, Lq, Lk)
each (transformers' names and shapes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from triform.nn.cache import KVCache


@dataclass
class EncoderOutput:
    """``logits``: (B, L, V) for a masked-LM head ((N, V) at the positions ``logits_at``
    selects), (B, L) for replaced-token detection, None without a head or when ``labels``
    were given. ``pair_logits``: (B, 2) from an NSP/SOP head. ``loss`` / ``predictions``: see
    :class:`DecoderOutput`."""

    last_hidden_state: torch.Tensor
    logits: torch.Tensor | None = None
    pair_logits: torch.Tensor | None = None
    pooled_output: torch.Tensor | None = None
    hidden_states: list[torch.Tensor] | None = None
    attentions: list[torch.Tensor] | None = None
    loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None


@dataclass
class DecoderOutput:
    """``logits``: (B, L, V) next-token scores, or (N, V) at the positions ``logits_at``
    selects, or None when ``labels`` were given. ``loss``: with ``labels``, the mean token
    cross entropy at the labelled positions, fused with the vocabulary projection (no logits
    kept); ``predictions``: (N,) the argmax there (row-major order of the labelled positions,
    for accuracy)."""

    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor
    hidden_states: list[torch.Tensor] | None = None
    past_key_values: KVCache | None = None
    attentions: list[torch.Tensor] | None = None
    loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None


@dataclass
class Seq2SeqOutput:
    """``logits``: (B, T, V) over the decoder positions ((N, V) with ``logits_at``, None with
    ``labels``); ``loss`` / ``predictions``: see :class:`DecoderOutput`. Attentions: the
    encoder's (B, h, S, S), the decoder's (B, h, T, past + T) and the decoder's over the
    encoder (B, h, T, S)."""

    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor
    encoder_last_hidden_state: torch.Tensor
    encoder_hidden_states: list[torch.Tensor] | None = None
    decoder_hidden_states: list[torch.Tensor] | None = None
    past_key_values: KVCache | None = None
    encoder_attentions: list[torch.Tensor] | None = None
    decoder_attentions: list[torch.Tensor] | None = None
    cross_attentions: list[torch.Tensor] | None = None
    loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
