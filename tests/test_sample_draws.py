"""Random draws are a function of (seed, global sample index): every objective transforms a
sample the same whichever way the global batch is split (whole, two micro-batches, two
ranks), again in a resumed run, and two samples differently."""

from __future__ import annotations

import math

import pytest
import torch

from triform import build_model, presets
from triform.data import Corpus
from triform.data.readers import DocumentSequences, PackedSequences, SentencePairs
from triform.data.shards import ShardSet, prepare_shards
from triform.objectives import (
    Distillation,
    DistillConfig,
    SampleDraws,
    build_objective,
    context_from_tokenizer,
    sample_replacements,
)
from triform.objectives.ops import poisson_quantile
from triform.tokenizers import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

V, B, L = 1000, 16, 48
PAD, UNK, CLS, SEP, MASK, STOP = 0, 1, 2, 3, 4, 5
SENTINELS = list(range(900, 1000))
CONTEXT = {
    "vocab_size": V,
    "pad_id": PAD,
    "mask_id": MASK,
    "cls_id": CLS,
    "sep_id": SEP,
    "bos_id": CLS,
    "eos_id": SEP,
    "special_ids": [PAD, UNK, CLS, SEP, MASK, *SENTINELS],
    "sentinel_ids": SENTINELS,
    "sentence_end_ids": [STOP],
}
# every objective that draws, with every one of its random switches on
RANDOM = {
    "mlm": {},
    "mlm-exact-whole-words": {"name": "mlm", "selection": "exact", "whole_word": True},
    "mlm-nsp": {},
    "span-corruption": {},
    "denoising": {"token_masking": 0.1, "token_deletion": 0.1, "document_rotation": 0.5},
    "span-mlm": {},
    "rtd": {},
}
SAMPLES = torch.arange(B) + 1000  # the global batch's sample indices (batch 62 of 16 rows)


def objective(key: str):
    return build_objective({"name": key, **RANDOM[key]}, **CONTEXT)


