"""HuggingFace ``transformers`` checkpoints <-> triform models, both ways, with the same outputs.

::

    m = hf.from_hf(hf_model)   # a transformers model object -> triform model, same weights
    hf_model = hf.to_hf(m)     # and back (needs transformers)
    m = hf.load("dir")         # an HF checkpoint folder; works without transformers
    hf.save(m, "dir")          # a folder from_pretrained loads; works without transformers
    hf.save_electra(discriminator, "dir")  # ElectraForPreTraining (a generator: ...ForMaskedLM)

    from triform.interop.hf.tasks import load_finetuned, save_finetuned
    save_finetuned(finetune.load_finetuned("runs/ft"), "dir")  # ...ForSequenceClassification
    ft = load_finetuned("dir")  # an HF task-head folder -> a fine-tuned model (predict)

Families (HF ``model_type``) and classes: see :data:`FAMILIES` — BERT, RoBERTa, ALBERT, ELECTRA,
GPT (``openai-gpt``), GPT-2, T5 (v1.0 and v1.1) and BART, each with its base model and its
pretraining / language-modelling head classes; task-head classes (sequence and token
classification, question answering, conditional generation) through
:mod:`~triform.interop.hf.tasks`.

**How.** A family is declarative: a table of config :class:`Field` s (HF key <-> ModelConfig
field), the HF classes it supports with the head settings each one implies (:class:`Arch`), and
tables of name :class:`Rule` s saying which HF module(s) hold each triform module's weights. One
generic engine applies the tables in both directions:

* triform fuses q, k, v into one ``qkv`` linear (cross-attention: k, v into ``kv``); a rule lists
  the HF parts, concatenated along the output dimension on load and split on export;
* GPT and GPT-2 use ``Conv1D``, whose weight is the transpose of ``nn.Linear``'s;
* BART's ``final_logits_bias`` buffer, shape (1, V), is triform's LM-head bias, shape (V,).

**The HF class** a model came from is kept as the plain attribute ``model.hf_architecture``
(set by :func:`from_hf` and :func:`load`). :func:`save` and :func:`to_hf` write that class back;
without the attribute (a model trained in triform) the class is inferred from the config's heads.
Export refuses a config HF cannot express (checked by converting the HF config back).

**Strictness.** A missing tensor, a tensor of the wrong shape, or a key no rule of the family
knows raises :class:`~triform.errors.TriformError` naming the key. Keys the family knows but the
chosen class does not use (the NSP head in a checkpoint loaded as ``BertForMaskedLM``) are
skipped, as transformers skips them. A tied LM head whose checkpoint values differ from the
embedding is untied, as transformers does. Weights are loaded as float32; :func:`load` returns
the model in eval mode.

**Layout.** :mod:`~triform.interop.hf.rules` (the declarations), :mod:`~.families` (the tables
of each family), :mod:`~.engine` (applying them to configs and state dicts), :mod:`~.files`
(checkpoint folders), :mod:`~.tokenizer` (the tokenizer files ``AutoTokenizer`` reads); this
module is their public API. :mod:`~.tasks` (fine-tuned models <-> task-head classes) builds on
:mod:`triform.finetune`, which itself loads HF bodies through this package, so it is
imported on its own (``from triform.interop.hf.tasks import ...``), not from here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from triform.errors import TriformError
from triform.interop.hf.engine import (
    build,
    config_from_hf,
    config_to_hf,
    export_state,
    family_named,
)
from triform.interop.hf.families import FAMILIES
from triform.interop.hf.files import read_config, read_weights, write_checkpoint
from triform.interop.hf.tokenizer import save_tokenizer_files
from triform.models import TransformerModel

__all__ = [
    "FAMILIES",
    "config_from_hf",
    "config_to_hf",
    "from_hf",
    "load",
    "read_config",
    "read_weights",
    "save",
    "save_electra",
    "save_tokenizer_files",
    "to_hf",
]


def from_hf(hf_model: torch.nn.Module) -> TransformerModel:
    """A triform model with the weights of a ``transformers`` model object.

    Supported classes: see :data:`FAMILIES`. The result is on the HF model's device, in its
    train/eval mode, and remembers the class as ``model.hf_architecture``.
    """
    config = getattr(hf_model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TriformError(f"{type(hf_model).__name__} is not a transformers model")
    state = hf_model.state_dict()
    model = build(config.to_dict(), type(hf_model).__name__, state, copy=True)
    device = next(hf_model.parameters()).device
    return model.to(device).train(hf_model.training)


def to_hf(model: TransformerModel) -> torch.nn.Module:
    """The ``transformers`` model (class ``model.hf_architecture`` or inferred from the heads)
    with the weights of a triform model. Needs transformers installed."""
    try:
        import transformers
    except ImportError:
        raise TriformError("hf.to_hf needs the transformers package") from None
    hf_config, state = export_state(model)
    architecture = hf_config["architectures"][0]
    config = transformers.AutoConfig.for_model(**hf_config)
    hf_model = getattr(transformers, architecture)(config)
    if not model.config.tie_embeddings:  # transformers 5 ties T5's head regardless
        head, embedding = hf_model.get_output_embeddings(), hf_model.get_input_embeddings()
        if head is not None and head.weight is embedding.weight:
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
    result = hf_model.load_state_dict(state, strict=False)
    loaded = {id(t) for k, t in hf_model.state_dict(keep_vars=True).items() if k in state}
    everything = hf_model.state_dict(keep_vars=True)
    untouched = [k for k in result.missing_keys if id(everything[k]) not in loaded]
    if result.unexpected_keys or untouched:
        key = (result.unexpected_keys or untouched)[0]
        raise TriformError(f"{architecture} does not match the exported weights at {key}")
    return hf_model.to(model.device).train(model.training)


def save(model: TransformerModel, directory: str | Path, architecture: str | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` that ``transformers``' ``from_pretrained``
    loads as ``architecture`` (default: ``model.hf_architecture``, or the class the heads
    imply). No transformers needed.
    """
    hf_config, state = export_state(model, architecture)
    return write_checkpoint(directory, hf_config, state, next(model.parameters()).dtype)


