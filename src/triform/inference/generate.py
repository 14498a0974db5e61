"""Text generation with the KV cache: greedy decoding and sampling (temperature, top-k,
top-p) for decoders and encoder-decoders, over batches of prompts of different lengths."""

from __future__ import annotations

import torch

from triform.models import DecoderModel, EncoderDecoderModel, TransformerModel
from triform.nn.cache import KVCache


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the ``top_k`` best tokens and the smallest set whose probability reaches
    ``top_p``; the rest get -inf. (B, V) -> (B, V)"""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keeps the first token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _next_token(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:  # (B, V) -> (B,)
    if not do_sample:
        return logits.argmax(-1)
    logits = filter_logits(logits / max(temperature, 1e-6), top_k, top_p)
    probs = logits.float().softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: TransformerModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue ``input_ids`` (B, L) by up to ``max_new_tokens`` tokens.

    Decoders: prompts are left-padded (``attention_mask`` 0 on padding) and the result is
    prompt + new tokens, as ``transformers`` lays it out. Encoder-decoders: ``input_ids`` is
    the source and the result is the decoder sequence starting with the start token.
    Finished rows (after ``eos_token_id``) are filled with ``pad_token_id``.
    """
    was_training = model.training
    model.eval()
    config = model.config
    eos = eos_token_id if eos_token_id is not None else config.eos_token_id
    pad = pad_token_id if pad_token_id is not None else (config.pad_token_id or eos or 0)
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    sample = dict(
        do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
    )

    if isinstance(model, EncoderDecoderModel):
        encoded, _ = model.encode(input_ids, attention_mask)
        start = config.decoder_start_token_id if config.decoder_start_token_id is not None else pad
        sequence = torch.full((batch, 1), start, dtype=torch.long, device=input_ids.device)
        cache = KVCache.empty(config.decoder_layers)
        step_input = sequence
        for _ in range(max_new_tokens):
            out = model(
                attention_mask=attention_mask,
                decoder_input_ids=step_input,
                encoder_hidden_state=encoded,
                past_key_values=cache,
                use_cache=True,
            )
            token = _next_token(out.logits[:, -1], **sample)
            token = torch.where(finished, torch.full_like(token, pad), token)
            sequence = torch.cat([sequence, token[:, None]], dim=1)
            finished |= token == eos if eos is not None else finished
            if bool(finished.all()):
                break
            step_input = token[:, None]
    elif isinstance(model, DecoderModel):
        sequence, mask = input_ids, attention_mask
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = KVCache.empty(config.num_layers)
        out = model(
            input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        for step in range(max_new_tokens):
            token = _next_token(out.logits[:, -1], **sample)
            token = torch.where(finished, torch.full_like(token, pad), token)
            sequence = torch.cat([sequence, token[:, None]], dim=1)
            finished |= token == eos if eos is not None else finished
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            out = model(
                token[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
    else:
        raise TypeError(f"{type(model).__name__} cannot generate: it has no decoder")
    model.train(was_training)
    return sequence
