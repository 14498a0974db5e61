"""The formulas: training FLOPs of a Transformer, and the Chinchilla law with its
compute-optimal allocation.

FLOPs (Kaplan et al. 2020, table 1). A decoder with ``N`` non-embedding parameters,
``n_layer`` layers, attention width ``d_attn`` (heads × head dim) and context ``n_ctx``
spends per token, forward, ``2·N`` multiply-adds-as-FLOPs in its matrices plus
``2·n_layer·n_ctx·d_attn`` in the attention scores and weighted sums; the backward pass
costs twice the forward, so training costs three times it::

    C = D · (6·N + 6·n_layer·n_ctx·d_attn)

for ``D`` training tokens. Embedding look-ups and the vocabulary projection are left out
as Kaplan does (``N`` is the non-embedding count). Without the attention term this is the
familiar ``C ≈ 6·N·D`` of Hoffmann et al. (2022), which the compute-optimal plan uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from triform.errors import ConfigError


def flops_per_token(params: float, num_layers: int, seq_len: int, attention_width: int) -> float:
    """Training FLOPs per token: ``6·N + 6·n_layer·n_ctx·d_attn`` (see the module docstring)."""
    return 6.0 * params + 6.0 * num_layers * seq_len * attention_width


def training_flops(
    params: float, tokens: float, num_layers: int, seq_len: int, attention_width: int
) -> float:
    """Training FLOPs of ``tokens`` tokens through a model of ``params`` non-embedding
    parameters: ``D · (6·N + 6·n_layer·n_ctx·d_attn)``."""
    return tokens * flops_per_token(params, num_layers, seq_len, attention_width)


@dataclass(frozen=True)
class ChinchillaLaw:
    """``L(N, D) = E + A / N**alpha + B / D**beta`` (Hoffmann et al. 2022, eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, params: Any, tokens: Any) -> Any:
        """Predicted loss for ``params`` non-embedding parameters trained on ``tokens``."""
        params, tokens = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    def optimal(self, flops: Any) -> tuple[Any, Any]:
        """Compute-optimal ``(N_opt, D_opt)`` for budgets ``flops`` under ``C = 6·N·D``.

        Minimising ``L`` on that constraint gives ``N_opt = G·(C/6)**a`` and
        ``D_opt = (C/6)**b / G`` with ``G = (alpha·A / (beta·B))**(1/(alpha+beta))``,
        ``a = beta/(alpha+beta)``, ``b = alpha/(alpha+beta)`` (Hoffmann et al., eq. 4).
        """
        flops = np.asarray(flops, dtype=float)
        total = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / total)
        n_opt = g * (flops / 6.0) ** (self.beta / total)
        d_opt = (flops / 6.0) ** (self.alpha / total) / g
        return n_opt, d_opt

    def to_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChinchillaLaw:
        """Read the keys ``E``, ``A``, ``B``, ``alpha``, ``beta`` (what ``fit --json`` prints)."""
        missing = [key for key in ("E", "A", "B", "alpha", "beta") if key not in data]
        if missing:
            raise ConfigError(
                f"a Chinchilla fit needs the keys E, A, B, alpha, beta; missing {missing}"
            )
        values = {}
        for key in ("E", "A", "B", "alpha", "beta"):
            value = data[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"fit key {key} must be a number, got {value!r}")
            values[key] = float(value)
        law = cls(**values)
        if law.A <= 0 or law.B <= 0 or law.alpha <= 0 or law.beta <= 0:
            raise ConfigError("a Chinchilla fit needs positive A, B, alpha and beta")
        return law


# Hoffmann et al. (2022), approach 3 (their eq. 10).
CHINCHILLA = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)

# Published exponents to compare a fit with.
PUBLISHED = {
    "kaplan": {"alpha_N": 0.076, "alpha_D": 0.095, "alpha_C": 0.050},
    "chinchilla": {"alpha": 0.34, "beta": 0.28},
    "epoch-refit": {"alpha": 0.35, "beta": 0.37},  # Besiroglu et al. (2024)
}
