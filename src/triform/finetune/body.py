"""The pretrained body: loading it, growing its vocabulary, and reading representations.

- :func:`load_body` takes a triform run folder, an HF checkpoint folder or ``preset:<name>``;
- :func:`resize_token_embeddings` adds rows for new tokens and keeps tied weights tied;
- :func:`token_states` gives one vector per token, :func:`pooled_states` one per sequence
  (the first token / BERT's pooler for encoders, the last real token for decoders, and
  BART's recipe for encoder-decoders: the same text through the decoder, its last token).
"""

from __future__ import annotations

import tokenizers
import torch
from torch import nn

from triform.errors import TriformError
from triform.finetune.config import ModelSection
from triform.loading import load_source
from triform.models import DecoderModel, EncoderDecoderModel, EncoderModel, TransformerModel
from triform.models.heads import LMHead
from triform.nn.embeddings import Embeddings

Batch = dict[str, torch.Tensor]


def load_body(section: ModelSection) -> tuple[TransformerModel, tokenizers.Tokenizer]:
    """The pretrained model and its tokenizer, as ``[model]`` describes them (see
    :func:`triform.loading.load_source`)."""
    return load_source(section.source, section.tokenizer, section.overrides)


# --------------------------------------------------------------------------------------
# Growing the vocabulary
# --------------------------------------------------------------------------------------


def _grown(weight: torch.Tensor, rows: int, std: float | None) -> nn.Parameter:
    """``weight`` with ``rows`` more rows: Normal(0, std), or zeros when ``std`` is None."""
    extra = weight.new_zeros((rows, *weight.shape[1:]))
    if std is not None:
        extra.normal_(0.0, std)
    return nn.Parameter(torch.cat([weight.detach(), extra]), requires_grad=weight.requires_grad)


@torch.no_grad()
def resize_token_embeddings(model: TransformerModel, new_vocab: int) -> None:
    """Grow the token table(s) of ``model`` to ``new_vocab`` rows, in place.

    New rows are drawn from Normal(0, init_std); an output projection tied to a table stays
    tied to the grown table, an untied one grows by its own new rows (and a bias by zeros).
    ``model.config.vocab_size`` is updated. Shrinking is refused.
    """
    old = model.config.vocab_size
    if new_vocab == old:
        return
    if new_vocab < old:
        raise TriformError(f"cannot shrink the vocabulary from {old} to {new_vocab}")
    std = model.config.init_std
    grown: dict[int, nn.Parameter] = {}  # id(old table weight) -> grown weight
    done: set[int] = set()
    for module in model.modules():
        if isinstance(module, Embeddings) and id(module.token) not in done:
            table = module.token
            done.add(id(table))
            new = _grown(table.weight, new_vocab - old, std)
            grown[id(table.weight)] = new
            table.weight = new
            table.num_embeddings = new_vocab
    for module in model.modules():
        if isinstance(module, LMHead):
            linear = module.decoder
            tied = grown.get(id(linear.weight))
            linear.weight = (
                tied if tied is not None else _grown(linear.weight, new_vocab - old, std)
            )
            if linear.bias is not None:
                linear.bias = _grown(linear.bias, new_vocab - old, None)
            linear.out_features = new_vocab
    model.config.vocab_size = new_vocab  # shared by every module that keeps the config


# --------------------------------------------------------------------------------------
# Representations
# --------------------------------------------------------------------------------------


def _token_types(body: TransformerModel, batch: Batch) -> torch.Tensor | None:
    return batch.get("token_type_ids") if body.config.type_vocab_size > 1 else None


def shift_right(ids: torch.Tensor, start_id: int) -> torch.Tensor:
    """Decoder inputs from targets: ``start_id`` then all but the last token. (B, T)"""
    start = torch.full_like(ids[:, :1], start_id)
    return torch.cat([start, ids[:, :-1]], dim=1)


def token_states(body: TransformerModel, batch: Batch) -> torch.Tensor:
    """One vector per input token, (B, L, H): the encoder's (or the decoder-only model's)
    last hidden states; for an encoder-decoder, its encoder's."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if isinstance(body, EncoderModel):
        types = _token_types(body, batch)
        return body(ids, mask, token_type_ids=types, compute_logits=False).last_hidden_state
    if isinstance(body, DecoderModel):
        return body(ids, mask, compute_logits=False).last_hidden_state
    hidden, _ = body.encode(ids, mask)
    return hidden


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row. (B, L) -> (B,)"""
    return mask.long().sum(-1).sub(1).clamp(min=0)


def select(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, L, H) -> (B, H): the ``first`` token, the ``last`` real one, or the ``mean``."""
    if how == "first":
        return hidden[:, 0]
    if how == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(mask)]
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def uses_pooler(body: TransformerModel, pooling: str) -> bool:
    """Whether ``pooling`` resolves to the body's pretrained pooler (BERT, ALBERT)."""
    return pooling == "auto" and isinstance(body, EncoderModel) and body.pooler is not None


def resolve_pooling(body: TransformerModel, pooling: str) -> str:
    """``auto`` -> ``pooler`` (encoders that have one), ``first`` (other encoders) or
    ``last`` (decoders, encoder-decoders)."""
    if pooling != "auto":
        return pooling
    if isinstance(body, EncoderModel):
        return "pooler" if body.pooler is not None else "first"
    return "last"


def pooled_states(body: TransformerModel, batch: Batch, pooling: str = "auto") -> torch.Tensor:
    """One vector per sequence, (B, H), as :func:`resolve_pooling` says."""
    how = resolve_pooling(body, pooling)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if isinstance(body, EncoderDecoderModel):
        decoder_ids = shift_right(ids, body.config.decoder_start_id)
        hidden = body(ids, mask, decoder_input_ids=decoder_ids, compute_logits=False)
        return select(hidden.last_hidden_state, mask, how)
    if isinstance(body, EncoderModel):
        out = body(ids, mask, token_type_ids=_token_types(body, batch), compute_logits=False)
        if how == "pooler":
            return out.pooled_output
        return select(out.last_hidden_state, mask, how)
    return select(body(ids, mask, compute_logits=False).last_hidden_state, mask, how)
