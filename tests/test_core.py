"""The one core: masks, positions, attention patterns, caching, sharing, config validation."""

from __future__ import annotations

import math

import pytest
import torch

import triform
from triform.config import ModelConfig, apply_overrides, from_dict
from triform.errors import ConfigError, TriformError
from triform.nn import KVCache, build_mask, relative_position_bucket
from triform.nn.masks import allowed_positions
from triform.nn.positions import RotaryEmbedding, sinusoidal_table

TINY = [name for name in triform.presets.names() if name.endswith("-tiny")]


def test_every_preset_validates_and_builds_on_meta() -> None:
    for name in triform.presets.names():
        model = triform.build_model(triform.presets.get(name), device="meta")
        assert model.num_parameters() > model.num_parameters(non_embedding=True) > 0


def test_preset_overrides_and_unknown_preset() -> None:
    config = triform.presets.get("bert-base", num_layers=4)
    assert config.num_layers == 4 and config.family == "bert"
    with pytest.raises(ConfigError, match="unknown preset"):
        triform.presets.get("bert-huge")
    with pytest.raises(ConfigError, match="unknown key model.num_layer"):
        triform.presets.get("bert-base", num_layer=4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 100, "num_heads": 3}, "divisible"),
        ({"num_layers": 0}, "num_layers must be positive"),
        ({"activation": "swish"}, "model.activation must be one of"),
        ({"dropout": 1.5}, "dropout"),
        ({"num_heads": "8"}, "model.num_heads must be int"),
    ],
)
def test_bad_model_config_names_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**triform.presets.PRESETS["gpt2-tiny"], **overrides})


def test_overrides_parse_toml_values() -> None:
    tree = apply_overrides({"model": {}}, ["model.num_layers=3", "model.family=gpt2", "a.b=[1,2]"])
    assert tree == {"model": {"num_layers": 3, "family": "gpt2"}, "a": {"b": [1, 2]}}
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])
    assert from_dict(ModelConfig, {"norm_eps": 1}, "model").norm_eps == 1.0


def test_masks_combine_padding_causal_and_band() -> None:
    padding = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    mask = build_mask(4, 4, key_padding=padding, causal=True, window=2)
    allowed = mask.bias == 0  # (B, 1, Lq, Lk)
    for q in range(4):
        for k in range(4):
            expected = k <= q and q - k < 2
            assert bool(allowed[1, 0, q, k]) == expected
            assert bool(allowed[0, 0, q, k]) == (expected and k < 3)
    # fast paths: no mask at all, or SDPA's own causal flag
    assert build_mask(4, 4).bias is None
    fast = build_mask(4, 4, causal=True, key_padding=torch.ones(2, 4))
    assert fast.bias is None and fast.is_causal
    # one new query over a cache sees every cached key
    assert build_mask(1, 9, causal=True, past_len=8).bias is None
    assert allowed_positions(2, 5, past_len=3, causal=True).tolist() == [
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


def test_fully_masked_rows_stay_finite() -> None:
    mask = build_mask(3, 3, key_padding=torch.tensor([[0, 0, 0]]))
    q = torch.randn(1, 2, 3, 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask.bias)
    assert torch.isfinite(out).all()


def test_local_band_attention_matches_naive_softmax() -> None:
    torch.manual_seed(0)
    config = triform.presets.get("gpt3-tiny", local_window=3, attention_pattern=["local"])
    model = triform.build_model(config).eval()
    attention = model.decoder.layers[0].self_attn
    x = torch.randn(2, 7, config.hidden_size)
    mask = build_mask(7, 7, causal=True, window=3)
    ours = attention(x, mask)
    q, k, v = attention._heads(attention.qkv(x), 3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(config.head_size)
    pos = torch.arange(7)
    allowed = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < 3)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    naive = attention.out((weights @ v).transpose(1, 2).reshape(2, 7, -1))
    torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-6)


def test_gpt3_alternates_dense_and_local_layers() -> None:
    config = triform.presets.get("gpt3-small")
    assert [config.layer_attention(i) for i in range(4)] == ["dense", "local"] * 2
    # with a window shorter than the sequence, the local layer changes the output
    torch.manual_seed(0)
    tiny = triform.presets.get("gpt3-tiny", local_window=2)
    dense = triform.presets.get("gpt3-tiny", local_window=2, attention_pattern=["dense"])
    a, b = triform.build_model(tiny).eval(), triform.build_model(dense).eval()
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 1000, (1, 12))
    assert not torch.allclose(a(ids).logits, b(ids).logits)
    assert torch.allclose(a(ids[:, :2]).logits, b(ids[:, :2]).logits, atol=1e-6)


def test_sinusoidal_table_follows_the_paper() -> None:
    table = sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), 1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)))


