"""Scaling laws: the fits recover known laws from synthetic data, the sweep turns a config
into the right pretraining runs (and resumes), and `triform scaling sweep|fit|plan` works end
to end on a tiny sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib

from triform import presets
from triform.cli import main
from triform.errors import ConfigError
from triform.models import build_model
from triform.scaling import toml_writer
from triform.scaling.analysis import analyse
from triform.scaling.fit import compute_frontier, fit_chinchilla, fit_isoflops, fit_power_law
from triform.scaling.laws import CHINCHILLA, ChinchillaLaw, flops_per_token, training_flops
from triform.scaling.plan import make_plan, nearest_shape
from triform.scaling.plots import plot_all
from triform.scaling.sweep import load_sweep, read_results
from triform.train.run_config import build_run_config, load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"


def _chinchilla_grid(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 5 x 5 (N, D) grid of the published law with 1% multiplicative noise."""
    params, tokens = np.meshgrid(np.geomspace(1e6, 1e10, 5), np.geomspace(1e8, 1e12, 5))
    params, tokens = params.ravel(), tokens.ravel()
    noise = 1 + np.random.default_rng(seed).normal(0.0, 0.01, params.size)
    return params, tokens, CHINCHILLA.loss(params, tokens) * noise


# -- fits ------------------------------------------------------------------------------------


def test_the_chinchilla_fit_recovers_the_published_law_from_noisy_points() -> None:
    params, tokens, loss = _chinchilla_grid()
    fit = fit_chinchilla(params, tokens, loss, bootstrap=8, seed=0, starts=4)
    assert fit.law.alpha == pytest.approx(0.34, rel=0.10)
    assert fit.law.beta == pytest.approx(0.28, rel=0.10)
    assert pytest.approx(1.69, rel=0.05) == fit.law.E
    assert set(fit.intervals) == {"E", "A", "B", "alpha", "beta"}
    for key, (low, high) in fit.intervals.items():
        assert low <= high, key
    low, high = fit.intervals["alpha"]
    assert low < 0.34 * 1.1 and high > 0.34 * 0.9  # a sensible interval around the truth


def test_the_chinchilla_fit_is_deterministic_for_a_seed() -> None:
    params, tokens, loss = _chinchilla_grid(seed=1)
    first = fit_chinchilla(params, tokens, loss, bootstrap=4, seed=3, starts=2).to_dict()
    again = fit_chinchilla(params, tokens, loss, bootstrap=4, seed=3, starts=2).to_dict()
    other = fit_chinchilla(params, tokens, loss, bootstrap=4, seed=4, starts=2).to_dict()
    assert first == again
    assert first["alpha"] == other["alpha"]  # the point estimate does not use the seed
    assert first["intervals"] != other["intervals"]


def test_kaplan_power_laws_are_recovered() -> None:
    rng = np.random.default_rng(0)
    params = np.geomspace(1e6, 1e10, 9)
    loss = (8.8e13 / params) ** 0.076 * (1 + rng.normal(0, 0.01, params.size))
    law = fit_power_law(params, loss)
    assert law.exponent == pytest.approx(0.076, rel=0.10)
    assert np.log10(law.scale) == pytest.approx(np.log10(8.8e13), rel=0.10)
    tokens = np.geomspace(1e8, 1e12, 9)
    loss = (5.4e13 / tokens) ** 0.095 * (1 + rng.normal(0, 0.01, tokens.size))
    assert fit_power_law(tokens, loss).exponent == pytest.approx(0.095, rel=0.10)


def test_the_compute_frontier_is_the_lower_envelope() -> None:
    flops = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0]
    loss = [5.0, 4.0, 4.5, 4.2, 3.0, 3.5]
    assert compute_frontier(flops, loss).tolist() == [0, 1, 4]


def test_the_compute_optimal_split_minimises_the_law_at_fixed_compute() -> None:
    flops = 1e21
    n_opt, d_opt = CHINCHILLA.optimal(flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops)
    grid = np.geomspace(n_opt / 10, n_opt * 10, 2001)
    best = grid[np.argmin(CHINCHILLA.loss(grid, flops / (6 * grid)))]
    assert best == pytest.approx(n_opt, rel=0.01)


def test_isoflop_parabolas_recover_the_allocation_exponents() -> None:
    budgets, params, tokens = [], [], []
    for flops in (1e18, 1e19, 1e20, 1e21):
        n_opt, _ = CHINCHILLA.optimal(flops)
        for n in n_opt * np.geomspace(1 / 4, 4, 7):
            budgets.append(flops)
            params.append(n)
            tokens.append(flops / (6 * n))
    loss = CHINCHILLA.loss(np.array(params), np.array(tokens))
    iso = fit_isoflops(budgets, params, tokens, loss)
    assert len(iso.curves) == 4
    assert iso.a == pytest.approx(0.28 / 0.62, rel=0.05)
    assert iso.b == pytest.approx(0.34 / 0.62, rel=0.05)


