"""In-context learning evaluation: prompts, demonstrations, option scoring, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import triform
from triform.cli import main
from triform.errors import TriformError
from triform.inference.icl import (
    Example,
    build_prompt,
    continuation_logprobs,
    draw_demonstrations,
    evaluate_icl,
    read_examples,
)
from triform.tokenizers import train_tokenizer

POOL = [Example(f"text {i}", "yes" if i % 2 else "no", ["yes", "no"]) for i in range(10)]


def test_prompt_layout() -> None:
    demos = [Example("a b", "x"), Example("c", "y")]
    prompt = build_prompt("Q: {input}\nA: {answer}", demos, Example("d", "z"))
    assert prompt == "Q: a b\nA: x\n\nQ: c\nA: y\n\nQ: d\nA: "
    with pytest.raises(TriformError, match="must end with"):
        build_prompt("{answer} then {input}", [], Example("d", "z"))


def test_demonstrations_are_reproducible_and_exclude_the_query() -> None:
    first = draw_demonstrations(POOL, 4, seed=3, index=7, exclude=POOL[7])
    assert first == draw_demonstrations(POOL, 4, seed=3, index=7, exclude=POOL[7])
    assert POOL[7] not in first and len(set(map(id, first))) == 4
    assert first != draw_demonstrations(POOL, 4, seed=4, index=7, exclude=POOL[7])
    with pytest.raises(TriformError, match="pool has 9"):
        draw_demonstrations(POOL, 10, 0, 0, exclude=POOL[0])


@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny"])
def test_continuation_scores_match_a_hand_computation(name: str) -> None:
    torch.manual_seed(0)
    model = triform.build_model(triform.presets.get(name)).eval()
    contexts, continuations = [[5, 6, 7, 8], [9, 10]], [[11, 12], [13, 14, 15]]
    total, count = continuation_logprobs(model, contexts, continuations)
    assert count.tolist() == [2, 3]
    for i, (context, continuation) in enumerate(zip(contexts, continuations, strict=True)):
        if model.config.form == "decoder":
            ids = torch.tensor([context + continuation])
            logp = F.log_softmax(model(ids).logits[0, :-1], -1)
            targets = ids[0, 1:]
            expected = logp[torch.arange(len(targets)), targets][-len(continuation) :].sum()
        else:
            start = model.config.decoder_start_token_id
            decoder = torch.tensor([[start, *continuation[:-1]]])
            logp = F.log_softmax(model(torch.tensor([context]), None, decoder).logits[0], -1)
            expected = logp[torch.arange(len(continuation)), torch.tensor(continuation)].sum()
        assert total[i].item() == pytest.approx(expected.item(), abs=1e-4)


def test_evaluate_picks_the_most_likely_option(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = train_tokenizer(["yes no text 0123456789 Answer"], kind="char", vocab_size=64)
    model = triform.build_model(triform.presets.get("gpt2-tiny", vocab_size=64)).eval()

    def prefer_yes(model, contexts, continuations, pad_id=0):  # "yes" scores best
        scores = [0.0 if tokenizer.decode(c).strip() == "yes" else -5.0 for c in continuations]
        return torch.tensor(scores), torch.ones(len(continuations))

    monkeypatch.setattr("triform.inference.icl.continuation_logprobs", prefer_yes)
    result = evaluate_icl(model, tokenizer, POOL, shots=[0, 2], scoring="loglik")
    assert result.accuracy == {0: 0.5, 2: 0.5}
    assert set(result.predictions[2]) == {"yes"}
    first = result.records[2][0]  # what was asked, and how each option scored
    assert first["scores"] == {"yes": 0.0, "no": -5.0} and first["prediction"] == "yes"
    assert (
        first["prompt"].endswith(POOL[0].input + "\nAnswer: ")
        and first["prompt"].count("Answer") == 3
    )
    assert [r["correct"] for r in result.records[2]] == [e.answer == "yes" for e in POOL]


def test_read_examples_checks_lines(tmp_path: Path) -> None:
    path = tmp_path / "task.jsonl"
    path.write_text('{"input": "a", "answer": 1, "options": ["x", "y"]}\n\n{"input": "b"}\n')
    with pytest.raises(TriformError, match="task.jsonl:3: each line needs"):
        read_examples(path)
    path.write_text('{"input": "a", "answer": 1}\n')
    assert read_examples(path, ["x", "y"])[0].answer == "y"


def test_command_runs_on_a_pretrained_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"text {i}\nAnswer: {'yes' if i % 2 else 'no'}" for i in range(400))
    )
    run = tmp_path / "run"
    sets = [
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.ffn_size=64",
        "train.steps=3",
        "train.eval_every=3",
        "train.batch_size=4",
        "train.progress=false",
        "train.tensorboard=false",
        "data.seq_len=32",
        "data.val_fraction=0.2",
        'data.split_documents="blank-line"',
        'tokenizer.kind="char"',
        f"data.corpus={json.dumps(str(corpus))}",
        f"train.out_dir={json.dumps(str(run))}",
    ]
    assert main(["pretrain", *[a for s in sets for a in ("--set", s)]]) == 0
    task = tmp_path / "task.jsonl"
    task.write_text(
        "".join(json.dumps({"input": e.input, "answer": e.answer}) + "\n" for e in POOL)
    )
    out = tmp_path / "icl.json"
    capsys.readouterr()
    args = [
        "evaluate",
        "icl",
        str(run),
        "--task",
        str(task),
        "--options",
        "yes,no",
        "--shots",
        "0,1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "shots" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert set(saved["accuracy"]) == {"0", "1"}
    record = saved["examples"]["1"][0]
    assert record["prompt"].endswith("Answer: ") and set(record["scores"]) == {"yes", "no"}
    assert record["prediction"] == saved["predictions"]["1"][0]
    assert main([*args[:-2], "--scoring", "generate", "--max-new-tokens", "3"]) == 0
    assert main(["evaluate", "icl", str(run), "--task", str(task), "--shots", "0"]) == 2
    assert "needs 'options'" in capsys.readouterr().err
