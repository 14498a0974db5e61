"""From sweep results to every fitted law at once: what ``triform scaling fit`` reports."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from triform.errors import TriformError
from triform.scaling.fit import (
    STARTS,
    ChinchillaFit,
    IsoFlopFit,
    PowerLaw,
    compute_frontier,
    fit_chinchilla,
    fit_isoflops,
    fit_power_law,
)

REQUIRED = ("params", "tokens", "loss")  # id and flops may be left out (see complete_rows)


@dataclass
class ScalingAnalysis:
    """The fits of one sweep. A fit the points cannot support is ``None`` with the reason
    in ``notes``."""

    rows: list[dict[str, Any]]
    chinchilla: ChinchillaFit | None
    kaplan: dict[str, PowerLaw]  # "N", "D", "C"
    frontier: list[int]  # indices into rows
    isoflops: IsoFlopFit | None
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The Chinchilla parameters at the top level (``E``, ``A``, ``B``, ``alpha``,
        ``beta``, ``intervals``) when fitted, then the other fits."""
        out: dict[str, Any] = self.chinchilla.to_dict() if self.chinchilla else {}
        out["kaplan"] = {key: law.to_dict() for key, law in self.kaplan.items()}
        out["frontier"] = [self.rows[i]["id"] for i in self.frontier]
        out["isoflops"] = self.isoflops.to_dict() if self.isoflops else None
        out["points"] = len(self.rows)
        out["notes"] = self.notes
        return out


def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(row[key]) for row in rows])


def _best_per(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct ``key`` value, the lowest loss among the points that have it."""
    best: dict[float, float] = defaultdict(lambda: np.inf)
    for row in rows:
        best[float(row[key])] = min(best[float(row[key])], float(row["loss"]))
    xs = np.array(sorted(best))
    return xs, np.array([best[x] for x in xs])


def check_rows(rows: list[dict[str, Any]]) -> None:
    """Raise :class:`TriformError` unless every row has usable ``params``, ``tokens`` and
    ``loss`` (and ``flops``, where given)."""
    if not rows:
        raise TriformError("no sweep results to fit (results.jsonl is empty or missing)")
    for number, row in enumerate(rows, 1):
        name = row.get("id", f"{number}")
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise TriformError(f"results row {name} lacks {', '.join(missing)}")
        for key in (*REQUIRED, "flops"):
            value = row.get(key, 1.0)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise TriformError(f"results row {name}: {key} must be positive, got {value!r}")


def complete_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows with an ``id`` (``row <n>``) and ``flops`` (6·N·D, Kaplan et al.'s estimate) where
    a hand-written results file leaves them out, and a note for each kind of estimate."""
    done, notes = [], []
    estimated = 0
    for number, row in enumerate(rows, 1):
        row = dict(row)
        row.setdefault("id", f"row {number}")
        if "flops" not in row:
            row["flops"] = 6.0 * float(row["params"]) * float(row["tokens"])
            estimated += 1
        done.append(row)
    if estimated:
        notes.append(f"flops estimated as 6·N·D for {estimated} of {len(rows)} rows without it")
    return done, notes


def analyse(
    rows: list[dict[str, Any]],
    *,
    bootstrap: int = 200,
    seed: int = 0,
    level: float = 0.95,
    starts: int | None = STARTS,
) -> ScalingAnalysis:
    """Fit every law the rows of a sweep support.

    - ``kaplan["N"]``: ``L(N) = (N_c/N)**alpha_N`` on each model size's lowest loss (its
      best-trained run, as Kaplan et al. fit models trained near convergence);
    - ``kaplan["D"]``: ``L(D) = (D_c/D)**alpha_D`` on each token count's lowest loss (its
      best model), from the token-budget points when the sweep has any;
    - ``kaplan["C"]``: ``L(C) = (C_c/C)**alpha_C`` on the compute frontier;
    - the Chinchilla law on all points (five or more), with bootstrap intervals;
    - IsoFLOP parabolas for points from compute budgets (``budget_kind = "flops"``).
    """
    check_rows(rows)
    rows, notes = complete_rows(rows)
    params, tokens, flops, loss = (_column(rows, k) for k in ("params", "tokens", "flops", "loss"))
    kaplan: dict[str, PowerLaw] = {}
    # L(D) on the token-budget grid where there is one: a compute budget gives each model
    # its own token count, and the best loss at such a D is only that of one small model.
    grid = [row for row in rows if row.get("budget_kind", "tokens") == "tokens"] or rows
    for name, key, subset in (("N", "params", rows), ("D", "tokens", grid)):
        xs, best = _best_per(subset, key)
        if len(xs) >= 2:
            kaplan[name] = fit_power_law(xs, best)
        else:
            notes.append(f"L({name}) needs two or more distinct {key} values")
    frontier = compute_frontier(flops, loss)
    if len(frontier) >= 2:
        kaplan["C"] = fit_power_law(flops[frontier], loss[frontier])
    else:
        notes.append("L(C) needs two or more points on the compute frontier")
    chinchilla = None
    if len(rows) >= 5:
        chinchilla = fit_chinchilla(
            params, tokens, loss, bootstrap=bootstrap, seed=seed, level=level, starts=starts
        )
    else:
        notes.append(
            f"the Chinchilla law has 5 parameters: it needs 5 or more points, not {len(rows)}"
        )
    iso_rows = [row for row in rows if row.get("budget_kind") == "flops"]
    isoflops = None
    if iso_rows:
        isoflops = fit_isoflops(
            *(_column(iso_rows, k) for k in ("budget", "params", "tokens", "loss"))
        )
        for flops, why in isoflops.left_out:
            notes.append(f"IsoFLOP C={flops:.3g} left out: {why}")
        if not isoflops.curves:
            notes.append("no compute budget has 3+ model sizes with a minimum inside them")
            isoflops = None
        elif isoflops.a is None:
            notes.append("N_opt ∝ C^a needs two or more compute budgets with a minimum")
    return ScalingAnalysis(rows, chinchilla, kaplan, frontier.tolist(), isoflops, notes)
