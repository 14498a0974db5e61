"""Continued pretraining from any weights (``[model] init``): a checkpoint written by
transformers (BERT, RoBERTa, ALBERT, GPT-1, GPT-2, T5, BART) goes through ``pretrain``
(starting at the checkpoint's own loss), ``finetune``, ``predict`` and ``convert --to hf``,
and transformers' pipeline gives triform's answers; a triform ELECTRA run gives both its
parts; a checkpoint that does not fit the run is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_finetune import KEYWORD, WORDS, keyword_rows, write_jsonl  # noqa: E402
from triform.cli import main  # noqa: E402
from triform.data.shards import ShardSet  # noqa: E402
from triform.interop import hf  # noqa: E402
from triform.objectives import build_objective_for_run  # noqa: E402
from triform.runs import read_model_config, read_run_init  # noqa: E402
from triform.tokenizers import load_tokenizer, save_tokenizer, train_tokenizer  # noqa: E402
from triform.train.init import plan_init  # noqa: E402
from triform.train.run_config import load_run_config  # noqa: E402
from triform.train.setup import resolve_model_config  # noqa: E402
from triform.train.task import build_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 300
# family -> (tokenizer kind, HF class, HF config, objective, fine-tuning kind, the head)
FAMILIES: dict[str, tuple[str, str, Any, str, str, str]] = {
    "bert": (
        "wordpiece",
        "BertForMaskedLM",
        lambda: transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, pad_token_id=0),
        "mlm", "classification", "MLM head",
    ),
    "roberta": (
        "byte-bpe",
        "RobertaForMaskedLM",
        lambda: transformers.RobertaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
            pad_token_id=1, bos_token_id=0, eos_token_id=2),
        "mlm", "classification", "MLM head",
    ),
    "gpt2": (
        "byte-bpe",
        "GPT2LMHeadModel",
        lambda: transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64,
            bos_token_id=0, eos_token_id=0),
        "causal-lm", "classification", "LM head",
    ),
    "t5": (
        "unigram",
        "T5ForConditionalGeneration",
        lambda: transformers.T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
        "span-corruption", "text-to-text", "LM head",
    ),
    "bart": (
        "byte-bpe",
        "BartForConditionalGeneration",
        lambda: transformers.BartConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None),
        "denoising", "text-to-text", "LM head",
    ),
    "albert": (
        "unigram",
        "AlbertForMaskedLM",
        lambda: transformers.AlbertConfig(
            vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=2, eos_token_id=3),
        "mlm", "classification", "MLM head",
    ),
    "gpt": (
        "bpe",
        "OpenAIGPTLMHeadModel",
        lambda: transformers.OpenAIGPTConfig(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64),
        "causal-lm", "gpt-classification", "LM head",
    ),
}  # fmt: skip
RUN = {
    "data": {"seq_len": 32, "val_fraction": 0.2, "workers": 1},
    "train": {
        "steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2,
        "log_every": 1, "progress": False, "tensorboard": False, "sample_tokens": 0,
        "threads": 1, "precision": "fp32",
    },
}  # fmt: skip


def toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """``tables`` as a TOML file (JSON spells TOML's strings, numbers and lists)."""
    lines = []
    for name, table in tables.items():
        lines += [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def texts(doc_corpus: Path) -> list[str]:
    """The corpus documents and the fine-tuning words, so that every tokenizer knows both."""
    docs = [p.read_text() for p in sorted(doc_corpus.iterdir())]
    return [*docs, *[" ".join([*WORDS, KEYWORD, "the", "a"])] * 20]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> dict[str, Path]:
    """One HF checkpoint folder per family written by transformers (random weights, dropout
    as transformers' default) with a tokenizer triform trained, as ``tokenizer.json``."""
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for family, (kind, cls, config, *_) in FAMILIES.items():
        tokenizer = train_tokenizer(texts, kind=kind, vocab_size=VOCAB, family=family)
        assert tokenizer.get_vocab_size(with_added_tokens=True) == VOCAB
        torch.manual_seed(0)
        folder = root / family
        getattr(transformers, cls)(config()).save_pretrained(folder)
        save_tokenizer(tokenizer, folder / "tokenizer.json")
        folders[family] = folder
    return folders


def pretrain_config(
    tmp_path: Path, init: Path, objective: str, corpus: Path | None = None, **model: Any
) -> Path:
    """A run from ``init`` with ``objective`` on ``corpus`` (else the embedded one), dropout
    off (the checkpoint's is 0.1)."""
    tables = {
        "model": {"init": str(init), "dropout": 0.0, "attention_dropout": 0.0, **model},
        "objective": {"name": objective},
        "data": {**RUN["data"], "corpus": [str(corpus) if corpus else "default"]},
        "train": {**RUN["train"], "out_dir": str(tmp_path / "pretrained")},
    }
    return toml(tmp_path / "pretrain.toml", tables)


def first_batch_loss(config_file: Path, run: Path, reference: Any) -> float:
    """The checkpoint's own loss on the run's first training batch, computed by the
    transformers model ``reference`` on the inputs and labels triform's objective made."""
    config = load_run_config(config_file)
    tokenizer = load_tokenizer(run / "tokenizer.json")
    model_config = resolve_model_config(config, tokenizer)
    shards = tuple(ShardSet(run / "data", split=s, tokenizer=tokenizer) for s in ("train", "val"))
    batch = build_task(config, model_config, tokenizer, shards).train_batch(0)
    names = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    with torch.no_grad():
        logits = reference(**{k: batch[k] for k in names if k in batch}).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).item()


def finetune_and_predict(tmp_path: Path, run: Path, kind: str) -> tuple[Path, Path, list[dict]]:
    """Fine-tune ``run`` on a tiny task, predict its test rows: (the fine-tuned run, the test
    file, the predictions)."""
    rows = keyword_rows(40, 0)
    if kind == "text-to-text":
        rows = [{"source": r["text"], "target": " ".join(r["text"].split()[:2])} for r in rows]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_jsonl(train, rows[:32])
    write_jsonl(test, rows[32:])
    task = {"kind": kind, "train": str(train), "max_length": 48}
    if kind == "text-to-text":
        task["generate_max_tokens"] = 4
    finetuned = tmp_path / "finetuned"
    train_table = {"steps": 4, "batch_size": 8, "progress": False}
    train_table |= {"tensorboard": False, "threads": 1, "out_dir": str(finetuned)}
    tables = {"model": {"source": str(run)}, "task": task, "train": train_table}
    tables["optim"] = {"lr": 1e-3}
    assert main(["finetune", str(toml(tmp_path / "finetune.toml", tables))]) == 0
    predictions = tmp_path / "predictions.jsonl"
    args = ["predict", str(finetuned), "--input", str(test), "--out", str(predictions)]
    assert main([*args, "--no-progress"]) == 0
    return finetuned, test, [json.loads(line) for line in predictions.read_text().splitlines()]


def assert_pipeline_agrees(exported: Path, test: Path, records: list[dict], kind: str) -> None:
    """transformers, from the exported folder, gives triform's predictions."""
    rows = [json.loads(line) for line in test.read_text().splitlines()]
    if kind == "classification":
        classify = transformers.pipeline("text-classification", str(exported), device="cpu")
        outputs = classify([row["text"] for row in rows], top_k=None, truncation=True)
        for ours, theirs in zip(records, outputs, strict=True):
            assert {s["label"]: s["score"] for s in theirs} == pytest.approx(
                ours["probabilities"], abs=1e-5
            )
            assert theirs[0]["label"] == ours["prediction"] or ours["score"] < 0.5 + 1e-5
        return
    prefix = json.loads((exported / "config.json").read_text()).get("prefix", "")
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(exported).eval()
    encoded = tokenizer([prefix + row["source"] for row in rows], padding=True, return_tensors="pt")
    generated = model.generate(**encoded)  # the exported generation_config: greedy
    texts = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    assert texts == [r["prediction"] for r in records]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_journey_from_a_transformers_checkpoint(
    family: str,
    checkpoints: dict[str, Path],
    doc_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    _, cls, _, objective, kind, head = FAMILIES[family]
    init = checkpoints[family]
    config_file = pretrain_config(tmp_path, init, objective, doc_corpus)
    run = tmp_path / "pretrained"
    capsys.readouterr()
    assert main(["pretrain", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"init from {init}: body and {head} from the checkpoint"

    # a fresh run that starts where the checkpoint is: step 1's loss is the checkpoint's own
    record = read_run_init(run)
    assert record["source"] == str(init.resolve()) and record["architecture"] == cls
    assert record["weights_sha256"] and record["new"] == [] and record["left_out"] == []
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in logged if r["split"] == "train" and r["step"] == 1)
    reference = getattr(transformers, cls).from_pretrained(init).eval()
    assert first["loss"] == pytest.approx(first_batch_loss(config_file, run, reference), abs=1e-5)
    assert read_model_config(run).vocab_size == VOCAB

    if family == "bert":  # --resume continues it as any run, keeping where it started
        args = ["pretrain", str(config_file), "--resume", str(run), "--set", "train.steps=3"]
        assert main(args) == 0
        assert "resumed from step 2" in capsys.readouterr().out
        assert read_run_init(run) == record

    finetuned, test, records = finetune_and_predict(tmp_path, run, kind)
    assert len(records) == 8
    exported = tmp_path / "exported"
    if kind == "gpt-classification":  # GPT-1's framing tokens: no transformers class has them
        convert = ["convert", str(finetuned), str(exported), "--to", "hf"]
        refused(capsys, convert, "frames its inputs")
        assert_language_model_agrees(run, exported, cls)  # ... the continued LM is exported
        return
    assert main(["convert", str(finetuned), str(exported), "--to", "hf"]) == 0
    assert_pipeline_agrees(exported, test, records, kind)


def assert_language_model_agrees(run: Path, exported: Path, cls: str) -> None:
    """``convert --to hf`` of a pretraining run: transformers' model gives its logits."""
    from triform.loading import load_model

    assert main(["convert", str(run), str(exported), "--to", "hf"]) == 0
    model, tokenizer = load_model(run)
    ids = torch.tensor([tokenizer.encode("the apple and the river").ids])
    theirs = getattr(transformers, cls).from_pretrained(exported).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5
        )


def refused(capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    """The command stops with exit status 2 and one line holding ``message``."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_what_does_not_fit_the_checkpoint_is_refused_in_one_line(
    checkpoints: dict[str, Path],
    texts: list[str],
    doc_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    bert = checkpoints["bert"]
    config = str(pretrain_config(tmp_path, bert, "mlm", doc_corpus))
    other = train_tokenizer(texts[:3], kind="wordpiece", vocab_size=VOCAB + 20, family="bert")
    other_path = save_tokenizer(other, tmp_path / "other.json")

    refused(capsys, ["pretrain", config, "--set", "model.num_layers=3"], "model.num_layers")
    refused(capsys, ["pretrain", config, "--set", "model.position='rotary'"], "position")
    missing = ["--set", f"model.init={str(tmp_path / 'nowhere')!r}"]
    refused(capsys, ["pretrain", config, *missing], "model.init: no such folder")
    gpt2 = ["--set", f"model.init={str(checkpoints['gpt2'])!r}"]
    refused(
        capsys,
        ["pretrain", config, *gpt2],
        "objective mlm trains an encoder model, but model.init",
    )
    refused(
        capsys,
        ["pretrain", config, "--set", f"tokenizer.path={str(other_path)!r}"],
        "another vocabulary",
    )
    refused(capsys, ["pretrain", config, "--resume", str(bert)], "set model.init")
    distill = ["--set", "objective.name=distill", "--set", f"objective.teacher={str(bert)!r}"]
    refused(capsys, ["pretrain", config, *distill], "objective distill sets up its own model")
    assert not (tmp_path / "pretrained").exists()  # nothing written

    # the same tokenizer accepted with resize_vocab: the model takes its size
    resized = ["--set", f"tokenizer.path={str(other_path)!r}", "--set", "model.resize_vocab=true"]
    capsys.readouterr()
    assert main(["pretrain", config, *resized, "--set", "train.steps=1"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert f"vocabulary resized from {VOCAB} to {VOCAB + 20} tokens" in line
    assert read_model_config(tmp_path / "pretrained").vocab_size == VOCAB + 20


def planned(config_file: Path, tokenizer_path: str | None = None) -> tuple[Any, Any, Any]:
    """The plan of a run from its config, and the module built and initialised by it."""
    config = load_run_config(config_file)
    tokenizer = load_tokenizer(config.tokenizer.path)
    model_config = resolve_model_config(config, tokenizer)
    objective, model_config = build_objective_for_run(config, model_config, tokenizer)
    with torch.device("meta"):
        shapes = objective.build_model(model_config)
    init = config.init
    plan = plan_init(
        init.init, shapes, tokenizer, tokenizer_path, init.resize_vocab, objective.name
    )
    module = objective.build_model(model_config)
    plan.apply(module)
    return plan, module, tokenizer


def test_resized_vocabulary_keeps_the_rows_of_shared_tokens(
    checkpoints: dict[str, Path], texts: list[str], tmp_path: Path
) -> None:
    """Rows of tokens both vocabularies hold come from the checkpoint (by the token's text),
    the others are new: the table and the untied bias alike."""
    bert = checkpoints["bert"]
    other = train_tokenizer(texts[2:], kind="wordpiece", vocab_size=VOCAB + 20, family="bert")
    other_path = str(save_tokenizer(other, tmp_path / "other.json"))
    config_file = pretrain_config(tmp_path, bert, "mlm", resize_vocab=True)
    config_file.write_text(config_file.read_text() + f"[tokenizer]\npath = {other_path!r}\n")
    plan, model, tokenizer = planned(config_file, other_path)
    source = hf.load(bert)
    theirs = load_tokenizer(bert / "tokenizer.json").get_vocab(with_added_tokens=True)
    mine = tokenizer.get_vocab(with_added_tokens=True)
    shared = {t: (i, theirs[t]) for t, i in mine.items() if t in theirs}
    assert 0 < len(shared) < len(mine) and plan.record["vocabulary"]["run"] == VOCAB + 20
    table, bias = model.embeddings.token.weight, model.lm_head.decoder.bias
    for i, j in shared.values():
        assert torch.equal(table[i], source.embeddings.token.weight[j])
        assert bias[i] == source.lm_head.decoder.bias[j]
    assert model.lm_head.decoder.weight is table  # still tied
    fresh = [i for t, i in mine.items() if t not in theirs]
    assert (bias[fresh] == 0).all()  # new rows as the model initialises them
    assert torch.equal(
        model.encoder.layers[1].ffn.up.weight, source.encoder.layers[1].ffn.up.weight
    )


def test_electra_discriminator_from_the_checkpoint_and_a_new_generator(
    texts: list[str], tmp_path: Path
) -> None:
    """ELECTRA (RTD): the discriminator (body and replaced-token head) is the checkpoint's,
    the generator is new and shares its embeddings; a BERT checkpoint for SpanBERT keeps its
    MLM head and gets a new boundary head; a bare BERT body gets a new MLM head."""
    tokenizer = train_tokenizer(texts, kind="wordpiece", vocab_size=VOCAB, family="electra")
    folder = tmp_path / "electra"
    config = transformers.ElectraConfig(
        vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.ElectraForPreTraining(config).save_pretrained(folder)
    save_tokenizer(tokenizer, folder / "tokenizer.json")
    plan, pair, _ = planned(pretrain_config(tmp_path, folder, "rtd"))
    assert plan.line == (
        f"init from {folder}: body and replaced-token head from the checkpoint; the ELECTRA "
        "generator (sharing the checkpoint's embeddings) is new"
    )
    source = hf.load(folder).state_dict()
    for key, value in pair.discriminator.state_dict().items():
        torch.testing.assert_close(value, source[key], rtol=0, atol=0)
    assert pair.generator.embeddings.token is pair.discriminator.embeddings.token

    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertForPreTraining(config).save_pretrained(tmp_path / "bert")
    save_tokenizer(tokenizer, tmp_path / "bert" / "tokenizer.json")
    plan, _, _ = planned(pretrain_config(tmp_path, tmp_path / "bert", "span-mlm"))
    assert plan.line.endswith(
        "body and MLM head from the checkpoint; the span boundary head is new; left out: the "
        "checkpoint's pooler and NSP head (objective span-mlm does not train them)"
    )

    transformers.BertModel(config).save_pretrained(tmp_path / "body")  # no MLM head
    save_tokenizer(tokenizer, tmp_path / "body" / "tokenizer.json")
    plan, model, _ = planned(pretrain_config(tmp_path, tmp_path / "body", "mlm"))
    assert plan.line.endswith(
        "body from the checkpoint; the MLM head is new; left out: the checkpoint's pooler "
        "(objective mlm does not train it)"
    )
    assert plan.record["new"] == ["MLM head"] and plan.record["left_out"] == ["pooler"]
    assert model.lm_head.decoder.weight is model.embeddings.token.weight


def test_an_electra_run_gives_both_its_generator_and_its_discriminator(
    texts: list[str], tmp_path: Path
) -> None:
    """A triform ELECTRA run as ``init`` of another ELECTRA run: the generator comes from it
    too (a HuggingFace discriminator folder has none), still sharing the embeddings."""
    from triform.loading import read_model

    tokenizer = train_tokenizer(texts, kind="wordpiece", vocab_size=VOCAB, family="electra")
    folder = tmp_path / "electra"
    config = transformers.ElectraConfig(
        vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.ElectraForPreTraining(config).save_pretrained(folder)
    save_tokenizer(tokenizer, folder / "tokenizer.json")
    first = tmp_path / "first"
    first.mkdir()
    assert main(["pretrain", str(pretrain_config(first, folder, "rtd"))]) == 0
    run = first / "pretrained"
    plan, pair, _ = planned(pretrain_config(tmp_path, run, "rtd"))
    assert plan.line == (
        f"init from {run}: body, replaced-token head and ELECTRA generator from the checkpoint"
    )
    assert plan.record["from_checkpoint"][-1] == "ELECTRA generator" and not plan.record["new"]
    for part in ("generator", "discriminator"):
        trained = read_model(run, part=part).state_dict()
        mine = getattr(pair, part).state_dict()
        assert mine.keys() == trained.keys()
        for key, value in mine.items():
            torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)
    assert pair.generator.embeddings.token is pair.discriminator.embeddings.token
