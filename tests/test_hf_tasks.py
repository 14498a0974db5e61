"""Fine-tuned models <-> HuggingFace task-head classes (``triform.interop.hf.tasks``): a tiny
fine-tune of each kind goes through ``triform convert RUN OUT --to hf``, and transformers
(pipeline or model, with ``AutoTokenizer`` on the folder) gives triform's predictions and
logits; the folder loads back into triform with the same logits. Also ELECTRA's pair, HF-made
task checkpoints, and the refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from triform.cli import main  # noqa: E402
from triform.errors import TriformError  # noqa: E402
from triform.finetune import finetune, load_finetune_config, load_finetuned  # noqa: E402
from triform.finetune.data import Row  # noqa: E402
from triform.inference.generate import generate  # noqa: E402
from triform.interop import hf  # noqa: E402
from triform.interop.hf import tasks as hf_tasks  # noqa: E402
from triform.tokenizers import save_tokenizer, train_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "table", "window", "garden",
         "silver", "paper", "candle", "forest", "bridge", "ocean", "winter"]  # fmt: skip
KEYWORD = "zebra"
TINY = {"hidden_size": 32, "num_heads": 2, "ffn_size": 64, "num_layers": 2, "max_positions": 64,
        "dropout": 0.0, "attention_dropout": 0.0}  # fmt: skip
ATOL = 1e-5


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One tokenizer per family framing, trained on the word list (some words split)."""
    folder = tmp_path_factory.mktemp("tok")
    texts = [" ".join([*WORDS, KEYWORD, "the", "a", "is", "where", "copy:"])] * 30
    kinds = {"bert": ("wordpiece", 120), "roberta": ("byte-bpe", 300),
             "gpt2": ("byte-bpe", 300), "t5": ("unigram", 180), "bart": ("bpe", 120)}  # fmt: skip
    paths = {}
    for family, (kind, size) in kinds.items():
        tok = train_tokenizer(texts, kind=kind, vocab_size=size, family=family)
        paths[family] = str(save_tokenizer(tok, folder / f"{family}.json"))
    return paths


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny_finetune(
    tmp_path: Path,
    preset: str,
    tokenizer: str,
    task: dict[str, Any],
    steps: int = 6,
    **model: Any,
) -> Path:
    """A few steps of fine-tuning ``preset`` at TINY size (and ``model`` settings); returns
    the run folder."""
    overrides = dict(TINY, embedding_size=16) if preset.startswith("albert") else dict(TINY)
    overrides.update(model)
    tree = {
        "model": {"source": f"preset:{preset}", "tokenizer": tokenizer, "overrides": overrides},
        "task": {"max_length": 24, **task},
        "train": {"out_dir": str(tmp_path / "run"), "steps": steps, "batch_size": 8, "lr": 3e-3,
                  "progress": False, "tensorboard": False, "threads": 1, "log_every": 100},
    }  # fmt: skip
    finetune(load_finetune_config(tree=tree))
    return tmp_path / "run"


def convert(run: Path, out: Path) -> Path:
    assert main(["convert", str(run), str(out), "--to", "hf"]) == 0
    return out


def keyword_rows(n: int, seed: int, regression: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=5)
        label = rng.choice(["pos", "neg"])
        if label == "pos":
            words[rng.randrange(5)] = KEYWORD
        value: Any = float(label == "pos") if regression else label
        rows.append({"text": " ".join(words), "label": value})
    return rows


TEXTS = [f"apple {KEYWORD} river", "stone cloud green music", f"{KEYWORD} {KEYWORD}", "paper"]


