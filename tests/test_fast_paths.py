"""The shortcuts that make a training step cheaper than the reference's compute exactly what
the plain computation does: the chunked vocabulary projection + cross entropy, logits at the
labelled positions only, and the objectives' fused step."""

from __future__ import annotations

import functools
import shutil

import pytest
import torch
import torch.nn.functional as F

import triform
from triform.models.base import tied_table
from triform.nn import Linear
from triform.nn.losses import IGNORE_INDEX, linear_cross_entropy, token_cross_entropy
from triform.objectives import CausalLM, CausalLMConfig, MaskedLM, MaskedLMConfig, SampleDraws
from triform.objectives.base import token_accuracy
from triform.runtime.packed import onednn_linear, packed_linears

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"hidden_size": 32, "num_heads": 2, "ffn_size": 64, "num_layers": 2, "vocab_size": 97}


def _grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    grads = [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return grads


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_linear_cross_entropy_equals_full_logits(
    chunk_rows: int, with_bias: bool, scale: float
) -> None:
    g = torch.Generator().manual_seed(0)
    n, h, v = 37, 16, 101
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    bias = torch.randn(v, generator=g, requires_grad=True) if with_bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = IGNORE_INDEX
    params = [hidden, weight] + ([bias] if with_bias else [])

    loss, predictions = linear_cross_entropy(hidden, weight, bias, labels, chunk_rows)
    (scale * loss).backward()  # a scale on the way back reaches every gradient
    fused = _grads(*params)
    logits = F.linear(hidden, weight, bias)
    reference = token_cross_entropy(logits, labels)
    (scale * reference).backward()
    plain = _grads(*params)

    assert torch.allclose(loss, reference, atol=1e-6, rtol=1e-6)
    assert torch.equal(predictions, logits.argmax(-1))
    for a, b in zip(fused, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_linear_cross_entropy_without_labels_or_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 8, generator=g, requires_grad=True)
    weight = torch.randn(11, 8, generator=g, requires_grad=True)
    none_counted = torch.full((5,), IGNORE_INDEX)
    loss, _ = linear_cross_entropy(hidden, weight, None, none_counted)
    loss.backward()
    assert loss.item() == 0.0 and not hidden.grad.any() and not weight.grad.any()
    labels = torch.randint(0, 11, (5,), generator=g)
    with torch.no_grad():
        value, _ = linear_cross_entropy(hidden, weight, None, labels, chunk_rows=2)
        expected = F.cross_entropy(F.linear(hidden, weight), labels)
    assert not value.requires_grad
    assert torch.allclose(value, expected, atol=1e-6)


def test_linear_cross_entropy_refuses_a_second_backward() -> None:
    """Its gradients are computed in the forward and scaled in place in the backward: a
    second backward through the same graph (retain_graph) would be wrong, so it is an error."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 8, generator=g, requires_grad=True)
    weight = torch.randn(11, 8, generator=g, requires_grad=True)
    loss, _ = linear_cross_entropy(hidden, weight, None, torch.randint(0, 11, (5,), generator=g))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="compute the loss again"):
        loss.backward()


def test_lm_head_at_positions_equals_full_head() -> None:
    """A BERT head (transform, bias, tied weights): rows of the full logits at the chosen
    positions, and their gradients."""
    config = triform.presets.get("bert-base", **TINY, encoder_head="mlm", pair_head="none")
    torch.manual_seed(0)
    model = triform.build_model(config)
    hidden = torch.randn(3, 10, config.hidden_size, requires_grad=True)
    at = torch.rand(3, 10, generator=torch.Generator().manual_seed(0)) < 0.3
    picked = model.lm_head(hidden, at)
    picked.square().sum().backward()
    grads = _grads(hidden, model.lm_head.decoder.weight)
    full = model.lm_head(hidden)[at]
    full.square().sum().backward()
    assert picked.shape == (int(at.sum()), config.vocab_size)
    assert torch.allclose(picked, full, atol=1e-6)
    for a, b in zip(grads, _grads(hidden, model.lm_head.decoder.weight), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def _step_and_full(objective, model, batch) -> tuple[tuple, tuple]:
    """(loss, accuracy, grads) from the objective's step and from full logits."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss, parts = objective.step(model, batch, SampleDraws(0, len(batch["labels"])))
    loss.backward()
    fast = (loss.detach(), parts["accuracy"], _grads(*params))
    output = model(**objective.model_inputs(batch))
    reference = token_cross_entropy(output.logits, batch["labels"])
    reference.backward()
    accuracy = token_accuracy(output, batch)["accuracy"]
    return fast, (reference.detach(), accuracy, _grads(*params))


def _assert_same(fast: tuple, plain: tuple) -> None:
    assert abs(fast[0].item() - plain[0].item()) < 1e-6
    assert torch.allclose(fast[1], plain[1])
    for a, b in zip(fast[2], plain[2], strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_masked_lm_step_equals_full_logits_loss() -> None:
    config = triform.presets.get("bert-base", **TINY, encoder_head="mlm", pair_head="none")
    torch.manual_seed(0)
    model = triform.build_model(config).eval()
    objective = MaskedLM(MaskedLMConfig(vocab_size=97, mask_id=4, pad_id=0, special_ids=[0, 4]))
    ids = torch.randint(5, 97, (4, 24), generator=torch.Generator().manual_seed(2))
    ids[1, 15:] = 0
    batch = objective({"input_ids": ids}, SampleDraws(3, len(ids)))
    assert (batch["labels"] == IGNORE_INDEX).float().mean() > 0.5  # most positions skipped
    _assert_same(*_step_and_full(objective, model, batch))


def test_causal_lm_step_equals_full_logits_loss() -> None:
    config = triform.presets.get("gpt2", **TINY, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = triform.build_model(config).eval()
    objective = CausalLM(CausalLMConfig())
    window = torch.randint(0, 97, (3, 17), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(window)
    mask[2, 9:] = 0  # a short last window: padded targets are not counted
    batch = objective({"input_ids": window, "attention_mask": mask})
    _assert_same(*_step_and_full(objective, model, batch))


def test_seq2seq_logits_at_labels_equal_full_logits() -> None:
    """T5 (scaled tied logits) through the ``logits_at`` path of a label-smoothed loss."""
    from triform.objectives.seq2seq import Seq2Seq, Seq2SeqConfig, label_smoothed_cross_entropy

    config = triform.presets.get("t5-small", **TINY, head_dim=16)
    torch.manual_seed(0)
    model = triform.build_model(config).eval()
    objective = Seq2Seq(Seq2SeqConfig(pad_id=0, eos_id=1))
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(2, 97, (3, 9), generator=g)
    labels[0, 6:] = IGNORE_INDEX
    batch = {
        "input_ids": torch.randint(2, 97, (3, 11), generator=g),
        "decoder_input_ids": torch.randint(2, 97, (3, 9), generator=g),
        "labels": labels,
    }
    loss, parts = objective.step(model, batch, SampleDraws(0, 3))
    output = model(**objective.model_inputs(batch))
    expected = label_smoothed_cross_entropy(output.logits, labels, 0.1)
    assert abs(loss.item() - expected.item()) < 1e-6
    assert torch.allclose(parts["accuracy"], token_accuracy(output, batch)["accuracy"])


def test_preallocated_cache_equals_concatenating_cache() -> None:
    """Decoding with the in-place cache (and an in-place beam reorder) gives the same logits
    and the same cached keys/values as the concatenating one."""
    from triform.nn.cache import KVCache

    config = triform.presets.get("gpt2", **TINY, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = triform.build_model(config).eval()
    g = torch.Generator().manual_seed(6)
    prompt = torch.randint(0, 97, (3, 5), generator=g)
    steps = torch.randint(0, 97, (4, 3, 1), generator=g)
    order = torch.tensor([2, 0, 0])
    caches = {"cat": KVCache.empty(2), "preallocated": KVCache.empty(2, capacity=9)}
    logits = {}
    with torch.no_grad():
        for name, cache in caches.items():
            outs = [model(prompt, past_key_values=cache, use_cache=True).logits]
            for index, ids in enumerate(steps):
                if index == 2:
                    cache.reorder(order)
                outs.append(model(ids, past_key_values=cache, use_cache=True).logits)
            logits[name] = torch.cat(outs, dim=1)
    assert caches["preallocated"].length == caches["cat"].length == 9
    assert torch.allclose(logits["cat"], logits["preallocated"], atol=1e-6)
    for a, b in zip(caches["cat"].self_kv, caches["preallocated"].self_kv, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="holds 9 positions"):
        caches["preallocated"].append(0, *caches["cat"].self_kv[0])


def test_linear_cross_entropy_under_bf16_autocast() -> None:
    """Under autocast the chunks run their matmuls in bf16 as the full projection does: the
    same loss to bf16 rounding, fp32 gradients of the fp32 inputs."""
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(40, 32, generator=g, requires_grad=True)
    weight = (0.1 * torch.randn(300, 32, generator=g)).requires_grad_()
    labels = torch.randint(0, 300, (40,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(hidden, weight, None, labels, chunk_rows=16)
        reference = token_cross_entropy(F.linear(hidden, weight), labels)
    loss.backward()
    fused = _grads(hidden, weight)
    reference.backward()
    plain = _grads(hidden, weight)
    assert abs(loss.item() - reference.item()) < 1e-3 * reference.item()
    for a, b in zip(fused, plain, strict=True):
        assert a.dtype == torch.float32
        assert torch.allclose(a, b, atol=1e-3, rtol=2e-2)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")
@pytest.mark.parametrize("reorder_fp32", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linears_compute_what_the_linears_do(dtype: torch.dtype, reorder_fp32: bool) -> None:
    torch.manual_seed(0)
    model = triform.build_model(triform.presets.get("gpt2", **TINY)).eval().to(dtype)
    ids = torch.randint(0, TINY["vocab_size"], (3, 9))
    plain = model(ids).logits
    with torch.no_grad():
        reference = model(ids).logits
        with packed_linears(model, reorder_fp32) as packed:
            assert packed
            linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
            assert all("forward" in m.__dict__ for m in linears)
            with packed_linears(model) as inner:  # nested: the outer packing is reused
                assert inner and all("forward" in m.__dict__ for m in linears)
            assert all("forward" in m.__dict__ for m in linears)  # the inner exit kept them
            with torch.profiler.profile() as profile:
                logits = model(ids).logits
            rows = model(ids[:1]).logits  # another row count, the same packing
        assert not any("forward" in m.__dict__ for m in linears)  # restored on exit
        # every linear, the vocabulary projection included, ran through the packed kernel
        names = [event.name for event in profile.events()]
        assert names.count("mkldnn::_linear_pointwise") == len(linears)
        assert not {"aten::linear", "aten::addmm", "aten::mm"} & set(names)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(logits, reference, **tolerance)
    torch.testing.assert_close(rows, reference[:1], **tolerance)
    assert torch.equal(model(ids).logits, plain)  # and the model computes as before


def test_packed_linears_stay_out_of_training_and_autocast() -> None:
    model = triform.build_model(triform.presets.get("gpt2", **TINY))
    with packed_linears(model) as packed:  # autograd on: the packed kernel has no backward
        assert not packed
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), packed_linears(model) as packed:
        assert not packed
    with torch.no_grad(), packed_linears(model.double()) as packed:  # no fp64 kernel
        assert not packed


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("frozen_weight", [False, True])
@pytest.mark.parametrize(("fan_in", "fan_out"), [(16, 24), (40, 16)])
def test_onednn_linear_and_its_gradients_are_f_linears(
    with_bias: bool, frozen_weight: bool, fan_in: int, fan_out: int
) -> None:
    """The training path (oneDNN forward and input gradient; the weight's a matmul, or the
    kernel for a layer wider than tall): the values and every gradient of F.linear, on 3-D
    input; a frozen weight gets none."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, fan_in, generator=g, requires_grad=True)
    w = torch.randn(fan_out, fan_in, generator=g, requires_grad=not frozen_weight)
    b = torch.randn(fan_out, generator=g, requires_grad=True) if with_bias else None
    upstream = torch.randn(5, 3, fan_out, generator=g)
    params = [t for t in (x, w, b) if t is not None and t.requires_grad]
    out = onednn_linear(x, w, b)
    out.backward(upstream)
    fast = _grads(*params)
    expected = F.linear(x, w, b)
    expected.backward(upstream)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for a, ref in zip(fast, _grads(*params), strict=True):
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5)
    assert w.grad is None
    with torch.no_grad():  # and without autograd, the kernel alone
        torch.testing.assert_close(onednn_linear(x, w, b), expected, rtol=1e-5, atol=1e-5)


def test_linear_layers_without_autograd_are_f_linear_bit_for_bit() -> None:
    """Inference forwards compute exactly what transformers does (the parity tests' 1e-5 on
    real checkpoints); bf16 autocast goes through F.linear as well."""
    layer = Linear(16, 24)
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = layer(x), F.linear(x, layer.weight, layer.bias)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def _language_model_and_batch(preset: str) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    """A tiny ``preset`` with its language-modelling head, in eval mode (no dropout, so two
    passes compare), a batch of 3 x 10 token ids (and 3 x 7 decoder ids) and its labels."""
    extra = {"bert-base": {"encoder_head": "mlm", "pair_head": "none"}, "t5-small": {}}
    config = triform.presets.get(preset, **TINY, **extra.get(preset, {"bos_token_id": 0}))
    torch.manual_seed(0)
    model = triform.build_model(config).eval()
    g = torch.Generator().manual_seed(1)
    inputs = {"input_ids": torch.randint(2, 97, (3, 10), generator=g)}
    labels = torch.randint(2, 97, (3, 10), generator=g)
    if config.form == "encoder-decoder":
        inputs["decoder_input_ids"] = torch.randint(0, 97, (3, 7), generator=g)
        labels = labels[:, :7]
    return model, inputs, labels


def _tied_table(model: torch.nn.Module) -> torch.Tensor:
    table = model.lm_head.decoder.weight
    assert any(m.weight is table for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return table


@pytest.mark.parametrize("preset", ["gpt2", "bert-base", "t5-small"])
def test_tied_table_gradient_through_the_lookups_equals_the_plain_one(preset: str) -> None:
    """With the head in the loss, the head's (V, E) gradient flows back through the tied
    lookups, which add their rows into it: the same gradient as plain lookups, with no (V, E)
    tensor filled, copied or summed on the way, seen whole by a hook on the table; without
    the head in the loss the same too."""
    model, inputs, labels = _language_model_and_batch(preset)
    table = _tied_table(model)
    seen = []
    hook = table.register_hook(lambda grad: seen.append(torch.linalg.vector_norm(grad)))
    loss = model(**inputs, labels=labels).loss
    with torch.profiler.profile(record_shapes=True) as profile:
        loss.backward()
    hook.remove()
    whole_table = [
        event.name
        for event in profile.events()
        if event.name in ("aten::add", "aten::copy_", "aten::fill_", "aten::zero_")
        and list(table.shape) in event.input_shapes
    ]
    assert whole_table == [], whole_table
    through_lookups = table.grad
    table.grad = None
    plain = _plain_lookups(model)
    token_cross_entropy(model(**inputs).logits, labels).backward()
    assert through_lookups.layout == torch.strided
    torch.testing.assert_close(through_lookups, table.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(seen[0], torch.linalg.vector_norm(table.grad))
    torch.optim.AdamW(model.parameters(), fused=True).step()

    for outputs in (lambda out: out.last_hidden_state.sum(), lambda out: out.logits.sum()):
        grads = []
        for patched in (False, True):  # the head runs, but maybe only hidden states count
            if patched:
                plain()
            else:
                _unpatch(model)
            table.grad = None
            outputs(model(**inputs)).backward()
            grads.append(table.grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    _unpatch(model)


def _plain_lookups(model: torch.nn.Module):
    """Every token lookup of ``model`` through ``F.embedding`` (no tie); returns itself, to
    redo it."""

    def patch() -> None:
        for module in model.modules():
            if isinstance(module, triform.nn.Embeddings):
                module.forward = functools.partial(_plain_lookup, module)

    patch()
    return patch


def _plain_lookup(module, input_ids, position_ids=None, token_type_ids=None, tie=None):
    return triform.nn.Embeddings.forward(module, input_ids, position_ids, token_type_ids)


def _unpatch(model: torch.nn.Module) -> None:
    for module in model.modules():
        module.__dict__.pop("forward", None)


def test_tied_table_only_when_the_head_runs_on_a_tied_trained_table() -> None:
    config = triform.presets.get("t5-small", **TINY, tie_embeddings=False)
    model = triform.build_model(config)
    labels = torch.zeros(1, 3, dtype=torch.long)
    assert tied_table(model.decoder_embeddings, model.lm_head, True, labels) is None
    tied = triform.build_model(triform.presets.get("t5-small", **TINY))
    assert tied_table(tied.decoder_embeddings, tied.lm_head, True, None) is not None
    assert tied_table(tied.decoder_embeddings, tied.lm_head, False, labels) is not None
    assert tied_table(tied.decoder_embeddings, tied.lm_head, False, None) is None
    with torch.no_grad():
        assert tied_table(tied.decoder_embeddings, tied.lm_head, True, labels) is None
    tied.requires_grad_(False)
    assert tied_table(tied.decoder_embeddings, tied.lm_head, True, labels) is None


@pytest.mark.parametrize("create_graph", [False, True])
def test_tied_lookup_with_a_padding_row_and_second_order(create_graph: bool) -> None:
    """Tied lookups give F.embedding's gradient with a padding row (which learns nothing),
    and a differentiable backward (create_graph) through them the second order too."""
    from triform.nn.embeddings import TiedTable

    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(11, 4))
    ids = torch.tensor([[1, 2, 2, 0], [0, 5, 1, 7]])
    h = torch.randn(3, 4)

    def loss(tie: TiedTable | None) -> torch.Tensor:
        rows = tie.lookup(ids, 0) if tie else F.embedding(ids, table, 0)
        weight = tie.weight if tie else table
        return (rows.sin().sum() + (h @ weight.t()).pow(2).sum()) ** 2

    grads = []
    for tie in (TiedTable(table), None):
        (grad,) = torch.autograd.grad(loss(tie), table, create_graph=create_graph)
        second = torch.autograd.grad(grad.pow(2).sum(), table) if create_graph else ()
        grads.append((grad, *second))
    for ours, plain in zip(*grads, strict=True):
        torch.testing.assert_close(ours, plain)


def test_tied_lookup_of_no_tokens() -> None:
    from triform.nn.embeddings import TiedTable

    table = torch.nn.Parameter(torch.randn(5, 3))
    tie = TiedTable(table)
    rows = tie.lookup(torch.zeros(2, 0, dtype=torch.long), None)  # (2, 0, 3)
    (rows.sum() + tie.weight.pow(2).sum()).backward()
    torch.testing.assert_close(table.grad, 2 * table.detach())


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="torch.compile on a CPU needs a C++ compiler"
)
def test_compiled_forward_has_no_graph_break() -> None:
    """With a padding mask the CPU's "no padding after all" shortcut (a data-dependent check)
    stays out of compiled graphs, and the oneDNN linears hand over to F.linear there."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = triform.build_model(triform.presets.get("gpt2", **TINY, bos_token_id=0)).eval()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(model)
    logits = compiled(ids, attention_mask=torch.ones_like(ids)).logits
    logits.square().mean().backward()
    assert not counters["graph_break"], list(counters["graph_break"])
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("preset", "precision"),
    [("gpt2", "bf16"), ("bert-base", "bf16"), ("t5-small", "bf16"), ("t5-small", "fp32")],
)
def test_training_attention_explicit_agrees_with_sdpa(
    preset: str, precision: str, monkeypatch
) -> None:
    """Training on a CPU in bf16, or with T5's learned position bias in any precision,
    attention is computed explicitly (faster there); its loss and gradients agree with
    SDPA's (to bf16 rounding; to fp32 rounding in fp32), padding masks and causality
    included."""
    from triform.nn import attention

    model, inputs, labels = _language_model_and_batch(preset)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][1, 7:] = 0
    results = []
    rule = attention.explicit_is_faster
    for explicit in (True, False):
        calls = []

        def choose(q, k, bias=None, explicit=explicit, calls=calls):
            calls.append(rule(q, k, bias))
            return explicit

        monkeypatch.setattr(attention, "explicit_is_faster", choose)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((loss.detach(), grads))
        monkeypatch.undo()
        # the real rule picks the explicit path here (in fp32: where the bias learns, in
        # T5's self-attention, not in its cross-attention)
        assert calls and (all(calls) if precision == "bf16" else any(calls))
    (loss_a, grads_a), (loss_b, grads_b) = results
    loss_tol, rtol, atol = (2e-2, 0.1, 2e-2) if precision == "bf16" else (1e-6, 1e-4, 1e-6)
    torch.testing.assert_close(loss_a, loss_b, rtol=loss_tol, atol=loss_tol)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_explicit_attention_for_bf16_training_on_short_keys_or_a_learned_bias() -> None:
    from triform.nn.attention import EXPLICIT_MAX_KEYS, explicit_is_faster

    def qk(dtype: torch.dtype, keys: int, grad: bool = True) -> tuple[torch.Tensor, ...]:
        q = torch.zeros(1, 2, 4, 8, dtype=dtype, requires_grad=grad)
        return q, torch.zeros(1, 2, keys, 8, dtype=dtype)

    assert explicit_is_faster(*qk(torch.bfloat16, EXPLICIT_MAX_KEYS))
    assert not explicit_is_faster(*qk(torch.bfloat16, EXPLICIT_MAX_KEYS + 1))
    assert not explicit_is_faster(*qk(torch.float32, 16))
    many = torch.zeros(64, 16, 512, 8, dtype=torch.bfloat16, requires_grad=True)  # 2^28 scores
    assert not explicit_is_faster(many, many.detach())
    assert not explicit_is_faster(*qk(torch.bfloat16, 16, grad=False))
    with torch.no_grad():
        assert not explicit_is_faster(*qk(torch.bfloat16, 16))
    # a bias that learns (T5): SDPA would compute explicitly anyway, at any length or precision
    learned = torch.zeros(1, 2, 4, 2048, requires_grad=True)
    assert explicit_is_faster(*qk(torch.float32, 2048), learned)
    assert not explicit_is_faster(*qk(torch.float32, 2048), learned.detach())
    assert not explicit_is_faster(*qk(torch.float32, 2048, grad=False), learned)


def test_fused_rms_norm_equals_torchs_and_its_gradient_is_exact() -> None:
    """T5's norm trains on a CPU in fp32 through one autograd function: the output and both
    gradients equal ``F.rms_norm``'s to fp32 rounding, its backward passes a float64
    gradcheck, and elsewhere (no autograd, bf16) the layer is ``F.rms_norm`` itself."""
    import torch.nn.functional as F

    from triform.nn.norms import RMSNorm, _fused_pays, _RMSNormFunction

    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(3, 5, 16) * 3).requires_grad_()
    grad_out = torch.randn(3, 5, 16)
    assert _fused_pays(x, norm.weight)
    fused = norm(x)
    reference = F.rms_norm(x, (16,), norm.weight, 1e-6)
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    got = torch.autograd.grad(fused, (x, norm.weight), grad_out)
    want = torch.autograd.grad(reference, (x, norm.weight), grad_out)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    frozen = x.detach()  # only the weight learns (the first norm after an embedding)
    (weight_only,) = torch.autograd.grad(norm(frozen), norm.weight, grad_out)
    torch.testing.assert_close(weight_only, want[1], rtol=1e-5, atol=1e-6)

    x64 = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w64 = torch.rand(8, dtype=torch.float64, requires_grad=True) + 0.5
    assert torch.autograd.gradcheck(_RMSNormFunction.apply, (x64, w64, 1e-6))

    with torch.no_grad():
        assert not _fused_pays(x, norm.weight)
    assert not _fused_pays(x.detach().bfloat16(), norm.weight.bfloat16())
