"""What every triform model shares: its config, parameter counting, initialisation, and the
one pass of tokens through embeddings and a stack that every encoder and decoder makes."""

from __future__ import annotations

import math

import torch
from torch import nn

from triform.config import ModelConfig
from triform.models.heads import LMHead
from triform.nn.cache import KVCache
from triform.nn.embeddings import Embeddings, TiedTable, make_position_ids
from triform.nn.positions import RelativePositionBias
from triform.nn.stack import Stack, StackOutput
from triform.runtime.packed import is_plain_tensor

# Layers that write into the residual stream (scaled init, GPT-2).
_RESIDUAL_PROJECTIONS = ("self_attn.out.weight", "cross_attn.out.weight", "ffn.down.weight")


class TransformerModel(nn.Module):
    """Base class of :class:`EncoderModel`, :class:`DecoderModel` and
    :class:`EncoderDecoderModel`."""

    config: ModelConfig

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of distinct parameters (tied weights counted once).

        ``non_embedding=True`` leaves out token, segment and position tables, as scaling-law
        papers count; a vocabulary projection tied to the token table is left out with it.
        """
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            for module in self.modules():
                if isinstance(module, nn.Embedding) and _is_input_table(self, module):
                    params.pop(id(module.weight), None)
        return sum(p.numel() for p in params.values())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def init_weights(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; GPT-2's residual projections
        scaled by 1/sqrt(2 * layers) when ``scaled_residual_init`` is set."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and "relative_bias" not in name:
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.config.scaled_residual_init:
            residual_std = std / math.sqrt(2 * self.config.num_layers)
            for name, param in self.named_parameters():
                if name.endswith(_RESIDUAL_PROJECTIONS):
                    nn.init.normal_(param, 0.0, residual_std)


def run_stack(
    embeddings: Embeddings,
    stack: Stack,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: KVCache | None = None,
    use_cache: bool = False,
    context: torch.Tensor | None = None,
    context_padding_mask: torch.Tensor | None = None,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    tie: TiedTable | None = None,
) -> StackOutput:
    """Token ids (B, L) -> embeddings -> ``stack``: the one pass every encoder and decoder
    (alone or as half of an encoder-decoder) makes. Positions continue after the cached ones.
    ``context``: (B, S, H) encoder output for a decoder with cross-attention.
    ``tie``: the forward's tied token table (:func:`tied_table`)."""
    if position_ids is None:
        past_len = cache.length if cache is not None else 0
        position_ids = make_position_ids(stack.config, input_ids, past_len=past_len)
    x = embeddings(input_ids, position_ids, token_type_ids, tie=tie)
    return stack(
        x,
        padding_mask=attention_mask,
        context=context,
        context_padding_mask=context_padding_mask,
        cache=cache,
        use_cache=use_cache,
        position_ids=position_ids,
        output_hidden_states=output_hidden_states,
        output_attentions=output_attentions,
    )


def tied_table(
    embeddings: Embeddings,
    head: LMHead | None,
    compute_logits: bool,
    labels: torch.Tensor | None,
) -> TiedTable | None:
    """The :class:`~triform.nn.embeddings.TiedTable` of a forward whose
    :func:`lm_head_outputs` gets ``compute_logits`` and ``labels``, or None.

    One exists when the token table of ``embeddings`` is the vocabulary projection's weight
    of ``head``, this forward runs that head (labels given, or logits asked for) and the table
    is trained: the lookups then add their gradient rows into the projection's gradient in
    place instead of allocating their own (V, E) one. Never for FSDP's DTensor shards, nor
    under ``torch.compile``.
    """
    head_runs = labels is not None or compute_logits  # as lm_head_outputs decides
    if not head_runs or head is None or not torch.is_grad_enabled():
        return None
    table = embeddings.token.weight
    if (
        head.decoder.weight is table
        and table.requires_grad
        and is_plain_tensor(table)
        and not torch.compiler.is_compiling()
    ):
        return TiedTable(table)
    return None


LMResult = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def lm_head_outputs(
    head: LMHead,
    hidden: torch.Tensor,
    *,
    compute_logits: bool = True,
    labels: torch.Tensor | None = None,
    logits_at: torch.Tensor | None = None,
    tie: TiedTable | None = None,
) -> LMResult:
    """``(logits, loss, predictions)`` of a language-modelling head on ``hidden`` (B, L, H).

    - ``labels`` (B, L): the loss at the labelled positions fused with the vocabulary
      projection (:meth:`LMHead.loss`); no logits are returned.
    - ``logits_at`` (B, L) bool: logits (N, V) at those positions only.
    - neither: logits (B, L, V), unless ``compute_logits`` is False.

    ``tie``: the forward's tied token table (:func:`tied_table`); the projection then uses the
    table as its lookups handed it on.
    """
    weight = tie.weight if tie is not None else None
    if labels is not None:
        if logits_at is not None:
            raise ValueError("give labels or logits_at, not both")
        loss, predictions = head.loss(hidden, labels, weight)
        return None, loss, predictions
    if not compute_logits:
        return None, None, None
    return head(hidden, logits_at, weight), None, None


def _is_input_table(model: nn.Module, embedding: nn.Embedding) -> bool:
    return not any(
        isinstance(m, RelativePositionBias) and m.embedding is embedding for m in model.modules()
    )