def triform_batch(ft: Any, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The padded batch triform builds for ``rows`` (plain dicts, as predict takes them)."""
    features = ft.task.encode([Row(r, "test") for r in rows], training=False)
    return ft.task.collate(features)


def seq_logits(ft: Any, rows: list[dict[str, Any]]) -> torch.Tensor:
    with torch.no_grad():
        return ft.task.logits(ft.model, triform_batch(ft, rows))


# ---------------------------------------------------------------------------------------
# Sequence classification and regression
# ---------------------------------------------------------------------------------------
NO_POOLER = {"pooler": False, "pair_head": "none"}  # the head's dense + tanh becomes the pooler
CLASSIFIERS = [
    ("bert-tiny", "bert", "BertForSequenceClassification", {}),
    ("bert-tiny", "bert", "BertForSequenceClassification", NO_POOLER),
    ("roberta-tiny", "roberta", "RobertaForSequenceClassification", {}),
    ("albert-tiny", "bert", "AlbertForSequenceClassification", {}),
    ("electra-tiny", "bert", "ElectraForSequenceClassification", {}),
    ("gpt2-tiny", "gpt2", "GPT2ForSequenceClassification", {}),
    ("bart-tiny", "bart", "BartForSequenceClassification", {}),
]


@pytest.mark.parametrize("preset,tok,name,body", CLASSIFIERS)
def test_classification_exports_to_pipeline(
    tmp_path: Path, toks: dict[str, str], preset: str, tok: str, name: str, body: dict
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(48, 0))
    task = {"kind": "classification", "train": data}
    run = tiny_finetune(tmp_path, preset, toks[tok], task, **body)
    out = convert(run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [name]
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"]["pos"] == 1

    ft = load_finetuned(run)
    if body is NO_POOLER:  # triform's head carries the dense + tanh that HF's pooler has
        assert ft.model.body.pooler is None and ft.model.head.dense is not None
    expected = ft.predict(TEXTS)
    rows = [{"text": t} for t in TEXTS]
    ours = seq_logits(ft, rows)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    batch = triform_batch(ft, rows)
    assert torch.equal(encoded["input_ids"], batch["input_ids"])  # the same tokens
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == name
    with torch.no_grad():
        theirs = model(**encoded).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    classify = transformers.pipeline("text-classification", model=str(out), device="cpu")
    assert [r["label"] for r in classify(TEXTS)] == expected

    back = hf_tasks.load_finetuned(out)  # and back into triform
    assert back.labels == ["neg", "pos"] and back.task.kind == "classification"
    torch.testing.assert_close(seq_logits(back, rows), ours, atol=ATOL, rtol=0)
    assert back.predict(TEXTS) == expected


@pytest.mark.parametrize("preset,tok", [("bert-tiny", "bert"), ("gpt2-tiny", "gpt2")])
def test_pair_classification_keeps_segments(
    tmp_path: Path, toks: dict[str, str], preset: str, tok: str
) -> None:
    """BERT: token types reach the model; GPT-2: the separator triform puts between the
    texts is in the exported tokenizer's post-processor."""
    rng = random.Random(1)
    rows = []
    for _ in range(48):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        rows.append(
            {"text": f"the {a}", "text_pair": f"a {b}", "label": "same" if a == b else "diff"}
        )
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    task = {"kind": "pair-classification", "train": data}
    run = tiny_finetune(tmp_path, preset, toks[tok], task)
    out = convert(run, tmp_path / "hf")
    ft, back = load_finetuned(run), hf_tasks.load_finetuned(out)
    pairs = [{"text": r["text"], "text_pair": r["text_pair"]} for r in rows[:4]]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    encoded = tokenizer([p["text"] for p in pairs], [p["text_pair"] for p in pairs], padding=True)
    assert encoded["input_ids"] == triform_batch(ft, pairs)["input_ids"].tolist()
    expected = ft.predict([(p["text"], p["text_pair"]) for p in pairs])
    classify = transformers.pipeline("text-classification", model=str(out), device="cpu")
    assert [r["label"] for r in classify(pairs)] == expected
    assert back.task.kind == "pair-classification"
    torch.testing.assert_close(seq_logits(back, pairs), seq_logits(ft, pairs), atol=ATOL, rtol=0)


def test_regression_sets_problem_type(tmp_path: Path, toks: dict[str, str]) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(48, 0, regression=True))
    run = tiny_finetune(tmp_path, "roberta-tiny", toks["roberta"], {"kind": "regression",
                                                                    "train": data})  # fmt: skip
    out = convert(run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "LABEL_0"}
    ft = load_finetuned(run)
    rows = [{"text": t} for t in TEXTS]
    score = transformers.pipeline("text-classification", model=str(out), device="cpu")
    values = [r["score"] for r in score(TEXTS)]  # the raw value: no softmax for regression
    assert values == pytest.approx(ft.predict(TEXTS), abs=ATOL)
    back = hf_tasks.load_finetuned(out)
    assert back.task.kind == "regression" and back.labels is None
    torch.testing.assert_close(seq_logits(back, rows), seq_logits(ft, rows), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------
# Tagging
# ---------------------------------------------------------------------------------------
TAGGERS = [("bert-tiny", "BertForTokenClassification"),
           ("electra-tiny", "ElectraForTokenClassification"),
           ("albert-tiny", "AlbertForTokenClassification")]  # fmt: skip


@pytest.mark.parametrize("preset,name", TAGGERS)
def test_tagging_exports_to_pipeline(
    tmp_path: Path, toks: dict[str, str], preset: str, name: str
) -> None:
    rng = random.Random(5)
    rows = []
    for _ in range(32):
        words = rng.choices(WORDS, k=4) + [KEYWORD]
        rng.shuffle(words)
        rows.append({"tokens": words, "tags": ["B-ANI" if w == KEYWORD else "O" for w in words]})
    data = write_jsonl(tmp_path / "ner.jsonl", rows)
    run = tiny_finetune(tmp_path, preset, toks["bert"], {"kind": "tagging", "train": data})
    out = convert(run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [name] and config["id2label"] == {"0": "O", "1": "B-ANI"}

    ft = load_finetuned(run)
    sentences = ["apple zebra riverstone", "zebra candle forest window"]
    expected = ft.predict(sentences)
    batch = triform_batch(ft, [{"tokens": s.split()} for s in sentences])
    with torch.no_grad():
        ours = ft.task.logits(ft.model, batch)  # (B, L, tags)
    tag = transformers.pipeline("token-classification", model=str(out), device="cpu",
                                ignore_labels=[])  # fmt: skip
    model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for i, (sentence, tags) in enumerate(zip(sentences, expected, strict=True)):
        encoded = tokenizer(sentence, return_tensors="pt")
        length = encoded["input_ids"].shape[1]
        assert encoded["input_ids"][0].tolist() == batch["input_ids"][i, :length].tolist()
        with torch.no_grad():
            theirs = model(**encoded).logits[0]
        torch.testing.assert_close(theirs, ours[i, :length], atol=ATOL, rtol=0)
        by_token = {e["index"]: e["entity"] for e in tag(sentence)}
        firsts = [encoded.token_to_word(0, j) for j in range(length)]
        at_first = [by_token[j] for j in range(length) if j and firsts[j] != firsts[j - 1]
                    and firsts[j] is not None]  # fmt: skip
        assert at_first == tags  # each word's tag is its first sub-token's, as triform reads it

    back = hf_tasks.load_finetuned(out)
    assert back.labels == ["O", "B-ANI"] and back.predict(sentences) == expected
    with torch.no_grad():
        torch.testing.assert_close(back.task.logits(back.model, batch), ours, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------
# Extractive QA
# ---------------------------------------------------------------------------------------
def hf_answer(model: Any, tokenizer: Any, question: str, context: str, max_tokens: int) -> str:
    """The best span by transformers' logits: start + end score over context tokens, at most
    ``max_tokens`` long (the rule the question-answering pipeline of transformers 4 used)."""
    encoded = tokenizer(question, context, return_tensors="pt", return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        out = model(**encoded)
    inside = [j for j, s in enumerate(encoded.sequence_ids(0)) if s == 1]
    start, end = out.start_logits[0], out.end_logits[0]
    s, e = max(((s, e) for s in inside for e in inside if s <= e < s + max_tokens),
               key=lambda p: float(start[p[0]] + end[p[1]]))  # fmt: skip
    return context[offsets[s][0] : offsets[e][1]]


@pytest.mark.parametrize("preset,tok", [("bert-tiny", "bert"), ("roberta-tiny", "roberta")])
def test_qa_exports_to_model(tmp_path: Path, toks: dict[str, str], preset: str, tok: str) -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(32):
        words = rng.choices(WORDS, k=8)
        words[rng.randrange(8)] = KEYWORD
        context = " ".join(words)
        rows.append({"question": f"where is {KEYWORD}", "context": context,
                     "answer_text": KEYWORD, "answer_start": context.index(KEYWORD)})  # fmt: skip
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    task = {"kind": "qa", "train": data, "max_length": 48, "stride": 8, "max_answer_length": 4}
    run = tiny_finetune(tmp_path, preset, toks[tok], task)
    out = convert(run, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"][0].endswith(
        "ForQuestionAnswering"
    )
    ft = load_finetuned(run)
    questions = [(r["question"], r["context"]) for r in rows[:4]]
    expected = ft.predict(questions)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert [hf_answer(model, tokenizer, q, c, 4) for q, c in questions] == expected

    qa_rows = [{"question": q, "context": c} for q, c in questions]
    batch = triform_batch(ft, qa_rows)
    back = hf_tasks.load_finetuned(out)
    assert back.predict(questions) == expected
    with torch.no_grad():
        for a, b in zip(ft.task.logits(ft.model, batch), back.task.logits(back.model, batch),
                        strict=True):  # fmt: skip
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    encoded = tokenizer(*questions[0], return_tensors="pt")
    length = encoded["input_ids"].shape[1]
    assert encoded["input_ids"][0].tolist() == batch["input_ids"][0, :length].tolist()  # one window
    with torch.no_grad():
        theirs = model(**encoded)
        start, end = ft.task.logits(ft.model, batch)
    torch.testing.assert_close(theirs.start_logits[0], start[0, :length], atol=ATOL, rtol=0)
    torch.testing.assert_close(theirs.end_logits[0], end[0, :length], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------
# Text-to-text
# ---------------------------------------------------------------------------------------
GENERATORS = [("t5-tiny", "t5", "T5ForConditionalGeneration"),
              ("bart-tiny", "bart", "BartForConditionalGeneration")]  # fmt: skip


@pytest.mark.parametrize("preset,tok,name", GENERATORS)
def test_text_to_text_exports_to_generate(
    tmp_path: Path, toks: dict[str, str], preset: str, tok: str, name: str
) -> None:
    rng = random.Random(9)
    rows = []
    for _ in range(32):
        words = rng.choices(WORDS, k=3)
        rows.append({"source": " ".join(words), "target": " ".join(words)})
    data = write_jsonl(tmp_path / "copy.jsonl", rows)
    task = {"kind": "text-to-text", "train": data, "task_prefix": "copy: ",
            "generate_max_tokens": 6}  # fmt: skip
    run = tiny_finetune(tmp_path, preset, toks[tok], task, steps=48)
    out = convert(run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [name] and config["prefix"] == "copy: "

    ft = load_finetuned(run)
    sources = [r["source"] for r in rows[:3]]
    expected = ft.predict(sources)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    encoded = tokenizer([config["prefix"] + s for s in sources], padding=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**encoded)  # generation_config.json: greedy, 6 new tokens
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert [t.strip() for t in texts] == expected
    source = triform_batch(ft, [{"source": s} for s in sources])
    assert torch.equal(source["input_ids"], encoded["input_ids"])
    ours = generate(ft.model.body, source["input_ids"], source["attention_mask"],
                    max_new_tokens=6, eos_token_id=ft.task.specials.eos_id,
                    pad_token_id=ft.task.pad_id)  # fmt: skip
    assert torch.equal(generated[:, : ours.shape[1]], ours)  # the same tokens, step by step

    batch = triform_batch(ft, [{"source": s, "target": s} for s in sources])
    with torch.no_grad():
        ours = ft.model.body(batch["input_ids"], batch["attention_mask"],
                             decoder_input_ids=batch["decoder_input_ids"]).logits  # fmt: skip
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"]).logits  # fmt: skip
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    assert any(expected)  # something was generated, not only end-of-sequence
    back = hf_tasks.load_finetuned(out)
    assert back.task.kind == "text-to-text" and back.predict(sources) == expected


# ---------------------------------------------------------------------------------------
# ELECTRA's pair, checkpoints transformers made, refusals
# ---------------------------------------------------------------------------------------
def test_electra_pair_exports_discriminator_and_generator(tmp_path: Path) -> None:
    from triform import presets
    from triform.models import build_model
    from triform.objectives.replaced_token import generator_config, share_embeddings

    config = presets.get("electra-tiny", **TINY, vocab_size=90, embedding_size=16)
    discriminator = build_model(config.replace(encoder_head="rtd", pair_head="none")).eval()
    generator = build_model(generator_config(discriminator.config, width=0.5)).eval()
    share_embeddings(generator, discriminator)
    hf.save_electra(discriminator, tmp_path / "discriminator")
    hf.save_electra(generator, tmp_path / "generator")
    ids = torch.randint(5, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    for part, cls in (
        ("discriminator", "ElectraForPreTraining"),
        ("generator", "ElectraForMaskedLM"),
    ):
        ours = {"discriminator": discriminator, "generator": generator}[part]
        theirs = getattr(transformers, cls).from_pretrained(tmp_path / part).eval()
        with torch.no_grad():
            expected = ours(ids, mask).logits
            got = theirs(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=ATOL, rtol=0)
    with pytest.raises(TriformError, match="takes an ELECTRA model, not a bert model"):
        hf.save_electra(build_model(presets.get("bert-tiny")), tmp_path / "x")


BERTLIKE = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64)  # fmt: skip
HF_CONFIGS = {
    "bert": lambda **kw: transformers.BertConfig(**BERTLIKE, **kw),
    "roberta": lambda **kw: transformers.RobertaConfig(
        **{**BERTLIKE, "max_position_embeddings": 66}, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, **kw),
    "albert": lambda **kw: transformers.AlbertConfig(**BERTLIKE, embedding_size=16, **kw),
    "electra": lambda **kw: transformers.ElectraConfig(**BERTLIKE, embedding_size=16, **kw),
    "gpt2": lambda **kw: transformers.GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2,
                                                 n_positions=64, pad_token_id=0, **kw),
    "bart": lambda **kw: transformers.BartConfig(
        vocab_size=300, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, **kw),
}  # fmt: skip
MADE_BY_HF = [
    ("BertForSequenceClassification", "bert", "bert", "classification"),
    ("BertForTokenClassification", "bert", "bert", "tagging"),
    ("BertForQuestionAnswering", "bert", "bert", "qa"),
    ("RobertaForSequenceClassification", "roberta", "roberta", "classification"),
    ("RobertaForTokenClassification", "roberta", "roberta", "tagging"),
    ("RobertaForQuestionAnswering", "roberta", "roberta", "qa"),
    ("AlbertForQuestionAnswering", "albert", "bert", "qa"),
    ("ElectraForQuestionAnswering", "electra", "bert", "qa"),
    ("ElectraForSequenceClassification", "electra", "bert", "classification"),
    ("GPT2ForSequenceClassification", "gpt2", "gpt2", "classification"),
    ("BartForSequenceClassification", "bart", "bart", "classification"),
]


def hf_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a transformers task model (start and end stacked for QA)."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in batch and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    with torch.no_grad():
        out = model(**{k: batch[k] for k in names})
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits])
    return out.logits


def our_logits(ft: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        logits = ft.task.logits(ft.model, batch)
    return torch.stack(logits) if isinstance(logits, tuple) else logits


@pytest.mark.parametrize("name,family,tok,kind", MADE_BY_HF)
def test_checkpoints_made_by_transformers_load_and_export_again(
    tmp_path: Path, toks: dict[str, str], name: str, family: str, tok: str, kind: str
) -> None:
    """A task-head folder transformers wrote (no ``triform_task``): kind and labels come from
    the class and config.json; the model gives transformers' logits, and exported again it is
    the same model."""
    labels = {0: "O", 1: "B-X", 2: "I-X"}
    config = HF_CONFIGS[family](id2label=labels) if kind != "qa" else HF_CONFIGS[family]()
    reference = getattr(transformers, name)(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text(Path(toks[tok]).read_text())
    ft = hf_tasks.load_finetuned(tmp_path / "hf")
    assert ft.task.kind == kind
    assert ft.labels == (None if kind == "qa" else list(labels.values()))
    text = f"apple {KEYWORD} river"
    row = {"text": text, "tokens": text.split(), "question": "where", "context": text}
    batch = triform_batch(ft, [row])
    expected = hf_logits(reference, batch)
    torch.testing.assert_close(our_logits(ft, batch), expected, atol=ATOL, rtol=0)
    hf_tasks.save_finetuned(ft, tmp_path / "again")
    again = getattr(transformers, name).from_pretrained(tmp_path / "again").eval()
    torch.testing.assert_close(hf_logits(again, batch), expected, atol=ATOL, rtol=0)


def test_hf_task_folder_converts_to_a_triform_finetuned_folder(
    tmp_path: Path, toks: dict[str, str]
) -> None:
    reference = transformers.BertForTokenClassification(HF_CONFIGS["bert"](num_labels=3)).eval()
    reference.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text(Path(toks["bert"]).read_text())
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "tf"), "--to", "triform"]) == 0
    ft = load_finetuned(tmp_path / "tf")  # triform's own fine-tuned folder
    assert ft.task.kind == "tagging" and ft.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    batch = triform_batch(ft, [{"tokens": ["apple", KEYWORD]}])
    torch.testing.assert_close(
        our_logits(ft, batch), hf_logits(reference, batch), atol=ATOL, rtol=0
    )
    transformers.BertModel(HF_CONFIGS["bert"]()).save_pretrained(tmp_path / "body")
    with pytest.raises(TriformError, match="BertModel is not a task-head class"):
        hf_tasks.load_finetuned(tmp_path / "body")


def refused(tmp_path: Path, capsys: pytest.CaptureFixture, run: Path, message: str) -> None:
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_heads_transformers_cannot_hold_are_refused(
    tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(16, 0))
    task = {"kind": "classification", "train": data}
    run = tiny_finetune(tmp_path / "m", "bert-tiny", toks["bert"], {**task, "pooling": "mean"}, 1)
    refused(tmp_path, capsys, run, "this model's head reads the mean of the token states")
    run = tiny_finetune(tmp_path / "g", "gpt2-tiny", toks["gpt2"],
                        {**task, "kind": "gpt-classification"}, steps=1)  # fmt: skip
    refused(tmp_path, capsys, run, "which no transformers class adds")


def test_plain_export_writes_tokenizer_files(tmp_path: Path, toks: dict[str, str]) -> None:
    """A pretrained (not fine-tuned) model folder gets the files AutoTokenizer needs too."""
    from triform import presets
    from triform.models import build_model
    from triform.runs import save_weights

    model = build_model(presets.get("roberta-tiny", **TINY, vocab_size=300))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(json.dumps(model.config.to_dict()))
    save_weights(model, tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "tokenizer.json").write_text(Path(toks["roberta"]).read_text())
    out = convert(tmp_path / "m", tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )
    assert tokenizer.mask_token == "<mask>" and tokenizer.model_max_length == 64
    encoded = tokenizer("apple zebra", "river")
    assert "token_type_ids" not in encoded  # RoBERTa has one segment embedding
    from triform.tokenizers import load_tokenizer

    assert (
        encoded["input_ids"] == load_tokenizer(toks["roberta"]).encode("apple zebra", "river").ids
    )