def test_flops_count_six_n_d_plus_attention() -> None:
    assert flops_per_token(1000, 2, 128, 64) == 6 * 1000 + 6 * 2 * 128 * 64
    assert training_flops(1000, 10, 2, 128, 64) == 10 * flops_per_token(1000, 2, 128, 64)


def test_an_analysis_of_four_points_leaves_out_the_chinchilla_law() -> None:
    rows = [
        {"id": f"p{i}", "params": n, "tokens": d, "flops": 6 * n * d, "loss": 4.0 - 0.1 * i}
        for i, (n, d) in enumerate([(1e4, 1e5), (1e4, 2e5), (2e4, 1e5), (2e4, 2e5)])
    ]
    analysis = analyse(rows, bootstrap=0)
    assert analysis.chinchilla is None
    assert any("5 or more points" in note for note in analysis.notes)
    assert set(analysis.kaplan) == {"N", "D", "C"}
    assert "E" not in analysis.to_dict()


# -- plan ------------------------------------------------------------------------------------


def test_the_nearest_shape_of_gpt2_small_is_gpt2_small() -> None:
    gpt2 = presets.get("gpt2")
    params = build_model(gpt2, device="meta").num_parameters(non_embedding=True)
    shape, count = nearest_shape(params, gpt2)
    assert (shape.num_layers, shape.hidden_size, shape.num_heads, shape.ffn_size) == (
        12,
        768,
        12,
        3072,
    )
    assert count == params


def test_a_plan_is_a_valid_run_with_the_optimal_token_count() -> None:
    plan = make_plan(1e19)
    n_opt, d_opt = CHINCHILLA.optimal(1e19)
    assert plan.params == pytest.approx(n_opt) and plan.tokens == pytest.approx(d_opt)
    assert plan.shape_params == pytest.approx(n_opt, rel=0.10)
    assert plan.shape_tokens == pytest.approx(d_opt, rel=0.01)
    assert plan.loss == pytest.approx(float(CHINCHILLA.loss(n_opt, d_opt)))
    config = build_run_config(tomllib.loads(toml_writer.dumps(plan.run)))
    assert config.model.num_layers == plan.shape.num_layers
    assert config.train.steps == plan.steps
    with pytest.raises(ConfigError):
        make_plan(-1.0)
    with pytest.raises(ConfigError):
        ChinchillaLaw.from_dict({"E": 1.0, "A": 1.0, "B": 1.0, "alpha": 0.3})


# -- sweep -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 60 KB of real text in eight documents (stdlib documentation without Shakespeare)."""
    folder = tmp_path_factory.mktemp("corpus")
    if SHAKESPEARE.is_dir():
        text = (SHAKESPEARE / "macbeth.txt").read_text()
    else:
        from pydoc_data.topics import topics

        text = "\n\n".join(topics.values())
    for i in range(8):
        (folder / f"doc{i}.txt").write_text(text[i * 8000 : (i + 1) * 8000])
    return folder


SWEEP = """
[model]
preset = "gpt2"
max_positions = 32
dropout = 0.0
attention_dropout = 0.0

[tokenizer]
kind = "char"
vocab_size = 256

[data]
corpus = "{corpus}"
seq_len = 32
val_fraction = 0.25
workers = 1

[objective]
name = "causal-lm"

[train]
batch_size = 4
eval_batches = 2
log_every = 2
tensorboard = false
sample_tokens = 4
max_minutes = 5.0

[optim]
lr = 3e-3

[schedule]
warmup_steps = 100
total_steps = 1000

[sweep]
out_dir = "{out}"
tokens = [256, 512, 1024]
models = [
  {{ num_layers = 1, hidden_size = 16, num_heads = 2 }},
  {{ num_layers = 2, hidden_size = 32, num_heads = 2, lr = 1e-3 }},
]
"""