def reader_batch(key: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """What the objective's reader gives: framed rows of different lengths, padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 900, (B, L), generator=g)
    ids[torch.rand(B, L, generator=g) < 0.1] = STOP
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    position = torch.arange(L)
    ids[:, 0] = CLS
    ids[position == (lengths - 1).unsqueeze(1)] = SEP
    real = position < lengths.unsqueeze(1)
    ids[~real] = PAD
    batch = {"input_ids": ids, "attention_mask": real.long(), "sample_index": SAMPLES}
    if key == "mlm-nsp":
        second = torch.randint(3, L // 3, (B,), generator=g)
        ids[position == second.unsqueeze(1)] = SEP
        batch["token_type_ids"] = ((position > second.unsqueeze(1)) & real).long()
        batch["pair_labels"] = torch.randint(0, 2, (B,), generator=g)
    if key.startswith("mlm-exact") or key == "span-mlm":
        batch["word_start"] = torch.rand(B, L, generator=g) < 0.7
    return batch


def rows(batch: dict[str, torch.Tensor], index: slice) -> dict[str, torch.Tensor]:
    return {key: value[index] for key, value in batch.items()}


def concat(parts: list[dict[str, torch.Tensor]], like: dict[str, torch.Tensor]):
    """The parts' rows one after the other, each key padded to ``like``'s width (denoising's
    source is as wide as its batch's longest row) with ``like``'s padding value."""
    out = {}
    for key, value in like.items():
        pieces = []
        for part in parts:
            piece = part[key]
            if piece.dim() == 2 and piece.size(1) < value.size(1):
                fill = 0 if key.endswith("mask") else PAD
                piece = torch.nn.functional.pad(
                    piece, (0, value.size(1) - piece.size(1)), value=fill
                )
            pieces.append(piece)
        out[key] = torch.cat(pieces)
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def halves(draws: SampleDraws) -> list[SampleDraws]:
    return [draws.rows(slice(0, B // 2)), draws.rows(slice(B // 2, B))]


# ---------------------------------------------------------------------------------------
# The draws themselves
# ---------------------------------------------------------------------------------------
def test_a_draw_depends_on_seed_sample_column_and_stream_alone():
    draws = SampleDraws(7, SAMPLES)
    table = draws.uniform(40, 3)  # (B, 40)
    assert table.shape == (B, 40) and table.min() >= 0 and table.max() < 1
    assert torch.equal(draws.uniform(25, 3), table[:, :25])  # a wider call extends it
    assert torch.equal(SampleDraws(7, SAMPLES.flip(0)).uniform(40, 3), table.flip(0))
    assert torch.equal(draws.rows(slice(3, 9)).uniform(40, 3), table[3:9])
    assert torch.equal(SampleDraws(7, SAMPLES[5:6]).uniform(40, 3), table[5:6])  # alone
    rows, columns = torch.tensor([0, 4, 4, 15]), torch.tensor([39, 0, 7, 12])
    assert torch.equal(draws.at(rows, columns, 3), table[rows, columns])
    # another stream, seed, split or sample: other draws
    for other in (
        draws.uniform(40, 4),
        SampleDraws(8, SAMPLES).uniform(40, 3),
        SampleDraws(7, SAMPLES, SampleDraws.VALIDATION).uniform(40, 3),
        SampleDraws(7, SAMPLES + B).uniform(40, 3),
    ):
        assert (other != table).float().mean() > 0.99
    big = SampleDraws(0, 4096).uniform(64, 0)
    assert big.mean().item() == pytest.approx(0.5, abs=0.002)
    assert big.var().item() == pytest.approx(1 / 12, abs=0.001)
    # sample indices beyond 32 bits are keyed by all their bits
    far = SampleDraws(0, torch.tensor([5, 5 + 2**32])).uniform(8, 0)
    assert not torch.equal(far[0], far[1])


def test_poisson_counts_by_the_inverse_cdf():
    counts = SampleDraws(1, 2048).poisson(64, 2, 3.0).double()
    assert counts.mean().item() == pytest.approx(3.0, abs=0.03)
    assert counts.var().item() == pytest.approx(3.0, abs=0.1)
    assert (counts == 0).double().mean().item() == pytest.approx(math.exp(-3), abs=0.005)
    u = torch.tensor([0.0, math.exp(-3) - 1e-6, math.exp(-3) + 1e-6, 1 - 2**-24])
    assert poisson_quantile(u, 3.0).tolist()[:3] == [0, 0, 1]


# ---------------------------------------------------------------------------------------
# Every objective: whole = halves, row for row
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(RANDOM))
def test_the_whole_batch_transforms_as_its_halves(key):
    """One process reads the global batch; two micro-batches or two ranks read its halves:
    every output row is the same."""
    batch, transform = reader_batch(key), objective(key)
    draws = SampleDraws(3, batch["sample_index"])
    whole = transform(batch, draws)
    parts = [
        transform(rows(batch, index), part)
        for index, part in zip((slice(0, B // 2), slice(B // 2, B)), halves(draws), strict=True)
    ]
    assert_same(whole, concat(parts, whole))
    assert (whole["labels"] != -100).any()


@pytest.mark.parametrize("key", list(RANDOM))
def test_a_resumed_run_draws_alike_and_other_samples_differently(key):
    batch, transform = reader_batch(key), objective(key)
    first = transform(batch, SampleDraws(3, batch["sample_index"]))
    # a fresh objective (a resumed run in a new process) reading the same samples
    again = build_objective({"name": key, **RANDOM[key]}, **CONTEXT)(
        batch, SampleDraws(3, batch["sample_index"])
    )
    assert_same(first, again)
    # the same tokens at other sample indices (a later epoch), or under another seed
    for draws in (SampleDraws(3, batch["sample_index"] + B), SampleDraws(4, batch["sample_index"])):
        other = transform(batch, draws)
        changed = [k for k in first if first[k].shape != other[k].shape]
        changed += [k for k in first if k not in changed and not torch.equal(first[k], other[k])]
        assert "labels" in changed or "input_ids" in changed, key
    # within one batch, rows of the same tokens but different samples differ
    twins = {k: v[:1].expand(B, *v.shape[1:]).clone() for k, v in batch.items()}
    twins["sample_index"] = batch["sample_index"]
    out = transform(twins, SampleDraws(3, twins["sample_index"]))
    column = "labels" if key == "span-corruption" else "input_ids"  # what is random
    assert len({tuple(row.tolist()) for row in out[column]}) > B // 2, key


def test_electra_samples_a_position_alike_in_any_batch():
    """The generator's replacement at a masked position is keyed by (sample, position):
    the same for the whole batch, its halves, and the logits at masked positions only."""
    rtd = objective("rtd")
    batch = reader_batch("rtd")
    draws = SampleDraws(3, batch["sample_index"])
    out = rtd(batch, draws)
    logits = torch.randn(B, L, V, generator=torch.Generator().manual_seed(1))
    whole = sample_replacements(logits, out, draws)
    parts = [
        sample_replacements(logits[index], rows(out, index), part)
        for index, part in zip((slice(0, B // 2), slice(B // 2, B)), halves(draws), strict=True)
    ]
    assert_same(whole, concat(parts, whole))
    selected = out["labels"] != -100
    assert_same(sample_replacements(logits[selected], out, draws), whole)  # (N, V) logits
    assert (whole["labels"] == 1).any()


def test_distillation_draws_as_its_inner_objective():
    teacher = build_model(
        presets.get(
            "bert-tiny", vocab_size=V, hidden_size=16, num_layers=2, num_heads=2, ffn_size=32
        )
    )
    ids = {key: CONTEXT[key] for key in ("vocab_size", "mask_id", "pad_id", "special_ids")}
    config = DistillConfig(teacher="teacher", **ids)
    distill = Distillation(config, teacher)
    batch = reader_batch("mlm")
    draws = SampleDraws(3, batch["sample_index"])
    whole = distill(batch, draws)
    assert_same(whole, objective("mlm")(batch, draws))
    index = (slice(0, B // 2), slice(B // 2, B))
    parts = [distill(rows(batch, i), d) for i, d in zip(index, halves(draws), strict=True)]
    assert_same(whole, concat(parts, whole))


# ---------------------------------------------------------------------------------------
# Readers and objectives together: 1 process, 2 micro-batches, 2 ranks
# ---------------------------------------------------------------------------------------
TEXT = " ".join(
    f"Sentence {i} of the story tells of {['kings', 'ships', 'storms', 'bread'][i % 4]} "
    f"and of {['night', 'rain', 'gold'][i % 3]}." + ("\n\n" if i % 7 == 6 else "\n")
    for i in range(700)
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    """Train shards and the tokenizer of each family the objectives need."""
    made = {}
    for family, kind in (("bert", "wordpiece"), ("t5", "unigram"), ("bart", "byte-bpe")):
        tok = train_tokenizer([TEXT], kind=kind, vocab_size=400, family=family)
        folder = tmp_path_factory.mktemp(family)
        corpus = Corpus.from_texts(TEXT.split("\n\n"))
        prepare_shards(corpus, tok, folder, val_fraction=0.1, workers=0, progress=False)
        made[family] = tok, ShardSet(folder, split="train", tokenizer=tok)
    return made


def _readers(family: str, key: str, tok, split, rows: int, rank: int = 0, world: int = 1):
    special = context_from_tokenizer(tok)
    options = {"rank": rank, "world": world}
    if key == "mlm-nsp":
        return SentencePairs(split, 48, rows, 5, mode="nsp", short_seq_prob=0.3, **options)
    if key == "denoising":
        bos, eos = special["bos_id"], special["eos_id"]
        return DocumentSequences(split, 48, rows, 5, bos_id=bos, eos_id=eos, **options)
    if key == "span-corruption":
        return PackedSequences(split, 48, rows, 5, **options)
    framing = {"cls_id": special["cls_id"], "sep_id": special["sep_id"]}
    return PackedSequences(split, 48, rows, 5, **framing, **options)


@pytest.mark.parametrize(
    ("key", "family"),
    [("mlm", "bert"), ("mlm-nsp", "bert"), ("span-corruption", "t5"), ("denoising", "bart")],
)
def test_one_process_micro_batches_and_ranks_read_and_draw_alike(shards, key, family):
    tok, split = shards[family]
    transform = build_objective({"name": key}, **context_from_tokenizer(tok))

    def prepared(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = transform(batch, SampleDraws(5, batch["sample_index"]))
        return {**out, "sample_index": batch["sample_index"]}

    reader = _readers(family, key, tok, split, 8)
    step = reader.items_per_epoch // 8  # the batch that crosses the end of the first epoch
    assert reader.items_per_epoch % 8, "the batch should take rows from two epochs"
    whole = prepared(reader.batch(step))
    assert torch.equal(whole["sample_index"], torch.arange(step * 8, step * 8 + 8))
    micro = _readers(family, key, tok, split, 4)  # train.grad_accum = 2
    two_micro = [prepared(micro.batch(2 * step + m)) for m in (0, 1)]
    two_ranks = [
        prepared(_readers(family, key, tok, split, 8, rank, 2).batch(step)) for rank in (0, 1)
    ]
    assert_same(whole, concat(two_micro, whole))
    assert_same(whole, concat(two_ranks, whole))
    # a resumed run: a new reader asked for this step alone
    assert_same(whole, prepared(_readers(family, key, tok, split, 8).batch(step)))
