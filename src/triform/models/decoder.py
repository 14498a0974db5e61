"""Decoder-only language models (GPT, GPT-2, GPT-3)."""

from __future__ import annotations

import torch

from triform.config import ModelConfig
from triform.models.base import TransformerModel
from triform.models.heads import LMHead
from triform.models.outputs import DecoderOutput
from triform.nn.cache import KVCache
from triform.nn.embeddings import Embeddings, make_position_ids
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
        compute_logits: bool = True,
    ) -> DecoderOutput:
        """input_ids: (B, L) new tokens; attention_mask: (B, past + L), 1 = real token.

        With ``use_cache`` the returned ``past_key_values`` holds every layer's keys and
        values; pass it back with the next tokens to decode incrementally.
        """
        cache = past_key_values
        if use_cache and cache is None:
            cache = KVCache.empty(self.config.num_layers)
        past_len = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = make_position_ids(self.config, input_ids, past_len=past_len)
        x = self.embeddings(input_ids, position_ids)
        hidden, all_hidden = self.decoder(
            x,
            padding_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(hidden) if compute_logits else None
        return DecoderOutput(logits, hidden, all_hidden, cache if use_cache else None)
