"""Knowledge distillation: the student from every other teacher layer, the loss parts, the
teacher kept out of the student, tokenizer and head checks, and tiny end-to-end runs of an
encoder and a decoder student from the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models

import triform
from triform.cli import main
from triform.errors import ConfigError, TriformError
from triform.inference import load_model
from triform.models.outputs import EncoderOutput
from triform.objectives import Distillation, SampleDraws, build_objective, distillation_loss
from triform.objectives.distill import evenly_spaced_layers, init_from_teacher
from triform.train.metrics import read_metrics
from triform.train.run_config import load_run_config

V = 300
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"
CONTEXT = {"vocab_size": V, "pad_id": 0, "mask_id": 4, "special_ids": [0, 1, 2, 3, 4]}

pytestmark = pytest.mark.usefixtures("one_thread")


def word_level() -> Tokenizer:
    vocab = {f"t{i}": i for i in range(V)}
    return Tokenizer(models.WordLevel(vocab, unk_token="t1"))


def tiny(preset: str, layers: int, **overrides) -> triform.models.TransformerModel:
    torch.manual_seed(layers)
    sizes = {"vocab_size": V, "hidden_size": 32, "num_heads": 2, "ffn_size": 64}
    return triform.build_model(triform.presets.get(preset, num_layers=layers, **sizes, **overrides))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, save_model_folder) -> str:
    """A random 4-layer BERT with an MLM head, saved as a model folder."""
    return save_model_folder(tmp_path_factory.mktemp("bert"), tiny("bert-tiny", 4), word_level())


def distill(teacher: str, **options) -> Distillation:
    return build_objective({"name": "distill", "teacher": teacher, **options}, **CONTEXT)


def test_every_other_layer():
    assert evenly_spaced_layers(6, 3) == [0, 2, 4]
    assert evenly_spaced_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert evenly_spaced_layers(4, 2) == [0, 2]
    assert evenly_spaced_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ConfigError):
        evenly_spaced_layers(2, 3)


def test_student_copies_the_teachers_layers_0_2(teacher):
    objective = distill(teacher)
    config = Distillation.fit_model_config(objective.teacher.config.replace(num_layers=2))
    student = objective.build_model(config)
    mine, theirs = student.state_dict(), objective.teacher.state_dict()
    for i, source in enumerate([0, 2]):
        for key, value in mine.items():
            if key.startswith(f"encoder.layers.{i}."):
                other = key.replace(f"layers.{i}.", f"layers.{source}.", 1)
                assert torch.equal(value, theirs[other]), key
    for key in ("embeddings.token.weight", "lm_head.transform.0.weight"):
        assert torch.equal(mine[key], theirs[key])
    # the run folder is the student alone: no teacher weights in its state
    assert not any("teacher" in key for key in mine)
    assert len(mine) < len(theirs)
    explicit = distill(teacher, teacher_layers=[1, 3]).build_model(config)
    assert torch.equal(
        explicit.state_dict()["encoder.layers.0.ffn.up.weight"],
        theirs["encoder.layers.1.ffn.up.weight"],
    )


def test_teacher_layers_need_the_teachers_shape(teacher):
    objective = distill(teacher)
    wide = objective.teacher.config.replace(num_layers=2, hidden_size=64, ffn_size=128)
    with pytest.raises(ConfigError, match="hidden_size is 64, the teacher's 32"):
        objective.build_model(wide)
    with pytest.raises(ConfigError, match="objective.gamma: .* teacher's hidden size"):
        distill(teacher, init="random").build_model(wide)
    random = distill(teacher, init="random", gamma=0.0).build_model(wide)  # any shape afresh
    assert random.config.hidden_size == 64
    decoder = triform.presets.get("gpt2-tiny", vocab_size=V)
    with pytest.raises(ConfigError, match="the teacher's form"):
        distill(teacher, init="random", gamma=0.0).build_model(decoder)
    with pytest.raises(ConfigError, match="teacher_layers"):
        init_from_teacher(tiny("bert-tiny", 2), objective.teacher, [0, 7])


def outputs(logits, hidden):
    return EncoderOutput(last_hidden_state=hidden, logits=logits)


def test_loss_parts():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 6, V, generator=g), torch.randn(2, 6, V, generator=g)
    hidden_s, hidden_t = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    labels = torch.full((2, 6), -100)
    labels[0, 1], labels[1, 4] = 7, 9
    attention = torch.ones(2, 6, dtype=torch.long)
    attention[1, 5] = 0
    loss, parts = distillation_loss(
        outputs(student, hidden_s), outputs(teacher, hidden_t), labels, attention
    )
    picked = labels != -100
    expected_kl = (
        F.kl_div(
            F.log_softmax(student[picked] / 2, -1),
            F.softmax(teacher[picked] / 2, -1),
            reduction="batchmean",
        )
        * 4
    )
    assert torch.allclose(parts["kl_loss"], expected_kl, atol=1e-5)
    assert torch.allclose(parts["ce_loss"], F.cross_entropy(student[picked], labels[picked]))
    real = attention.bool()
    cosine = 1 - F.cosine_similarity(hidden_s[real], hidden_t[real], dim=-1).mean()
    assert torch.allclose(parts["cosine_loss"], cosine, atol=1e-6)
    assert torch.allclose(
        loss, 5 * parts["kl_loss"] + 2 * parts["ce_loss"] + parts["cosine_loss"], atol=1e-5
    )
    everywhere = distillation_loss(
        outputs(student, hidden_s),
        outputs(teacher, hidden_t),
        labels,
        attention,
        2.0,
        1,
        0,
        0,
        True,
    )[1]["kl_loss"]
    soft = F.log_softmax(student[real] / 2, -1), F.softmax(teacher[real] / 2, -1)
    assert torch.allclose(everywhere, F.kl_div(*soft, reduction="batchmean") * 4, atol=1e-5)
    same, same_parts = distillation_loss(
        outputs(student, hidden_s), outputs(student, hidden_s), labels, attention, 2.0, 1, 0, 1
    )
    assert same_parts["kl_loss"].abs() < 1e-6 and same_parts["cosine_loss"].abs() < 1e-6
    assert same.abs() < 1e-5


def test_kl_is_zero_when_the_student_is_the_teacher(teacher):
    objective = distill(teacher, beta=0.0)
    student = objective.build_model(
        Distillation.fit_model_config(objective.teacher.config)
    ).eval()  # all four layers: the teacher itself
    ids = torch.randint(5, V, (4, 16), generator=torch.Generator().manual_seed(0))
    batch = objective({"input_ids": ids}, SampleDraws(1, 4))
    loss, parts = objective.step(student, batch, SampleDraws(1, 4))
    assert parts["kl_loss"].abs() < 1e-5 and parts["cosine_loss"].abs() < 1e-5
    assert loss.abs() < 1e-4


def test_gradients_reach_the_student_only(teacher):
    objective = distill(teacher)
    student = objective.build_model(
        Distillation.fit_model_config(objective.teacher.config.replace(num_layers=2))
    )
    ids = torch.randint(5, V, (4, 16), generator=torch.Generator().manual_seed(0))
    batch = objective({"input_ids": ids}, SampleDraws(1, 4))
    loss, parts = objective.step(student, batch, SampleDraws(1, 4))
    loss.backward()
    assert {"kl_loss", "ce_loss", "cosine_loss", "accuracy"} <= set(parts)
    assert all(p.grad is not None for p in student.encoder.parameters())
    assert all(p.grad is None and not p.requires_grad for p in objective.teacher.parameters())
    assert not objective.teacher.training


def test_a_bare_teacher_distils_hidden_states_only(tmp_path, save_model_folder):
    bare = save_model_folder(
        tmp_path / "bare", tiny("bert-tiny", 2, encoder_head="none"), word_level()
    )
    with pytest.raises(ConfigError, match="no MLM head.*alpha = 0"):
        distill(bare)
    objective = distill(bare, alpha=0.0, beta=0.0)
    student = objective.build_model(
        Distillation.fit_model_config(objective.teacher.config.replace(num_layers=1))
    )
    ids = torch.randint(5, V, (2, 8), generator=torch.Generator().manual_seed(0))
    draws = SampleDraws(0, 2)
    loss, parts = objective.step(student, objective({"input_ids": ids}, draws), draws)
    assert "kl_loss" not in parts and torch.allclose(loss, parts["cosine_loss"])


def test_bad_input_is_a_one_line_error(teacher, tmp_path):
    for options, key in (
        ({"temperature": 0.0}, "objective.temperature"),
        ({"alpha": -1.0}, "objective.alpha"),
        ({"alpha": 0.0, "beta": 0.0, "gamma": 0.0}, "nothing to learn"),
        ({"init": "copy"}, "objective.init"),
    ):
        with pytest.raises(ConfigError, match=key):
            distill(teacher, **options)
    with pytest.raises(ConfigError, match="objective.teacher is required"):
        build_objective({"name": "distill"}, **CONTEXT)
    other = word_level()
    other.add_special_tokens(["[EXTRA]"])
    with pytest.raises(ConfigError, match="the student must use the teacher's tokenizer"):
        build_objective({"name": "distill", "teacher": teacher}, **CONTEXT, tokenizer=other)
    with pytest.raises(ConfigError, match="objective.teacher: the teacher has 300 tokens"):
        build_objective({"name": "distill", "teacher": teacher}, **{**CONTEXT, "vocab_size": 301})
    with pytest.raises(ConfigError, match="no model folder"):
        load_run_config(None, [], {"objective": {"name": "distill", "teacher": "nowhere"}})
    with pytest.raises(TriformError, match="is neither a triform run or model folder"):
        load_run_config(None, [], {"objective": {"name": "distill", "teacher": str(tmp_path)}})


def test_run_defaults_take_the_teachers_tokenizer_and_half_its_layers(teacher):
    run = load_run_config(None, [], {"objective": {"name": "distill", "teacher": teacher}})
    assert run.tokenizer.path == str(Path(teacher) / "tokenizer.json")
    assert run.model.num_layers == 2 and run.model.hidden_size == 32
    deeper = load_run_config(
        None, ["model.num_layers=3"], {"objective": {"name": "distill", "teacher": teacher}}
    )
    assert deeper.model.num_layers == 3
    preset = load_run_config(
        None,
        ["model.preset=gpt2-tiny"],
        {"objective": {"name": "distill", "teacher": teacher}, "model": {}},
    )
    assert preset.model.form == "decoder"  # a preset replaces the teacher's shape


# ----------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    if SHAKESPEARE.is_dir():
        text = (SHAKESPEARE / "macbeth.txt").read_text()[:60_000]
    else:
        from pydoc_data.topics import topics

        text = "\n\n".join(list(topics.values()))[:60_000]
    for i in range(4):
        (folder / f"part{i}.txt").write_text(text[i * 15_000 : (i + 1) * 15_000])
    return folder


def _teacher_folder(tmp_path, corpus, save_model_folder, preset: str, family: str) -> str:
    from triform.tokenizers import train_tokenizer

    texts = [p.read_text() for p in sorted(corpus.iterdir())]
    tokenizer = train_tokenizer(texts, kind="byte-bpe", vocab_size=400, family=family)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    config = triform.presets.get(
        preset,
        vocab_size=size,
        hidden_size=32,
        num_layers=4,
        num_heads=2,
        ffn_size=64,
        max_positions=80,
    )
    return save_model_folder(tmp_path / "teacher", triform.build_model(config), tokenizer)


@pytest.mark.parametrize(("preset", "family"), [("roberta-base", "roberta"), ("gpt2", "gpt2")])
def test_cli_distils_an_encoder_and_a_decoder(preset, family, corpus, tmp_path, save_model_folder):
    teacher = _teacher_folder(tmp_path, corpus, save_model_folder, preset, family)
    out = tmp_path / "student"
    settings = [
        f"objective.teacher={json.dumps(teacher)}",
        f"data.corpus={json.dumps(str(corpus))}",
        "data.seq_len=32",
        "data.val_fraction=0.25",
        "data.workers=1",
        "train.steps=12",
        "train.batch_size=8",
        "train.log_every=1",
        "train.eval_every=12",
        "train.eval_batches=1",
        "train.checkpoint_every=12",
        "train.progress=false",
        "train.tensorboard=false",
        "train.sample_tokens=4",
        f"train.out_dir={json.dumps(str(out))}",
        "optim.lr=3e-3",
        "schedule.warmup_steps=1",
    ]
    config = tmp_path / "distill.toml"
    config.write_text('[objective]\nname = "distill"\n')  # the rest: the teacher's, and --set
    args = ["pretrain", str(config)]
    for item in settings:
        args += ["--set", item]
    assert main(args) == 0
    losses = [r["loss"] for r in read_metrics(out, split="train")]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    val = read_metrics(out, split="val")[-1]
    assert {"kl_loss", "ce_loss", "cosine_loss", "perplexity"} <= set(val)
    student, tokenizer = load_model(out)  # a plain model folder: any command reads it
    assert (
        student.config.num_layers == 2 and student.config.form == load_model(teacher)[0].config.form
    )
    assert tokenizer.get_vocab() == load_model(teacher)[1].get_vocab()
