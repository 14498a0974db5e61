"""Encoder-decoder models (the original Transformer, T5, BART)."""

from __future__ import annotations

import torch
from torch import nn

from triform.config import ModelConfig
from triform.models.base import TransformerModel, lm_head_outputs, run_stack, tied_table
from triform.models.heads import LMHead
from triform.models.outputs import Seq2SeqOutput
from triform.nn.cache import KVCache
from triform.nn.embeddings import Embeddings, TiedTable
from triform.nn.stack import Stack, StackOutput


class EncoderDecoderModel(TransformerModel):
    """A bidirectional encoder, a causal decoder with cross-attention, and an LM head.

    With ``tie_encoder_decoder_embeddings`` both sides share one token table (``shared``);
    with ``tie_embeddings`` the vocabulary projection shares it too.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        shared = None
        if config.tie_encoder_decoder_embeddings:
            shared = nn.Embedding(config.vocab_size, config.embed_size)
        self.encoder_embeddings = Embeddings(config, token=shared)
        self.decoder_embeddings = Embeddings(config, token=shared)
        self.encoder = Stack(config, config.num_layers, causal=False, cross_attention=False)
        self.decoder = Stack(config, config.decoder_layers, causal=True, cross_attention=True)
        tied = self.decoder_embeddings.token if config.tie_embeddings else None
        self.lm_head = LMHead(config, tied)
        self.init_weights()

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Source tokens (B, S) -> encoder output (B, S, H) [and per-layer states]."""
        out = self._encode(input_ids, attention_mask, output_hidden_states)
        return out.last_hidden_state, out.hidden_states

    def _encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        tie: TiedTable | None = None,
    ) -> StackOutput:
        return run_stack(
            self.encoder_embeddings,
            self.encoder,
            input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            tie=tie,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_hidden_state: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        compute_logits: bool = True,
        labels: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> Seq2SeqOutput:
        """input_ids: (B, S) source; decoder_input_ids: (B, T) target so far, starting with
        the decoder start token. Pass ``encoder_hidden_state`` to skip re-encoding (and
        ``past_key_values`` to decode one step at a time). ``output_attentions`` returns the
        attention probabilities of every layer: encoder, decoder and cross. ``labels`` (B, T)
        and ``logits_at`` (B, T) as in :meth:`DecoderModel.forward`."""
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required")
        tie = tied_table(self.decoder_embeddings, self.lm_head, compute_logits, labels)
        encoded = StackOutput(encoder_hidden_state)
        if encoder_hidden_state is None:
            if input_ids is None:
                raise ValueError("input_ids or encoder_hidden_state is required")
            encoded = self._encode(
                input_ids,
                attention_mask,
                output_hidden_states,
                output_attentions,
                tie,
            )
        out = run_stack(
            self.decoder_embeddings,
            self.decoder,
            decoder_input_ids,
            attention_mask=decoder_attention_mask,
            cache=past_key_values,
            use_cache=use_cache,
            context=encoded.last_hidden_state,
            context_padding_mask=attention_mask,
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
        return Seq2SeqOutput(
            logits,
            out.last_hidden_state,
            encoded.last_hidden_state,
            encoded.hidden_states,
            out.hidden_states,
            out.cache if use_cache else None,
            encoded.attentions,
            out.attentions,
            out.cross_attentions,
            loss,
            predictions,
        )
