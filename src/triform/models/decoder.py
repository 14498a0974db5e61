"""Decoder-only language models (GPT, GPT-2, GPT-3)."""

from __future__ import annotations

import torch

from triform.config import ModelConfig
from triform.models.base import TransformerModel, lm_head_outputs, run_stack, tied_table
from triform.models.heads import LMHead
from triform.models.outputs import DecoderOutput
from triform.nn.cache import KVCache
from triform.nn.embeddings import Embeddings
from triform.nn.stack import Stack


class DecoderModel(TransformerModel):
    """A causal stack with a language-modelling head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.decoder = Stack(config, config.num_layers, causal=True, cross_attention=False)
        self.lm_head = LMHead(config, self.embeddings.token if config.tie_embeddings else None)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        compute_logits: bool = True,
        labels: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """input_ids: (B, L) new tokens; attention_mask: (B, past + L), 1 = real token.

        With ``use_cache`` the returned ``past_key_values`` holds every layer's keys and
        values; pass it back with the next tokens to decode incrementally.
        ``output_attentions`` returns every layer's attention probabilities (B, h, L, past + L).
        ``labels`` (B, L) (-100 = not counted) returns the fused loss instead of logits;
        ``logits_at`` (B, L) bool returns logits (N, V) at those positions only
        (:func:`~triform.models.base.lm_head_outputs`).
        """
        tie = tied_table(self.embeddings, self.lm_head, compute_logits, labels)
        out = run_stack(
            self.embeddings,
            self.decoder,
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            tie=tie,
        )
        logits, loss, predictions = lm_head_outputs(
            self.lm_head,
            out.last_hidden_state,
            compute_logits=compute_logits,
            labels=labels,
            logits_at=logits_at,
            tie=tie,
        )
        return DecoderOutput(
            logits,
            out.last_hidden_state,
            out.hidden_states,
            out.cache if use_cache else None,
            out.attentions,
            loss,
            predictions,
        )
