"""Contextual embeddings, per token and per text: the feature-based approach of the BERT
paper (section 5.3), for encoders, decoders and encoder-decoders (the encoder's states).

Hidden states are numbered as ``output_hidden_states`` returns them: 0 is the embedding
output, then one per layer, the last being the model's final output. Layer combinations
(``layers``):

=====================  ===============================================================
``embeddings``         the embedding output
``last``               the last hidden layer
``second-to-last``     the one before it
``sum-last-four``      the sum of the last four hidden layers
``concat-last-four``   their concatenation, last layer first (4 * hidden wide)
``sum-all``            the sum of every hidden layer (the embedding output left out)
=====================  ===============================================================

Pooling (``pooling``) turns a text's token vectors into one: ``cls`` (the first token),
``mean`` (the mean over real tokens; padding never counts), ``last`` (the last real token,
what a decoder has read the whole text at) or ``none`` (keep every token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tokenizers
import torch

from triform.errors import TriformError, warn
from triform.models import DecoderModel, EncoderDecoderModel, EncoderModel, TransformerModel
from triform.outputs import replacing
from triform.runtime.packed import packed_inference
from triform.tensors import pad_rows

LAYERS = (
    "last",
    "second-to-last",
    "embeddings",
    "sum-last-four",
    "concat-last-four",
    "sum-all",
)
POOLING = ("none", "cls", "mean", "last")
Layers = Literal[
    "last", "second-to-last", "embeddings", "sum-last-four", "concat-last-four", "sum-all"
]
Pooling = Literal["none", "cls", "mean", "last"]


def combine_layers(hidden_states: Sequence[torch.Tensor], layers: str) -> torch.Tensor:
    """One of the BERT paper's layer combinations of (B, L, H) states -> (B, L, H or 4H)."""
    num_layers = len(hidden_states) - 1
    if layers in ("sum-last-four", "concat-last-four", "second-to-last") and num_layers < (
        2 if layers == "second-to-last" else 4
    ):
        raise TriformError(f"layers={layers!r} needs more than the model's {num_layers} layers")
    if layers == "embeddings":
        return hidden_states[0]
    if layers == "last":
        return hidden_states[-1]
    if layers == "second-to-last":
        return hidden_states[-2]
    if layers == "sum-last-four":
        return torch.stack(list(hidden_states[-4:])).sum(0)
    if layers == "concat-last-four":
        return torch.cat(
            [hidden_states[-1], hidden_states[-2], hidden_states[-3], hidden_states[-4]], -1
        )
    if layers == "sum-all":
        return torch.stack(list(hidden_states[1:])).sum(0)
    raise TriformError(f"unknown layers {layers!r}: one of {', '.join(LAYERS)}")


def pool(features: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, L, D) token features, (B, L) mask of real tokens (right-padded) -> (B, D)."""
    if pooling == "cls":
        return features[:, 0]
    if pooling == "mean":
        weights = mask.to(features.dtype).unsqueeze(-1)  # (B, L, 1)
        return (features * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if pooling == "last":
        last = mask.long().sum(1).clamp(min=1) - 1  # (B,)
        return features[torch.arange(features.shape[0], device=features.device), last]
    raise TriformError(f"unknown pooling {pooling!r}: one of {', '.join(POOLING)}")


def hidden_states(
    model: TransformerModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Every layer's (B, L, H) states, the embedding output first, for any form (an
    encoder-decoder's are its encoder's)."""
    if isinstance(model, EncoderModel):
        out = model(
            input_ids,
            attention_mask,
            token_type_ids,
            output_hidden_states=True,
            compute_logits=False,
        )
        return out.hidden_states
    if isinstance(model, DecoderModel):
        out = model(input_ids, attention_mask, output_hidden_states=True, compute_logits=False)
        return out.hidden_states
    if isinstance(model, EncoderDecoderModel):
        return model.encode(input_ids, attention_mask, output_hidden_states=True)[1]
    raise TriformError(f"{type(model).__name__} has no hidden states to extract")


def _tokenize(
    tokenizer: tokenizers.Tokenizer, texts: Sequence[str], max_length: int
) -> list[tokenizers.Encoding]:
    """Encode with the tokenizer's special tokens, cut to ``max_length`` (special tokens
    kept), on a copy so that the caller's tokenizer keeps its settings."""
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer.encode_batch(list(texts), add_special_tokens=True)


