"""Incremental decoding with the KV cache, the same interface for both generative forms.

A :class:`Steps` object holds one model's state over a batch of rows: ``first()`` reads the
prompt (decoders) or encodes the source (encoder-decoders) and returns the scores of the
first new token; ``next(tokens)`` appends one token per row and returns the scores of the one
after it; ``reorder(index)`` keeps the rows beam search continues.

Each input row may be repeated ``expand`` times (beams, or several samples per prompt),
where ``transformers`` repeats it: decoders repeat the prompt before reading it,
encoder-decoders encode once and repeat the encoder output.

What a step does not do: the KV cache is preallocated for the whole output (one buffer per
layer, written in place, reordered in place for beams), the decoder's attention mask is one
preallocated buffer of which each step takes a longer view, and the vocabulary projection
runs on the last position only (not on every prompt token).
"""

from __future__ import annotations

import torch

from triform.errors import TriformError
from triform.models import DecoderModel, EncoderDecoderModel, TransformerModel
from triform.nn.cache import KVCache
from triform.nn.embeddings import make_position_ids


class Steps:
    """One batch of rows being decoded. ``sequences`` (N, P) are the rows the output starts
    with (a decoder's prompt; an encoder-decoder's start token), ``counted`` (N, P) marks
    their real tokens."""

    sequences: torch.Tensor
    counted: torch.Tensor

    def first(self) -> torch.Tensor:  # -> (N, V)
        raise NotImplementedError

    def next(self, tokens: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, V)
        raise NotImplementedError

    def reorder(self, index: torch.Tensor) -> None:  # (N,) rows to keep, in their new order
        raise NotImplementedError


class DecoderSteps(Steps):
    """A decoder over left-padded prompts: positions count real tokens only (as GPT-2's
    ``generate`` does), so every prompt continues from its own length."""

    def __init__(
        self,
        model: DecoderModel,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        expand: int,
        max_new_tokens: int,
    ) -> None:
        self.model = model
        self.sequences = input_ids.repeat_interleave(expand, dim=0)  # (N, P)
        rows, prompt = self.sequences.shape
        capacity = prompt + max_new_tokens
        # (N, P + new): the prompt's mask, then ones for the tokens to come
        self._mask = mask.new_ones((rows, capacity), dtype=torch.long)
        self._mask[:, :prompt] = mask.long().repeat_interleave(expand, dim=0)
        self.mask = self._mask[:, :prompt]  # the positions read so far
        self.counted = self.mask.bool()
        self.cache = KVCache.empty(model.config.num_layers, capacity=max(capacity, 1))
        self._real = self.mask.sum(-1, keepdim=True)  # (N, 1) real tokens read so far

    def _run(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        last = torch.zeros_like(ids, dtype=torch.bool)  # (N, L): logits at the last position
        last[:, -1] = True
        out = self.model(  # the head runs inside the model's forward (as FSDP requires)
            ids,
            attention_mask=self.mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            logits_at=last,
        )
        return out.logits  # (N, V)

    def first(self) -> torch.Tensor:
        ids = self.sequences
        return self._run(ids, make_position_ids(self.model.config, ids, attention_mask=self.mask))

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = self._mask[:, : self.mask.shape[1] + 1]
        ids = tokens[:, None]  # (N, 1)
        config = self.model.config
        if config.positions_from_padding:
            positions = make_position_ids(config, ids, attention_mask=self.mask)
        else:  # what make_position_ids gives the new token, without a cumsum over the mask
            positions = self._real + config.position_offset  # (N, 1)
        self._real = self._real + 1
        return self._run(ids, positions)

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        self._mask.copy_(self._mask.index_select(0, index))
        self.mask = self._mask[:, : self.mask.shape[1]]
        self._real = self._real.index_select(0, index)


class Seq2SeqSteps(Steps):
    """An encoder-decoder: the source is encoded once; the decoder starts from the start
    token (``decoder_start_token_id``, else the pad id) and attends to the source."""

    def __init__(
        self,
        model: EncoderDecoderModel,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        expand: int,
        start_id: int,
        max_new_tokens: int,
    ) -> None:
        self.model = model
        encoded, _ = model.encode(input_ids, mask)  # (B, S, H)
        self.encoded = encoded.repeat_interleave(expand, dim=0)  # (N, S, H)
        self.source_mask = mask.repeat_interleave(expand, dim=0)  # (N, S)
        rows = self.encoded.shape[0]
        self.sequences = torch.full((rows, 1), start_id, dtype=torch.long, device=mask.device)
        self.counted = torch.ones_like(self.sequences, dtype=torch.bool)
        self.cache = KVCache.empty(model.config.decoder_layers, capacity=1 + max_new_tokens)

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(
            attention_mask=self.source_mask,
            decoder_input_ids=ids,
            encoder_hidden_state=self.encoded,
            past_key_values=self.cache,
            use_cache=True,
            compute_logits=False,
        )
        return self.model.lm_head(out.last_hidden_state[:, -1])  # (N, V)

    def first(self) -> torch.Tensor:
        return self._run(self.sequences)

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens[:, None])

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        self.encoded = self.encoded.index_select(0, index)
        self.source_mask = self.source_mask.index_select(0, index)


def start_steps(
    model: TransformerModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    expand: int,
    max_new_tokens: int,
    pad_id: int,
) -> Steps:
    """The :class:`Steps` for ``model``, after checking that the longest row plus
    ``max_new_tokens`` fits the model's positions."""
    config = model.config
    bounded = config.position in ("learned", "sinusoidal")
    if isinstance(model, EncoderDecoderModel):
        if bounded and 1 + max_new_tokens > config.max_positions:
            raise TriformError(
                f"max_new_tokens={max_new_tokens} does not fit the decoder's "
                f"{config.max_positions} positions"
            )
        start = config.decoder_start_token_id
        start = pad_id if start is None else start
        return Seq2SeqSteps(model, input_ids, attention_mask, expand, start, max_new_tokens)
    if isinstance(model, DecoderModel):
        longest = int(attention_mask.sum(-1).max()) if input_ids.numel() else 0
        if bounded and longest + max_new_tokens > config.max_positions:
            raise TriformError(
                f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} is longer "
                f"than the model's {config.max_positions} positions"
            )
        return DecoderSteps(model, input_ids, attention_mask, expand, max_new_tokens)
    raise TriformError(f"{type(model).__name__} cannot generate: it has no decoder")
