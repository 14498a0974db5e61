"""Encoder-only models (BERT, RoBERTa, ALBERT, ELECTRA)."""

from __future__ import annotations

import torch

from triform.config import ModelConfig
from triform.models.base import TransformerModel, lm_head_outputs, run_stack, tied_table
from triform.models.heads import LMHead, PairHead, Pooler, ReplacedTokenHead
from triform.models.outputs import EncoderOutput
from triform.nn.embeddings import Embeddings
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
        output_attentions: bool = False,
        compute_logits: bool = True,
        labels: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """input_ids: (B, L); attention_mask: (B, L) with 1 for real tokens.

        ``compute_logits=False`` skips the heads (feature extraction, fine-tuning bodies);
        ``output_attentions`` returns every layer's attention probabilities (computed
        explicitly, so slower: for looking inside, not for training). ``labels`` (B, L) and
        ``logits_at`` (B, L) apply to a masked-LM head as in :meth:`DecoderModel.forward`.
        """
        tie = tied_table(self.embeddings, self.lm_head, compute_logits, labels)
        out = run_stack(
            self.embeddings,
            self.encoder,
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            tie=tie,
        )
        hidden = out.last_hidden_state
        pooled = self.pooler(hidden) if self.pooler is not None else None
        logits = pair_logits = loss = predictions = None
        if (labels is not None or logits_at is not None) and self.lm_head is None:
            raise ValueError("labels and logits_at need a masked-LM head (encoder_head='mlm')")
        if self.lm_head is not None:
            logits, loss, predictions = lm_head_outputs(
                self.lm_head,
                hidden,
                compute_logits=compute_logits,
                labels=labels,
                logits_at=logits_at,
                tie=tie,
            )
        elif compute_logits and self.rtd_head is not None:
            logits = self.rtd_head(hidden)
        if compute_logits and self.pair_head is not None:
            pair_logits = self.pair_head(pooled)
        return EncoderOutput(
            hidden,
            logits,
            pair_logits,
            pooled,
            out.hidden_states,
            out.attentions,
            loss,
            predictions,
        )