def _sweep_file(folder: Path, corpus: Path, **replace: str) -> Path:
    text = SWEEP.format(corpus=corpus, out=folder / "sweep")
    for old, new in replace.items():
        text = text.replace(old, new)
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def test_sweep_points_are_sized_from_their_budgets(tmp_path: Path, corpus: Path) -> None:
    sweep = load_sweep(_sweep_file(tmp_path, corpus))
    assert len(sweep.points) == 6
    assert sweep.tokens_per_step == 4 * 32
    point = next(p for p in sweep.points if p.id == "l2-h32-a2-f128_tokens1024")
    assert point.steps == 8 and point.tokens == 1024
    model = presets.get("gpt2", num_layers=2, hidden_size=32, num_heads=2, ffn_size=128)
    assert point.params == build_model(model, device="meta").num_parameters(non_embedding=True)
    assert point.flops == training_flops(point.params, 1024, 2, 32, 32)
    config = sweep.point_config(point)
    assert (config.model.num_layers, config.model.hidden_size, config.model.ffn_size) == (
        2,
        32,
        128,
    )
    assert config.train.steps == 8 and config.train.max_minutes is None
    assert config.train.eval_every == 8 and config.optim.lr == 1e-3
    assert config.schedule.total_steps is None and config.schedule.warmup_steps == 1
    assert Path(config.train.out_dir) == tmp_path / "sweep" / "points" / point.id
    assert config.tokenizer.path == str(tmp_path / "sweep" / "tokenizer.json")
    assert config.data.shards_dir == str(tmp_path / "sweep" / "data")


def test_a_depth_rule_and_compute_budgets_make_isoflop_points(tmp_path: Path, corpus: Path) -> None:
    models = SWEEP.format(corpus="", out="").split("models = [")[1].split("]")[0]
    path = _sweep_file(
        tmp_path,
        corpus,
        **{
            f"models = [{models}]": "depths = [1, 2, 3]\naspect_ratio = 16\nhead_dim = 8",
            "tokens = [256, 512, 1024]": "flops = [1e9]",
        },
    )
    sweep = load_sweep(path)
    assert [(s.num_layers, s.hidden_size, s.num_heads, s.ffn_size) for s in sweep.shapes] == [
        (1, 16, 2, 64),
        (2, 32, 4, 128),
        (3, 48, 6, 192),
    ]
    for point in sweep.points:  # each model gets about the budget's tokens
        assert point.budget_kind == "flops" and point.flops == pytest.approx(1e9, rel=0.1)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("tokens = [256, 512, 1024]", "", "budgets"),
        ("num_heads = 2 }", "num_heads = 2, width = 3 }", "unknown key"),
        ("tokens = [256, 512, 1024]", "tokens = [256, -1]", "positive"),
        ("[sweep]", "[sweep]\ndepths = [1]", "not both"),
        ("[sweep]", "[sweep]\nwarmup_fraction = 1.5", "warmup_fraction"),
    ],
)
def test_bad_sweep_configs_are_one_line_errors(
    tmp_path: Path, corpus: Path, old: str, new: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sweep(_sweep_file(tmp_path, corpus, **{old: new}))


def test_torchrun_points_get_their_own_config_and_command(tmp_path: Path, corpus: Path) -> None:
    sweep = load_sweep(_sweep_file(tmp_path, corpus))
    point = sweep.points[0]
    path = tmp_path / "point.toml"
    path.write_text(toml_writer.dumps(sweep.point_tree(point)))
    assert load_run_config(path).to_dict() == sweep.point_config(point).to_dict()
    command = sweep.torchrun_command(4, path)
    assert command == [
        "torchrun",
        "--nproc_per_node",
        "4",
        "-m",
        "triform.cli",
        "pretrain",
        str(path),
    ]


def test_sweep_fit_and_plan_end_to_end(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _sweep_file(tmp_path, corpus)
    out = tmp_path / "sweep"
    assert main(["scaling", "sweep", str(config), "--no-progress"]) == 0
    rows = read_results(out)
    assert len(rows) == 6
    for row in rows:
        assert row["loss"] > 0 and row["params"] < row["params_total"]
        assert row["tokens"] == row["steps"] * 4 * 32
        assert row["flops"] > 6 * row["params"] * row["tokens"]  # plus attention
    assert len({row["out_dir"] for row in rows}) == 6
    assert (out / "tokenizer.json").is_file() and (out / "data").is_dir()

    # resumes: a point missing from results.jsonl (and its stale folder) is run again, alone
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    capsys.readouterr()
    assert main(["scaling", "sweep", str(config), "--no-progress"]) == 0
    out_lines = capsys.readouterr().out.splitlines()
    ran = [line for line in out_lines if ": loss " in line and not line.startswith("step ")]
    assert len(ran) == 1 and ran[0].startswith(json.loads(lines[-1])["id"]), ran
    assert len(read_results(out)) == 6

    args = ["scaling", "fit", str(out / "results.jsonl"), "--json", "--bootstrap", "4"]
    assert main([*args, "--starts", "2"]) == 0
    fit = json.loads(capsys.readouterr().out)
    for key in ("E", "A", "B", "alpha", "beta"):
        assert np.isfinite(fit[key]) and len(fit["intervals"][key]) == 2
    assert set(fit["kaplan"]) == {"N", "D", "C"} and fit["points"] == 6
    assert json.loads((out / "fit.json").read_text()) == fit
    for name in ("loss_vs_compute.png", "loss_vs_params.png"):
        assert (out / name).stat().st_size > 1000

    plan = tmp_path / "plan.toml"
    flops = 10 * max(row["flops"] for row in rows)
    assert (
        main(
            [
                "scaling", "plan", "--flops", str(flops), "--fit", str(out / "fit.json"),
                "--base", str(config), "--head-dim", "8", "--out", str(plan),
            ]
        )
        == 0
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "predicted loss" in printed and str(plan) in printed
    planned = load_run_config(plan)
    assert planned.model.hidden_size % 8 == 0 and planned.train.steps >= 1
    assert planned.data.corpus == [str(corpus)]


def test_plan_without_a_fit_uses_the_chinchilla_constants(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["scaling", "plan", "--flops", "1e21"]) == 0
    printed = capsys.readouterr().out
    n_opt, _ = CHINCHILLA.optimal(1e21)
    assert f"N = {n_opt:.4g}" in printed and "Chinchilla" in printed
    assert tomllib.loads(printed.split("\n\n", 1)[1])["model"]["preset"] == "gpt2"


@pytest.mark.parametrize(
    "argv",
    [
        ["scaling", "fit", "no/such/results.jsonl"],
        ["scaling", "plan", "--flops", "-5"],
        ["scaling", "plan", "--flops", "1e20", "--fit", "no/such/fit.json"],
        ["scaling", "sweep", "no/such/sweep.toml"],
        ["scaling", "sweep", str(ROOT / "configs" / "gpt-char-shakespeare.toml")],  # no [sweep]
    ],
)
def test_bad_input_is_a_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("triform: error:") and "\n" not in err


def test_a_fit_without_a_chinchilla_law_cannot_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"kaplan": {}, "notes": []}))
    assert main(["scaling", "plan", "--flops", "1e20", "--fit", str(path)]) == 2
    assert "no Chinchilla law" in capsys.readouterr().err


