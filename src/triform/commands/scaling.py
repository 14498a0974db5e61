"""``triform scaling sweep|fit|plan``: from a sweep of pretraining runs to fitted scaling
laws and a compute-optimal plan."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from triform.errors import ConfigError, TriformError
from triform.outputs import (
    KINDS,
    check_output_file,
    check_run_folder,
    check_writable,
    folder_kind,
    write_output,
)

# The PNGs `scaling fit` may write beside fit.json (see triform.scaling.plots.plot_all).
PLOTS = ("loss_vs_compute.png", "loss_vs_params.png", "isoflops.png")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scaling", help="scaling laws: run a sweep, fit power laws, plan a compute budget"
    )
    commands = parser.add_subparsers(dest="scaling_command", metavar="COMMAND", required=True)

    sweep = commands.add_parser(
        "sweep", help="run every (model size, budget) point of a sweep config into results.jsonl"
    )
    sweep.add_argument("config", help="a run TOML with a [sweep] section")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (sweep.* included), e.g. --set sweep.out_dir=runs/s",
    )
    sweep.add_argument(
        "--torchrun",
        type=int,
        metavar="N",
        help="run each point as its own `torchrun --nproc_per_node N` job",
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="list the points (and what is done) without training"
    )
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.set_defaults(func=run_sweep)

    fit = commands.add_parser("fit", help="fit Kaplan and Chinchilla laws to a sweep's results")
    fit.add_argument("results", help="results.jsonl, or the sweep folder holding it")
    fit.add_argument("--json", action="store_true", help="print the fit as JSON")
    fit.add_argument(
        "--out", metavar="DIR", help="where fit.json and the PNGs go (default: next to results)"
    )
    fit.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    fit.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    fit.add_argument(
        "--starts",
        type=int,
        default=None,
        help="L-BFGS runs from this many of the best grid initialisations (default 16; "
        "0: all 4,500 of Hoffmann et al.'s grid)",
    )
    fit.add_argument("--no-plots", action="store_true", help="do not write PNGs")
    fit.add_argument(
        "--overwrite", action="store_true", help="replace an earlier fit.json and PNGs"
    )
    fit.set_defaults(func=run_fit)

    plan = commands.add_parser(
        "plan", help="compute-optimal N, D, loss and a runnable config for a FLOPs budget"
    )
    plan.add_argument("--flops", type=float, required=True, help="the compute budget C in FLOPs")
    plan.add_argument(
        "--fit",
        metavar="FIT.json",
        help="a fit (fit.json or `fit --json` output); default: Chinchilla's",
    )
    plan.add_argument(
        "--base",
        metavar="CONFIG.toml",
        help="the run to size (a run or sweep config); default: GPT-2 style",
    )
    plan.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a value of the base run, e.g. --set data.seq_len=256",
    )
    plan.add_argument(
        "--head-dim", type=int, default=64, help="head size of the shape (default 64)"
    )
    plan.add_argument(
        "--aspect-ratio", type=float, default=64.0, help="preferred hidden / layers (default 64)"
    )
    plan.add_argument("--out", metavar="FILE.toml", help="write the proposed run config here")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    plan.set_defaults(func=run_plan)


# -- sweep -----------------------------------------------------------------------------------


def run_sweep(args: argparse.Namespace) -> int:
    from triform.scaling.sweep import load_sweep, pending
    from triform.scaling.sweep import run_sweep as run

    if args.torchrun is not None and args.torchrun < 1:
        raise TriformError(f"--torchrun needs a positive process count, got {args.torchrun}")
    sweep = load_sweep(args.config, args.overrides)
    check_run_folder(sweep.out_dir, "sweep", sources=sweep.config.data.corpus)
    todo = {p.id for p in pending(sweep)}
    total = sum(p.flops for p in sweep.points)
    print(
        f"sweep: {len(sweep.shapes)} model sizes, {len(sweep.points)} points "
        f"({len(sweep.points) - len(todo)} done), {total:.3g} training FLOPs in all; "
        f"results: {sweep.results_path}"
    )
    if args.dry_run:
        print(f"{'point':<34} {'params':>10} {'tokens':>10} {'steps':>7} {'FLOPs':>10}  status")
        for point in sweep.points:
            status = "todo" if point.id in todo else "done"
            print(
                f"{point.id:<34} {point.params:>10,} {point.tokens:>10.3g} {point.steps:>7} "
                f"{point.flops:>10.3g}  {status}"
            )
        return 0

    def report(row: dict) -> None:
        print(
            f"{row['id']}: loss {row['loss']:.4f} ({row['params']:,} params, "
            f"{row['tokens']:.3g} tokens, {row['wall_seconds']:.1f}s)"
        )

    rows = run(sweep, torchrun=args.torchrun, progress=not args.no_progress, on_row=report)
    print(f"done: {len(rows)} points in {sweep.results_path}")
    print(f"fit them: triform scaling fit {sweep.results_path}")
    return 0


# -- fit -------------------------------------------------------------------------------------


def _results_path(text: str) -> Path:
    from triform.scaling.sweep import RESULTS_FILE

    path = Path(text)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise TriformError(f"results file not found: {path}")
    return path


def run_fit(args: argparse.Namespace) -> int:
    from triform.scaling.analysis import analyse
    from triform.scaling.fit import STARTS
    from triform.scaling.sweep import read_results

    if args.bootstrap < 0:
        raise TriformError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not 0 < args.level < 1:
        raise TriformError(f"--level must be in (0, 1), got {args.level}")
    if args.starts is not None and args.starts < 0:
        raise TriformError(f"--starts must be >= 0, got {args.starts}")
    starts = STARTS if args.starts is None else (args.starts or None)
    path = _results_path(args.results)
    out_dir = Path(args.out) if args.out else path.parent
    kind = folder_kind(out_dir)
    if kind not in (None, "sweep"):
        raise TriformError(f"--out {out_dir} holds {KINDS[kind].what}: write the fit elsewhere")
    check_writable(out_dir, f"--out {out_dir}")
    names = ["fit.json"] + ([] if args.no_plots else list(PLOTS))
    for name in names:
        check_output_file(
            out_dir / name, inputs=[path], overwrite=args.overwrite, create_folders=True
        )
    analysis = analyse(
        read_results(path),
        bootstrap=args.bootstrap,
        seed=args.seed,
        level=args.level,
        starts=starts,
    )
    fit = analysis.to_dict()
    write_output(out_dir / "fit.json", json.dumps(fit, indent=2) + "\n")
    plots = []
    if not args.no_plots:
        from triform.scaling.plots import plot_all

        plots = plot_all(analysis, out_dir)
    if args.json:
        print(json.dumps(fit, indent=2))
        return 0
    _print_fit(analysis)
    print(f"fit: {out_dir / 'fit.json'}" + "".join(f"\nplot: {p}" for p in plots))
    return 0


def _interval(fit, key: str) -> str:
    if key not in fit.intervals:
        return ""
    low, high = fit.intervals[key]
    return f"  [{low:.4g}, {high:.4g}]"


def _print_fit(analysis) -> None:
    from triform.scaling.laws import CHINCHILLA, PUBLISHED

    kaplan = PUBLISHED["kaplan"]
    print(f"{len(analysis.rows)} points, {len(analysis.frontier)} on the compute frontier")
    names = {"N": ("N_c", "alpha_N"), "D": ("D_c", "alpha_D"), "C": ("C_c", "alpha_C")}
    for key, law in analysis.kaplan.items():
        scale, exponent = names[key]
        print(
            f"L({key}) = ({scale}/{key})^{exponent}: {exponent} {law.exponent:.4f} "
            f"(Kaplan {kaplan[exponent]}), {scale} 1e{law.log_scale / math.log(10):.2f}, "
            f"{law.points} points"
        )
    if analysis.chinchilla is not None:
        fit = analysis.chinchilla
        level = f"{fit.level:.0%} bootstrap intervals over {fit.bootstrap} resamples"
        print("L(N, D) = E + A/N^alpha + B/D^beta" + (f" ({level})" if fit.intervals else ""))
        published = {key: f"Chinchilla {value}" for key, value in CHINCHILLA.to_dict().items()}
        for key in ("alpha", "beta"):
            published[key] += f", Epoch AI refit {PUBLISHED['epoch-refit'][key]}"
        for key in ("E", "A", "B", "alpha", "beta"):
            value = getattr(fit.law, key)
            print(f"  {key:<6} {value:>10.4g}{_interval(fit, key)}   ({published[key]})")
    if analysis.isoflops is not None:
        iso = analysis.isoflops
        for curve in iso.curves:
            print(
                f"IsoFLOP C={curve.flops:.3g}: N_opt {curve.n_opt:.4g}, D_opt {curve.d_opt:.4g}, "
                f"loss {curve.loss_opt:.4f}"
            )
        if iso.a is not None:
            print(f"N_opt ∝ C^{iso.a:.3f}, D_opt ∝ C^{iso.b:.3f} (Chinchilla: 0.50, 0.50)")
    for note in analysis.notes:
        print(f"note: {note}")


# -- plan ------------------------------------------------------------------------------------


def _load_law(path: str):
    from triform.scaling.laws import ChinchillaLaw

    file = Path(path)
    if not file.is_file():
        raise TriformError(f"fit file not found: {path}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TriformError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict) or "E" not in data:
        raise TriformError(f"{path} holds no Chinchilla law (a sweep of 5+ points fits one)")
    return ChinchillaLaw.from_dict(data)


def _base_tree(path: str | None, overrides: list[str]) -> dict:
    from triform.config import apply_overrides
    from triform.scaling.plan import DEFAULT_BASE
    from triform.scaling.sweep import load_tree

    if path is None:
        return apply_overrides(json.loads(json.dumps(DEFAULT_BASE)), overrides)
    tree = load_tree(path, overrides)
    tree.pop("sweep", None)
    return tree


def run_plan(args: argparse.Namespace) -> int:
    from triform.scaling import toml_writer
    from triform.scaling.laws import CHINCHILLA
    from triform.scaling.plan import make_plan

    if not (math.isfinite(args.flops) and args.flops > 0):
        raise ConfigError(f"--flops must be a positive number, got {args.flops}")
    if args.out:
        inputs = [args.fit, args.base]
        check_output_file(args.out, inputs=inputs, overwrite=args.overwrite, create_folders=True)
    if args.head_dim < 1 or args.aspect_ratio <= 0:
        raise ConfigError("--head-dim and --aspect-ratio must be positive")
    law = _load_law(args.fit) if args.fit else CHINCHILLA
    plan = make_plan(
        args.flops,
        law,
        _base_tree(args.base, args.overrides),
        head_dim=args.head_dim,
        aspect_ratio=args.aspect_ratio,
    )
    text = toml_writer.dumps(plan.run)
    if args.out:
        write_output(args.out, text)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    source = f"fit {args.fit}" if args.fit else "Chinchilla (Hoffmann et al. 2022)"
    shape = plan.shape
    print(f"budget   C = {plan.flops:.3g} FLOPs (C = 6·N·D)")
    print(
        f"law      L = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} + {law.B:.4g}/D^{law.beta:.4g}"
        f"  ({source})"
    )
    print(
        f"optimum  N = {plan.params:.4g} non-embedding parameters, D = {plan.tokens:.4g} tokens "
        f"({plan.tokens / plan.params:.1f} tokens per parameter), predicted loss {plan.loss:.4f}"
    )
    print(
        f"shape    {shape.num_layers} layers, hidden {shape.hidden_size}, {shape.num_heads} heads, "
        f"ffn {shape.ffn_size}: N = {plan.shape_params:,}; {plan.steps:,} steps of "
        f"{plan.tokens_per_step:,} tokens = {plan.shape_tokens:.4g} tokens, "
        f"predicted loss {plan.shape_loss:.4f}"
    )
    if args.out:
        print(f"config:  {args.out}  (train it: triform pretrain {args.out})")
    else:
        print("\n" + text.rstrip())
    return 0
