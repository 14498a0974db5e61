"""Scaling laws: sweeps of pretraining runs over model size and data, power-law fits
(Kaplan et al. 2020; Hoffmann et al. 2022), compute-optimal plans and their plots.

- :mod:`~triform.scaling.sweep`: run a ``[sweep]`` config point by point into ``results.jsonl``;
- :mod:`~triform.scaling.fit` and :mod:`~triform.scaling.analysis`: fit the laws;
- :mod:`~triform.scaling.plan`: N_opt, D_opt and a runnable config for a FLOPs budget;
- :mod:`~triform.scaling.plots`: PNGs of the fits; :mod:`~triform.scaling.laws`: the formulas.
"""

from triform.scaling.analysis import ScalingAnalysis, analyse
from triform.scaling.fit import (
    ChinchillaFit,
    IsoFlopFit,
    PowerLaw,
    compute_frontier,
    fit_chinchilla,
    fit_isoflops,
    fit_power_law,
)
from triform.scaling.laws import (
    CHINCHILLA,
    PUBLISHED,
    ChinchillaLaw,
    flops_per_token,
    training_flops,
)
from triform.scaling.plan import Plan, make_plan, nearest_shape
from triform.scaling.sweep import Sweep, load_sweep, read_results, run_sweep

__all__ = [
    "CHINCHILLA",
    "PUBLISHED",
    "ChinchillaFit",
    "ChinchillaLaw",
    "IsoFlopFit",
    "PowerLaw",
    "Plan",
    "ScalingAnalysis",
    "Sweep",
    "analyse",
    "compute_frontier",
    "fit_chinchilla",
    "fit_isoflops",
    "fit_power_law",
    "flops_per_token",
    "load_sweep",
    "make_plan",
    "nearest_shape",
    "read_results",
    "run_sweep",
    "training_flops",
]