def test_an_isoflop_sweep_is_analysed_and_plotted(tmp_path: Path) -> None:
    rows = []
    for flops in (1e15, 1e16, 1e17):
        n_opt, _ = CHINCHILLA.optimal(flops)
        for i, n in enumerate(n_opt * np.geomspace(1 / 8, 8, 5)):
            d = flops / (6 * n)
            loss = float(CHINCHILLA.loss(n, d))
            rows.append(
                {"id": f"{flops:g}-{i}", "params": n, "tokens": d, "flops": flops, "loss": loss}
                | {"budget_kind": "flops", "budget": flops}
            )
    analysis = analyse(rows, bootstrap=2, starts=2)
    assert analysis.isoflops is not None and len(analysis.isoflops.curves) == 3
    assert analysis.chinchilla is not None
    assert analysis.chinchilla.law.alpha == pytest.approx(0.34, rel=0.05)
    paths = plot_all(analysis, tmp_path)
    assert [p.name for p in paths] == ["loss_vs_compute.png", "loss_vs_params.png", "isoflops.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_the_shipped_shakespeare_sweep_has_six_sizes_by_three_budgets(tmp_path: Path) -> None:
    sweep = load_sweep(
        ROOT / "configs" / "scaling-shakespeare.toml",
        [f"sweep.out_dir={json.dumps(str(tmp_path))}"],
    )
    assert len(sweep.shapes) >= 6 and len(sweep.section.tokens) >= 3
    assert len(sweep.points) == len(sweep.shapes) * (
        len(sweep.section.tokens) + len(sweep.section.flops)
    )
    assert sweep.config.tokenizer.kind == "char" and sweep.config.data.if_missing == "default"
    for point in sweep.points:
        assert sweep.point_config(point).train.steps == point.steps


def test_isoflop_budgets_whose_optimum_was_not_bracketed_are_left_out() -> None:
    """A budget where the loss only rises with N has its optimum below the sizes tried: it
    is named in ``left_out``, not extrapolated to a nonsense N_opt."""
    params = np.array([1e4, 3e4, 1e5, 3e5, 1e6] * 2)
    budget = np.repeat([1e12, 1e13], 5)
    tokens = budget / (6 * params)
    x = np.log(params)
    rising = 2.0 + 0.02 * (x - x.min()) ** 2 + 0.05 * (x - x.min())  # vertex below the sizes
    bowl = 2.0 + 0.05 * (x - np.log(1e5)) ** 2  # vertex at 1e5
    loss = np.where(budget == 1e12, rising, bowl)
    fit = fit_isoflops(budget, params, tokens, loss)
    assert [c.flops for c in fit.curves] == [1e13]
    assert fit.curves[0].n_opt == pytest.approx(1e5, rel=1e-6)
    assert fit.left_out == ((1e12, "the optimum lies beyond the smallest size tried"),)
    assert fit.a is None  # one budget left: no exponent