@torch.no_grad()
@packed_inference
def extract_features(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    texts: Sequence[str],
    layers: Layers = "last",
    pooling: Pooling = "none",
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = False,
) -> np.ndarray | list[np.ndarray]:
    """Features of ``texts``: an (N, D) float32 array with pooling, else a list of
    (tokens_i, D) arrays, one per text, its padding dropped.

    ``max_length`` cuts each text's tokens (default, and at most: the model's positions;
    texts cut are counted in a warning); ``normalize`` scales every vector to unit L2 norm (as
    sentence embeddings are compared by cosine).
    """
    if layers not in LAYERS:
        raise TriformError(f"unknown layers {layers!r}: one of {', '.join(LAYERS)}")
    if pooling not in POOLING:
        raise TriformError(f"unknown pooling {pooling!r}: one of {', '.join(POOLING)}")
    if batch_size < 1:
        raise TriformError(f"batch_size must be positive, not {batch_size}")
    if not texts:
        raise TriformError("no texts to extract features from")
    config = model.config
    if max_length is not None and max_length > config.max_positions:
        raise TriformError(
            f"max_length {max_length} is longer than the model's {config.max_positions} positions"
        )
    max_length = max_length or config.max_positions
    cut = 0  # texts longer than max_length
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    pooled, tokens = [], []
    try:
        for start in range(0, len(texts), batch_size):
            encodings = _tokenize(tokenizer, texts[start : start + batch_size], max_length)
            cut += sum(bool(e.overflowing) for e in encodings)
            ids, types, mask = _pad(encodings, pad_id, model.device)
            states = hidden_states(model, ids, mask, types if config.type_vocab_size else None)
            features = combine_layers(states, layers).float()  # (B, L, D)
            if pooling != "none":
                vectors = pool(features, mask, pooling)  # (B, D)
                pooled.append(_normalized(vectors) if normalize else vectors)
                continue
            for row, length in zip(features, mask.sum(1).tolist(), strict=True):
                kept = row[:length]  # (tokens, D)
                tokens.append(_normalized(kept) if normalize else kept)
    finally:
        model.train(was_training)
    if cut:
        warn(
            f"{cut} of {len(texts)} texts were longer than {max_length} tokens and were cut to "
            f"their first {max_length}"
        )
    if pooling != "none":
        return torch.cat(pooled).cpu().numpy()
    return [t.cpu().numpy() for t in tokens]


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, p=2.0, dim=-1)


def _pad(
    encodings: Sequence[tokenizers.Encoding], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad encodings: ids, token types and mask, each (B, L)."""
    ids, mask = pad_rows([e.ids for e in encodings], pad_id)
    types, _ = pad_rows([e.type_ids for e in encodings], 0)
    return ids.to(device), types.to(device), mask.to(device)


def save_features(features: np.ndarray | list[np.ndarray], path: str | Path) -> list[Path]:
    """Write features to ``.npy`` or ``.safetensors``; returns the files written.

    Pooled (N, D): the array (``.npy``), or tensor ``features`` (``.safetensors``).
    Per token: the tokens of every text one after another, (total tokens, D), with
    ``offsets`` (N + 1,) such that text i is ``features[offsets[i]:offsets[i + 1]]``:
    tensors ``features`` and ``offsets`` in ``.safetensors``; in ``.npy`` the array, and
    the offsets in ``NAME.offsets.npy`` beside it. Each file is written atomically.
    """
    path = Path(path)
    if path.suffix not in (".npy", ".safetensors"):
        raise TriformError(f"{path}: features are written to .npy or .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    if isinstance(features, np.ndarray):
        arrays["features"] = np.ascontiguousarray(features, dtype=np.float32)
    else:
        lengths = [len(f) for f in features]
        arrays["features"] = np.concatenate(features).astype(np.float32)
        arrays["offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        with replacing(path) as tmp:
            save_file(arrays, str(tmp))
        return [path]
    written = [path]
    if "offsets" in arrays:
        written.append(offsets_path(path))
    for file, array in zip(written, (arrays["features"], arrays.get("offsets")), strict=False):
        with replacing(file) as tmp:
            np.save(tmp, array)
    return written


def offsets_path(path: str | Path) -> Path:
    """``NAME.offsets.npy``, beside the ``NAME.npy`` of per-token features."""
    path = Path(path)
    return path.with_name(path.stem + ".offsets.npy")
