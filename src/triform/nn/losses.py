"""Token losses shared by pretraining, fine-tuning and evaluation.

``IGNORE_INDEX`` marks labels that do not count, as in ``torch.nn.functional.cross_entropy``
and HuggingFace.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triform.runtime.packed import onednn_linear
from triform.runtime.precision import compute_dtype

IGNORE_INDEX = -100

Counts = dict[str, torch.Tensor]  # loss term -> how many items it averages over (a () tensor)


def loss_share(
    mean: torch.Tensor, term: str, counts: Counts, totals: Counts | None
) -> torch.Tensor:
    """A batch's share of one loss term of its optimizer step.

    ``mean`` is the term averaged over the batch's own ``counts[term]`` items; the share is
    their sum divided by the step's count over every micro-batch and process,
    ``totals[term]`` (see :class:`triform.train.trainer.Trainer`). The shares of a step add
    up to its loss however the step is split. Without ``totals`` (evaluation, a batch
    alone) the mean itself. No host sync.
    """
    if totals is None:
        return mean
    return mean * (counts[term] / totals[term].clamp(min=1))


def labelled(labels: torch.Tensor) -> torch.Tensor:
    """How many of ``labels`` count (are not ``IGNORE_INDEX``): a () tensor."""
    return (labels != IGNORE_INDEX).sum()


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over the labels that are not ``IGNORE_INDEX``.

    logits: (..., V); labels: (...). Zero (not NaN) when no label counts; no host sync.
    """
    labels = labels.reshape(-1)
    total = F.cross_entropy(
        logits.reshape(labels.numel(), -1).float(),
        labels,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


# Rows of logits one chunk of :func:`linear_cross_entropy` holds: 2**25 fp32 values (128 MiB).
LOGITS_PER_CHUNK = 2**25


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross entropy of ``hidden @ weight.T + bias`` against ``labels``, computed in
    chunks of rows so that the (N, V) logits never exist whole.

    hidden: (N, H); weight: (V, H); bias: (V,) or None; labels: (N,), ``IGNORE_INDEX`` rows
    not counted. Returns ``(loss, predictions)``: the mean loss over counted rows (zero when
    none counts) and the (N,) argmax of each row's logits (no gradient; for accuracy).
    ``chunk_rows``: rows per chunk (default: ``LOGITS_PER_CHUNK // V``).

    The same value as ``token_cross_entropy(F.linear(hidden, weight, bias), labels)``, with
    the same matmul count: when a gradient is needed, each chunk's gradients with respect to
    ``hidden``, ``weight`` and ``bias`` are computed in the forward pass from the chunk's
    logits (the loss is a scalar, so backward only scales them), as in Liger-Kernel's fused
    linear cross entropy. Under autocast the matmuls run in the autocast dtype and the
    softmax in fp32.
    """
    if chunk_rows is None:
        chunk_rows = max(1, LOGITS_PER_CHUNK // weight.shape[0])
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not needs_grad:
        with torch.no_grad():
            total, predictions, _ = _chunked_forward(hidden, weight, bias, labels, chunk_rows)
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1), predictions
    loss, predictions = _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows)
    return loss, predictions


def _chunked_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_rows: int,
    grads: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """Summed loss, (N,) predictions and, with ``grads``, the gradients of the *mean* loss
    with respect to (hidden, weight, bias)."""
    rows = labels.shape[0]
    counted = labels != IGNORE_INDEX  # (N,)
    count = counted.sum().clamp(min=1)
    total = hidden.new_zeros((), dtype=torch.float32)
    predictions = torch.empty_like(labels)
    dtype = compute_dtype(hidden)  # cast the weight once, not once per chunk
    w = weight.to(dtype)
    b = bias.to(dtype) if bias is not None else None
    grad_hidden = torch.empty_like(hidden) if grads else None
    grad_weight: torch.Tensor | None = None  # (V, H) fp32, from the first chunk on
    grad_bias: torch.Tensor | None = None
    for start in range(0, rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        h, y, keep = hidden[start:stop].to(dtype), labels[start:stop], counted[start:stop]
        logits = onednn_linear(h, w, b).float()  # (n, V); no autograd in here
        top, predictions[start:stop] = logits.max(-1)  # (n,) each: one pass for both
        safe = y.clamp(min=0).unsqueeze(1)
        target = logits.gather(1, safe).squeeze(1)
        # log-sum-exp in place: the (n, V) buffer becomes exp(logits - max), no temporary
        sums = logits.sub_(top.unsqueeze(1)).exp_().sum(-1)  # (n,)
        total = total + ((top + sums.log() - target) * keep).sum()
        if not grads:
            continue
        # d(mean loss)/d logits = (softmax - onehot) / count, zero on ignored rows
        weight_of_row = keep.to(logits.dtype) / count  # (n,)
        g = logits.mul_((weight_of_row / sums).unsqueeze(1))
        g.scatter_add_(1, safe, -weight_of_row.unsqueeze(1))  # (n, V)
        gc = g.to(dtype)
        grad_hidden[start:stop] = gc @ w  # (n, H)
        if grad_weight is None:
            grad_weight = (gc.t() @ h).float()  # (V, H)
        elif dtype == torch.float32:
            grad_weight.addmm_(gc.t(), h)  # in place: no (V, H) temporary
        else:
            grad_weight.add_(gc.t() @ h)
        if bias is not None:
            grad_bias = g.sum(0) if grad_bias is None else grad_bias.add_(g.sum(0))
    out_grads: tuple[torch.Tensor | None, ...] = ()
    if grads:
        if grad_weight is None:  # no rows at all
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        out_grads = (
            grad_hidden,
            grad_weight.to(weight.dtype),
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
        )
    return total, predictions, out_grads


class _LinearCrossEntropy(torch.autograd.Function):
    """:func:`linear_cross_entropy` with gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows):  # type: ignore[override]
        total, predictions, grads = _chunked_forward(
            hidden, weight, bias, labels, chunk_rows, grads=True
        )
        ctx.save_for_backward(*(g for g in grads if g is not None))
        ctx.has_bias = bias is not None
        ctx.spent = False  # the saved gradients are scaled (and added to) in place
        ctx.mark_non_differentiable(predictions)
        count = (labels != IGNORE_INDEX).sum().clamp(min=1)
        return total / count, predictions

    @staticmethod
    def backward(ctx, grad_loss, _grad_predictions):  # type: ignore[override]
        if ctx.spent:
            raise RuntimeError(
                "the fused vocabulary loss gives its gradients once: compute the loss again "
                "instead of calling backward twice on it (retain_graph)"
            )
        ctx.spent = True
        grads = list(ctx.saved_tensors)
        # A loss backpropagated as it is (the usual case) needs no scaling: on a CPU, where
        # reading the scale costs no device sync, that saves a pass over the (V, H) gradient.
        if grad_loss.device.type != "cpu" or grad_loss.item() != 1.0:
            # scaled in place: the saved gradients are used once, a (V, H) copy is memory
            grads = [g.mul_(grad_loss.to(g.dtype)) for g in grads]
        grad_bias = grads[2] if ctx.has_bias else None
        return grads[0], grads[1], grad_bias, None, None
