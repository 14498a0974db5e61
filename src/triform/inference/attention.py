"""Looking inside a model: the attention probabilities of every layer and head on one input,
and the model's positional encodings, as arrays (and, through
:mod:`triform.inference.attention_page`, as one self-contained HTML page).

An input is one text (encoders: optionally a second segment, ``pair``; encoder-decoders: a
``target``, read by the decoder after its start token as in training). Attention kinds:

- ``encoder``: self-attention of an encoder (alone or an encoder-decoder's), tokens x tokens;
- ``decoder``: causal self-attention of a decoder (alone: tokens x tokens; an
  encoder-decoder's: target tokens x target tokens);
- ``cross``: an encoder-decoder's decoder over its encoder output, target tokens x tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tokenizers
import torch

from triform.errors import TriformError
from triform.models import DecoderModel, EncoderDecoderModel, EncoderModel, TransformerModel
from triform.nn.embeddings import Embeddings
from triform.nn.positions import relative_position_bucket
from triform.nn.stack import Stack

# The largest position maps drawn (rows and columns): enough to see the structure, small
# enough for a page.
MAX_POSITIONS_SHOWN = 512
MAX_FEATURES_SHOWN = 1024
# The longest input looked at by default: the maps grow with its square.
MAX_TOKENS = 512


@dataclass
class PositionMap:
    """One picture of a model's position information: ``values`` (R, C) drawn as a
    heatmap, its rows and columns named by ``rows`` / ``columns``; ``diverging``: values
    are signed around 0 (else a similarity in [-1, 1] or a plain magnitude)."""

    title: str
    caption: str
    values: np.ndarray
    rows: str
    columns: str
    column_start: int = 0  # the label of column 0 (relative distances start below zero)
    diverging: bool = True


@dataclass
class AttentionMaps:
    """Attention probabilities of one input and the position information of the model.

    ``attentions`` maps a kind (``encoder``, ``decoder``, ``cross``; see the module doc) to
    float32 probabilities (layers, heads, Lq, Lk); ``tokens`` are the input's tokens (the
    encoder side of an encoder-decoder), ``target_tokens`` the decoder inputs of an
    encoder-decoder. ``attention_pattern`` is the model's repeating pattern of ``dense``
    and ``local`` (GPT-3's banded) self-attention layers.
    """

    form: str
    family: str
    tokens: list[str]
    attentions: dict[str, np.ndarray]
    target_tokens: list[str] | None = None
    attention_pattern: list[str] = field(default_factory=lambda: ["dense"])
    positions: list[PositionMap] = field(default_factory=list)
    position_kind: str = "none"

    def axes(self, kind: str) -> tuple[list[str], list[str]]:
        """The query tokens and key tokens of attention ``kind``."""
        if kind == "encoder" or (kind == "decoder" and self.target_tokens is None):
            return self.tokens, self.tokens
        assert self.target_tokens is not None
        if kind == "decoder":
            return self.target_tokens, self.target_tokens
        return self.target_tokens, self.tokens

    def layer_kinds(self, kind: str) -> list[str]:
        """``dense`` or ``local`` for each layer of attention ``kind`` (cross: all dense)."""
        layers = self.attentions[kind].shape[0]
        if kind == "cross":
            return ["dense"] * layers
        pattern = self.attention_pattern
        return [pattern[i % len(pattern)] for i in range(layers)]

    def save_npz(self, path: str | Path) -> Path:
        """The arrays in one ``.npz``: ``<kind>`` (layers, heads, Lq, Lk) per attention
        kind, ``tokens`` (and ``target_tokens``), ``positions_<i>`` per position map."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {kind: weights for kind, weights in self.attentions.items()}
        arrays["tokens"] = np.array(self.tokens, dtype=str)
        if self.target_tokens is not None:
            arrays["target_tokens"] = np.array(self.target_tokens, dtype=str)
        arrays["attention_pattern"] = np.array(self.attention_pattern, dtype=str)
        for i, panel in enumerate(self.positions):
            arrays[f"positions_{i}"] = panel.values
        with path.open("wb") as handle:
            np.savez_compressed(handle, **arrays)
        return path


def attention(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    text: str,
    pair: str | None = None,
    target: str | None = None,
    max_tokens: int = MAX_TOKENS,
) -> AttentionMaps:
    """Every layer's and head's attention probabilities on ``text`` (and the model's
    positional encodings). ``pair``: a second segment for an encoder (BERT's sentence B);
    ``target``: the decoder side of an encoder-decoder (default: nothing but the start
    token). Inputs longer than ``max_tokens`` are refused (the maps grow with the square
    of the length). The model runs in eval mode, without gradients."""
    if not text:
        raise TriformError("the text to look at is empty")
    if pair is not None and not isinstance(model, EncoderModel):
        raise TriformError("a pair of texts is for encoders; this model is a " + model.config.form)
    if target is not None and not isinstance(model, EncoderDecoderModel):
        raise TriformError(
            "a target text is for encoder-decoders; this model is a " + model.config.form
        )
    device = model.device
    decoder_only = isinstance(model, DecoderModel)
    encoding = tokenizer.encode(text, pair, add_special_tokens=not decoder_only)
    if not encoding.ids:
        raise TriformError(f"{text!r} has no tokens")
    if len(encoding.ids) > max_tokens:
        raise TriformError(
            f"the text is {len(encoding.ids)} tokens; at most {max_tokens} are looked at "
            "(shorten it, or raise max_tokens)"
        )
    ids = torch.tensor([encoding.ids], device=device)  # (1, L)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = _run(model, tokenizer, ids, encoding, target)
    finally:
        model.train(was_training)
    maps.positions = position_maps(model, max(len(maps.tokens), len(maps.target_tokens or [])))
    maps.position_kind = model.config.position
    return maps


def _run(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    ids: torch.Tensor,
    encoding: tokenizers.Encoding,
    target: str | None,
) -> AttentionMaps:
    config = model.config
    common = dict(
        form=config.form,
        family=config.family,
        tokens=list(encoding.tokens),
        attention_pattern=list(config.attention_pattern),
    )
    if isinstance(model, EncoderModel):
        types = None
        if config.type_vocab_size > 0:
            types = torch.tensor([encoding.type_ids], device=ids.device)
        out = model(ids, token_type_ids=types, output_attentions=True, compute_logits=False)
        return AttentionMaps(**common, attentions={"encoder": _stack(out.attentions)})
    if isinstance(model, DecoderModel):
        out = model(ids, output_attentions=True, compute_logits=False)
        return AttentionMaps(**common, attentions={"decoder": _stack(out.attentions)})
    if isinstance(model, EncoderDecoderModel):
        labels = tokenizer.encode(target).ids if target else []
        decoder_ids = [config.decoder_start_id, *labels[:-1]]  # the decoder input in training
        decoder_input = torch.tensor([decoder_ids], device=ids.device)  # (1, T)
        out = model(
            ids, decoder_input_ids=decoder_input, output_attentions=True, compute_logits=False
        )
        return AttentionMaps(
            **common,
            attentions={
                "encoder": _stack(out.encoder_attentions),
                "decoder": _stack(out.decoder_attentions),
                "cross": _stack(out.cross_attentions),
            },
            target_tokens=[tokenizer.id_to_token(i) or f"<{i}>" for i in decoder_ids],
        )
    raise TriformError(f"cannot look inside a {type(model).__name__}")


def _stack(layers: list[torch.Tensor]) -> np.ndarray:
    """Per-layer (1, heads, Lq, Lk) -> (layers, heads, Lq, Lk) float32."""
    return torch.cat(layers).float().cpu().numpy()


# -- position information ------------------------------------------------------------------
def position_maps(model: TransformerModel, length: int) -> list[PositionMap]:
    """Pictures of the model's position information for inputs of about ``length`` tokens:
    the sinusoidal table (position x feature); the cosine similarity between learned
    position vectors; T5's learned bias per head and relative distance; the rotary angles'
    cosines per position and frequency. Empty for a model without positions."""
    config = model.config
    shown = min(max(length, 128), config.max_positions, MAX_POSITIONS_SHOWN)
    sides = _sides(model)
    embeddings, stack = sides[0][1], sides[0][2]
    if config.position == "sinusoidal":
        table = embeddings.position.table[:shown, :MAX_FEATURES_SHOWN]  # (P, D)
        return [
            PositionMap(
                "Sinusoidal position encodings",
                f"sin on even features, cos on odd; wavelengths from 2π to 10000·2π; "
                f"the first {shown} of {config.max_positions} positions",
                table.cpu().numpy(),
                "position",
                "feature",
            )
        ]
    if config.position == "learned":
        return [_learned(side, emb, shown, config.position_offset) for side, emb, _ in sides]
    if config.position == "relative":
        return [_relative(side, st, length) for side, _, st in sides]
    if config.position == "rotary":
        return [_rotary(stack, shown)]
    return []


def _sides(model: TransformerModel) -> list[tuple[str, Embeddings, Stack]]:
    """(name, embeddings, stack) of each half of the model."""
    if isinstance(model, EncoderDecoderModel):
        return [
            ("encoder", model.encoder_embeddings, model.encoder),
            ("decoder", model.decoder_embeddings, model.decoder),
        ]
    if isinstance(model, EncoderModel):
        return [("", model.embeddings, model.encoder)]
    return [("", model.embeddings, model.decoder)]


def _learned(side: str, embeddings: Embeddings, shown: int, offset: int) -> PositionMap:
    vectors = embeddings.position.weight[offset : offset + shown].detach().float()  # (P, E)
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    title = "Learned position embeddings" + (f" ({side})" if side else "")
    return PositionMap(
        title,
        f"cosine similarity between the position vectors of the first {shown} positions "
        "(1 on the diagonal; neighbours look alike when the model has learned order)",
        (unit @ unit.T).cpu().numpy(),
        "position",
        "position",
    )


def _relative(side: str, stack: Stack, length: int) -> PositionMap:
    bias = stack.relative_bias
    reach = min(max(length - 1, 16), MAX_POSITIONS_SHOWN // 2)
    start = -reach
    stop = reach if bias.bidirectional else 0
    distance = torch.arange(start, stop + 1, device=bias.embedding.weight.device)
    buckets = relative_position_bucket(
        distance, bias.bidirectional, bias.num_buckets, bias.max_distance
    )
    values = bias.embedding(buckets).T.detach().float()  # (heads, distances)
    title = "Relative position bias" + (f" ({side})" if side else "")
    exact = bias.num_buckets // (4 if bias.bidirectional else 2)
    direction = "both directions" if bias.bidirectional else "earlier keys only (causal)"
    return PositionMap(
        title,
        f"the learned bias added to the attention scores, per head, by key position − query "
        f"position ({bias.num_buckets} buckets, exact up to {exact}, logarithmic up to "
        f"{bias.max_distance}; {direction})",
        values.cpu().numpy(),
        "head",
        "key − query",
        column_start=start,
    )


def _rotary(stack: Stack, shown: int) -> PositionMap:
    rope = stack.rotary
    inv_freq = rope.inv_freq.detach().double()  # (dim/2,)
    angles = torch.arange(shown, dtype=torch.float64)[:, None] * inv_freq  # (P, dim/2)
    wavelengths = 2 * math.pi / inv_freq
    head = stack.config.head_size
    return PositionMap(
        "Rotary position embedding",
        f"no position vectors: queries and keys are rotated by position × frequency, so scores "
        f"depend on relative position. Rotary on {rope.dim} of {head} features per head "
        f"({rope.dim // 2} frequencies, wavelengths {wavelengths.min():.1f} to "
        f"{wavelengths.max():.0f} positions); shown: cos(position × frequency)",
        angles.cos().float().numpy(),
        "position",
        "frequency",
    )
