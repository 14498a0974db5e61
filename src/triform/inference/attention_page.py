"""The attention page: :class:`~triform.inference.attention.AttentionMaps` as one
self-contained HTML file (inline script and canvas; no network), readable offline.

Weights travel quantised to bytes (probability × 255, rounded; below 1/510 is 0) as a
bitmap of the non-zero entries plus their values, base64 in a JSON block: a 12-layer,
12-head model on 128 tokens is a few MB at most and usually far less (docs/attention.md
gives sizes), and decodes in milliseconds. The template (``attention_page.html``, package
data) reads the data block, draws the views and records in ``#status`` what it drew (a
checksum of the head view's weights, see :func:`head_view_checksum`) and any script error,
for tests.
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

import numpy as np

from triform.inference.attention import AttentionMaps, PositionMap

VIEW_TITLES = {
    "encoder": "Self-attention",
    "decoder": "Self-attention (causal)",
    "cross": "Cross-attention (decoder over encoder)",
}
SEQ2SEQ_TITLES = {"encoder": "Encoder self-attention", "decoder": "Decoder self-attention"}
CHECKSUM_MODULUS = 1_000_000_007


def quantise(weights: np.ndarray) -> np.ndarray:
    """Probabilities -> uint8 steps of 1/255 (what the page draws)."""
    return np.rint(np.clip(weights, 0.0, 1.0) * 255).astype(np.uint8)


def head_view_checksum(weights: np.ndarray, layer: int, head: int | None) -> int:
    """What the page writes into ``#status`` for the head view of ``layer`` and ``head``
    (None: every head): Σ w · ((h · Lq + q) · Lk + k + 1) over the quantised weights w of
    head h, query q, key k, modulo 1e9+7."""
    q8 = quantise(weights[layer]).astype(np.int64)  # (heads, Lq, Lk)
    heads, lq, lk = q8.shape
    index = np.arange(heads * lq * lk, dtype=np.int64).reshape(heads, lq, lk) + 1
    chosen = slice(None) if head is None else slice(head, head + 1)
    return int((q8[chosen] * index[chosen]).sum() % CHECKSUM_MODULUS)


def _b64(data: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(data).tobytes()).decode("ascii")


def _weights(weights: np.ndarray) -> dict[str, str]:
    q8 = quantise(weights).ravel()
    kept = q8 != 0
    return {"bitmap": _b64(np.packbits(kept, bitorder="little")), "values": _b64(q8[kept])}


def _position(panel: PositionMap) -> dict:
    values = np.asarray(panel.values, dtype=np.float64)
    if panel.diverging:
        reach = float(np.abs(values).max()) or 1.0
        low, high = -reach, reach
    else:
        low, high = float(values.min()), float(values.max())
        high = high if high > low else low + 1.0
    q8 = np.rint((values - low) / (high - low) * 255).astype(np.uint8)
    rows, columns = values.shape
    return {
        "title": panel.title,
        "caption": panel.caption,
        "rows": rows,
        "columns": columns,
        "rowLabel": panel.rows,
        "columnLabel": panel.columns,
        "columnStart": panel.column_start,
        "low": low,
        "high": high,
        "diverging": panel.diverging,
        "data": _b64(q8),
    }


def page_data(maps: AttentionMaps, title: str) -> dict:
    """Everything the page draws, as JSON-ready data."""
    seq2seq = maps.form == "encoder-decoder"
    views = []
    for kind, weights in maps.attentions.items():
        layers, heads, lq, lk = weights.shape
        queries, keys = maps.axes(kind)
        views.append(
            {
                "kind": kind,
                "title": (SEQ2SEQ_TITLES if seq2seq else VIEW_TITLES).get(kind, VIEW_TITLES[kind]),
                "layers": layers,
                "heads": heads,
                "queries": queries,
                "keys": keys,
                "layerKinds": maps.layer_kinds(kind),
                **_weights(weights),
            }
        )
    return {
        "title": title,
        "form": maps.form,
        "family": maps.family,
        "positionKind": maps.position_kind,
        "views": views,
        "positions": [_position(panel) for panel in maps.positions],
        "checksumModulus": CHECKSUM_MODULUS,
    }


def render_page(maps: AttentionMaps, title: str = "triform attention") -> str:
    """The whole HTML page."""
    template = (
        resources.files("triform.inference")
        .joinpath("attention_page.html")
        .read_text(encoding="utf-8")
    )
    data = json.dumps(page_data(maps, title), separators=(",", ":"), ensure_ascii=False)
    data = data.replace("</", "<\\/")  # a token may read "</script>"
    return template.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def save_page(maps: AttentionMaps, path: str | Path, title: str = "triform attention") -> Path:
    """Write :func:`render_page` to ``path``."""
    path = Path(path)
    path.write_text(render_page(maps, title), encoding="utf-8")
    return path