# ELECTRA's two pretrained models and the classes that hold them
ELECTRA_CLASSES = {"rtd": "ElectraForPreTraining", "mlm": "ElectraForMaskedLM"}


def save_electra(model: TransformerModel, directory: str | Path) -> Path:
    """Write one model of an ELECTRA pair: the discriminator (replaced-token-detection head)
    as ``ElectraForPreTraining``, the generator (MLM head) as ``ElectraForMaskedLM``. The two
    share their embeddings in triform; each folder holds a full copy, as HF's do."""
    config = model.config
    if config.family != "electra":
        raise TriformError(f"save_electra takes an ELECTRA model, not a {config.family} model")
    architecture = ELECTRA_CLASSES.get(config.encoder_head)
    if architecture is None:
        raise TriformError(
            f"an ELECTRA model with encoder_head={config.encoder_head!r} is neither a "
            "discriminator (rtd) nor a generator (mlm)"
        )
    return save(model, directory, architecture)


def load(directory: str | Path, architecture: str | None = None) -> TransformerModel:
    """A triform model (eval mode, float32) from an HF checkpoint folder: ``config.json`` plus
    ``model.safetensors`` (or sharded ``model.safetensors.index.json``; else
    ``pytorch_model.bin``, read with ``weights_only=True``). No transformers needed.

    ``architecture`` overrides the class named in config.json (e.g. "BertModel" to load only
    the body of a ``BertForPreTraining`` checkpoint).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TriformError(f"no such checkpoint folder: {directory}")
    hf_config = read_config(directory)
    family = family_named(hf_config.get("model_type"))
    if architecture is None:
        # without a class name, load the body (what AutoModel does); base models come last
        architecture = (hf_config.get("architectures") or list(family.architectures)[-1:])[0]
    model = build(hf_config, architecture, read_weights(directory))
    return model.eval()
