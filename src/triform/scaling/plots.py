"""PNG plots of a scaling analysis (matplotlib, Agg backend): loss against compute with the
frontier, loss against parameters per budget, and the IsoFLOP curves; fitted curves drawn
over the points."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from triform.outputs import replacing
from triform.scaling.analysis import ScalingAnalysis


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _span(values: np.ndarray, pad: float = 1.3) -> np.ndarray:
    return np.geomspace(values.min() / pad, values.max() * pad, 100)


def plot_all(analysis: ScalingAnalysis, out_dir: str | Path) -> list[Path]:
    """Write the plots the analysis supports into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_loss_vs_compute(analysis, out_dir / "loss_vs_compute.png")]
    paths.append(_loss_vs_params(analysis, out_dir / "loss_vs_params.png"))
    if analysis.isoflops is not None:
        paths.append(_isoflops(analysis, out_dir / "isoflops.png"))
    return paths


def _loss_vs_compute(analysis: ScalingAnalysis, path: Path) -> Path:
    plt = _pyplot()
    rows = analysis.rows
    flops = np.array([r["flops"] for r in rows], dtype=float)
    loss = np.array([r["loss"] for r in rows], dtype=float)
    params = np.array([r["params"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    dots = ax.scatter(flops, loss, c=np.log10(params), cmap="viridis", s=24, zorder=3)
    fig.colorbar(dots, ax=ax, label="log10 non-embedding parameters")
    front = analysis.frontier
    ax.plot(flops[front], loss[front], "k-", lw=1, alpha=0.6, label="compute frontier")
    grid = _span(flops)
    if "C" in analysis.kaplan:
        law = analysis.kaplan["C"]
        ax.plot(grid, law(grid), "r--", label=f"L(C) = (C_c/C)^{law.exponent:.3f}")
    if analysis.chinchilla is not None:
        chin = analysis.chinchilla.law
        n_opt, d_opt = chin.optimal(grid)
        ax.plot(grid, chin.loss(n_opt, d_opt), "b:", label="Chinchilla fit, compute-optimal")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="validation loss")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def _loss_vs_params(analysis: ScalingAnalysis, path: Path) -> Path:
    plt = _pyplot()
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for row in analysis.rows:
        groups[(row.get("budget_kind", "tokens"), float(row.get("budget", row["tokens"])))].append(
            row
        )
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = plt.cm.plasma(np.linspace(0, 0.85, max(len(groups), 1)))
    all_params = np.array([r["params"] for r in analysis.rows], dtype=float)
    grid = _span(all_params)
    for color, ((kind, budget), rows) in zip(colors, sorted(groups.items()), strict=True):
        rows = sorted(rows, key=lambda r: r["params"])
        params = np.array([r["params"] for r in rows], dtype=float)
        loss = np.array([r["loss"] for r in rows], dtype=float)
        label = f"D = {budget:.3g} tokens" if kind == "tokens" else f"C = {budget:.3g} FLOPs"
        ax.plot(params, loss, "o", color=color, label=label)
        if analysis.chinchilla is not None:
            law = analysis.chinchilla.law
            tokens = np.full_like(grid, budget) if kind == "tokens" else budget / (6 * grid)
            ax.plot(grid, law.loss(grid, tokens), "-", color=color, lw=1)
    if "N" in analysis.kaplan:
        law = analysis.kaplan["N"]
        ax.plot(grid, law(grid), "k--", lw=1, label=f"L(N) = (N_c/N)^{law.exponent:.3f}")
    ax.set(
        xscale="log", yscale="log", xlabel="non-embedding parameters N", ylabel="validation loss"
    )
    ax.set_title("points; lines: fitted L(N, D)" if analysis.chinchilla else "points", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def _isoflops(analysis: ScalingAnalysis, path: Path) -> Path:
    plt = _pyplot()
    iso = analysis.isoflops
    assert iso is not None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(iso.curves)))
    for color, curve in zip(colors, iso.curves, strict=True):
        rows = [
            r
            for r in analysis.rows
            if r.get("budget_kind") == "flops" and r["budget"] == curve.flops
        ]
        params = np.array([r["params"] for r in rows], dtype=float)
        left.plot(
            params, [r["loss"] for r in rows], "o", color=color, label=f"C = {curve.flops:.3g}"
        )
        grid = _span(params, 1.1)
        left.plot(grid, np.polyval(curve.coefficients, np.log(grid)), "-", color=color, lw=1)
        left.plot([curve.n_opt], [curve.loss_opt], "*", color=color, ms=11, mec="k")
    left.set(xscale="log", xlabel="non-embedding parameters N", ylabel="validation loss")
    left.set_title("IsoFLOP curves (parabolas in log N)", fontsize=9)
    left.legend(fontsize=7)
    budgets = np.array([c.flops for c in iso.curves])
    right.plot(budgets, [c.n_opt for c in iso.curves], "o", label="N_opt")
    right.plot(budgets, [c.d_opt for c in iso.curves], "s", label="D_opt")
    if iso.a is not None:
        grid = _span(budgets)
        right.plot(grid, iso.k_n * grid**iso.a, "-", lw=1, label=f"N_opt ∝ C^{iso.a:.2f}")
        right.plot(grid, iso.k_d * grid**iso.b, "-", lw=1, label=f"D_opt ∝ C^{iso.b:.2f}")
    right.set(xscale="log", yscale="log", xlabel="training FLOPs C")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path