def test_rotary_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(qpos: int, kpos: int) -> float:
        cq, sq = rope.cos_sin(torch.tensor([[qpos]]))
        ck, sk = rope.cos_sin(torch.tensor([[kpos]]))
        return (rope.apply(q, cq, sq) * rope.apply(k, ck, sk)).sum().item()

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_relative_buckets_are_monotone_and_bounded() -> None:
    distance = torch.arange(-300, 300)
    both = relative_position_bucket(distance, True, 32, 128)
    causal = relative_position_bucket(distance, False, 32, 128)
    assert both.min() >= 0 and both.max() < 32 and causal.max() < 32
    assert (causal[distance > 0] == 0).all()  # future keys all share bucket 0
    assert (torch.diff(causal[distance <= 0]) <= 0).all()


GENERATIVE = [n for n in TINY if not n.startswith(("bert", "roberta", "albert", "electra"))]


@pytest.mark.parametrize("name", GENERATIVE)
def test_incremental_decoding_matches_full_forward(name: str) -> None:
    torch.manual_seed(0)
    config = triform.presets.get(name, **({"local_window": 3} if name == "gpt3-tiny" else {}))
    model = triform.build_model(config).eval()
    ids = torch.randint(3, 1000, (2, 9))
    if config.form == "decoder":
        full = model(ids).logits
        cache, steps = None, []
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache, steps = out.past_key_values, steps + [out.logits]
        assert cache.length == 9
    else:
        source, mask = torch.randint(3, 1000, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
        full = model(source, mask, ids).logits
        encoded, _ = model.encode(source, mask)
        cache, steps = None, []
        for t in range(ids.shape[1]):
            out = model(
                attention_mask=mask,
                decoder_input_ids=ids[:, t : t + 1],
                encoder_hidden_state=encoded,
                past_key_values=cache,
                use_cache=True,
            )
            cache, steps = out.past_key_values, steps + [out.logits]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_cache_reorder_selects_beams() -> None:
    cache = KVCache.empty(1)
    keys = torch.arange(3.0).view(3, 1, 1, 1)
    cache.append(0, keys, keys)
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.self_kv[0][0].flatten().tolist() == [2.0, 2.0, 0.0]


def test_albert_shares_one_layer_and_factorizes_embeddings() -> None:
    config = triform.presets.get("albert-tiny")
    model = triform.build_model(config)
    assert len(model.encoder.layers) == 1 and model.encoder.num_layers == 2
    assert model.embeddings.token.weight.shape == (1000, 32)
    assert model.embeddings.project.weight.shape == (64, 32)
    unshared = triform.build_model(config.replace(share_layers=False))
    layer = sum(p.numel() for p in model.encoder.layers[0].parameters())
    assert unshared.num_parameters() - model.num_parameters() == layer


def test_tied_embeddings_share_storage() -> None:
    gpt = triform.build_model(triform.presets.get("gpt2-tiny"))
    assert gpt.lm_head.decoder.weight is gpt.embeddings.token.weight
    t5 = triform.build_model(triform.presets.get("t5-tiny"))
    assert t5.encoder_embeddings.token is t5.decoder_embeddings.token


def test_gpt2_scales_residual_projections() -> None:
    torch.manual_seed(0)
    config = triform.presets.get("gpt2-tiny", hidden_size=256, ffn_size=1024, num_layers=8)
    model = triform.build_model(config)
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.decoder.layers[0].ffn.down.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.decoder.layers[0].ffn.up.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_sequence_longer_than_positions_is_a_clear_error() -> None:
    model = triform.build_model(triform.presets.get("gpt2-tiny", max_positions=8))
    with pytest.raises(TriformError, match="longer than the model's 8 positions"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_roberta_positions_skip_padding() -> None:
    from triform.nn import make_position_ids

    config = triform.presets.get("roberta-tiny")
    ids = torch.tensor([[5, 6, 7, 1, 1]])
    assert make_position_ids(config, ids).tolist() == [[2, 3, 4, 1, 1]]
    bart = triform.presets.get("bart-tiny")
    assert make_position_ids(bart, ids, past_len=3).tolist() == [[5, 6, 7, 8, 9]]


def test_positions_from_a_mask_count_real_tokens_of_left_padded_rows() -> None:
    from triform.nn import make_position_ids

    gpt2 = triform.presets.get("gpt2-tiny")
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert make_position_ids(gpt2, ids, mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    # one new token after them: only the last mask column is the new token's
    grown = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    assert make_position_ids(gpt2, ids[:, :1], grown).tolist() == [[3], [5]]


def test_hidden_states_and_heads_have_the_promised_shapes() -> None:
    model = triform.build_model(triform.presets.get("bert-tiny")).eval()
    ids = torch.randint(0, 1000, (3, 11))
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (3, 11, 1000) and out.pair_logits.shape == (3, 2)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    electra = triform.build_model(triform.presets.get("electra-tiny")).eval()
    assert electra(ids).logits.shape == (3, 11)
    bare = electra(ids, compute_logits=False)
    assert bare.logits is None and bare.last_hidden_state.shape == (3, 11, 64)
