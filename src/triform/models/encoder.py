"""Encoder-only models (BERT, RoBERTa, ALBERT, ELECTRA)."""

from __future__ import annotations

import torch

from triform.config import ModelConfig
from triform.models.base import TransformerModel
from triform.models.heads import LMHead, PairHead, Pooler, ReplacedTokenHead
from triform.models.outputs import EncoderOutput
from triform.nn.embeddings import Embeddings, make_position_ids
from triform.nn.stack import Stack


class EncoderModel(TransformerModel):
    """A bidirectional stack with the pretraining heads its config names.

    ``encoder_head``: "mlm" (masked-LM vocabulary scores), "rtd" (ELECTRA replaced-token
    logits) or "none"; ``pair_head``: "nsp" / "sop" over the pooled first token, or "none".
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Stack(config, config.num_layers, causal=False, cross_attention=False)
        self.pooler = Pooler(config) if config.pooler or config.pair_head != "none" else None
        self.lm_head = None
        self.rtd_head = None
        if config.encoder_head == "mlm":
            tied = self.embeddings.token if config.tie_embeddings else None
            self.lm_head = LMHead(config, tied)
        elif config.encoder_head == "rtd":
            self.rtd_head = ReplacedTokenHead(config)
        self.pair_head = PairHead(config) if config.pair_head != "none" else None
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        compute_logits: bool = True,
    ) -> EncoderOutput:
        """input_ids: (B, L); attention_mask: (B, L) with 1 for real tokens.

        ``compute_logits=False`` skips the heads (feature extraction, fine-tuning bodies).
        """
        if position_ids is None:
            position_ids = make_position_ids(self.config, input_ids)
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        hidden, all_hidden = self.encoder(
            x, padding_mask=attention_mask, output_hidden_states=output_hidden_states
        )
        pooled = self.pooler(hidden) if self.pooler is not None else None
        logits = pair_logits = None
        if compute_logits:
            if self.lm_head is not None:
                logits = self.lm_head(hidden)
            elif self.rtd_head is not None:
                logits = self.rtd_head(hidden)
            if self.pair_head is not None:
                pair_logits = self.pair_head(pooled)
        return EncoderOutput(hidden, logits, pair_logits, pooled, all_hidden)
