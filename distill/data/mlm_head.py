"""A masked-LM head for an encoder that ships without one, fitted once on the corpus's own text.

The packaged all-MiniLM-L6-v2 has no ``cls.predictions`` weights, so contextual word replacement
(TinyBERT's augmentation) has no masked-LM to ask. ``masked_lm`` gives it one: BERT's head
(dense → GELU → LayerNorm → decoder tied to the word embeddings + bias) trained with BERT's masking
(15%; 80% [MASK] / 10% random / 10% kept, transformers' ``DataCollatorForLanguageModeling``) while the
encoder and the word embeddings stay frozen (``train_layers`` > 0 also trains the top layers). Only
the masked positions go through the decoder, so a step costs one encoder forward.

The trained tensors are cached in ``$DISTILL_CACHE/mlm/<fingerprint>`` (safetensors, temp file +
rename); the fingerprint covers the encoder's weights, the tokenizer, the texts and every setting,
so the head is fitted once per corpus and reused by every seed and recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import DataCollatorForLanguageModeling

from distill.data.corpus import cache_dir
from distill.data.tokenize import tokenizer_key
from distill.errors import DistillError
from distill.models.heads import BertForMaskedLM
from distill.models.hub import saved_tokenizer, weights_digest
from distill.outputs import IGNORE_INDEX

log = logging.getLogger(__name__)
VERSION = 2  # bump when the fitting below changes, so old heads are not reused


@dataclass
class MLMFit:
    """How the head is fitted. ``epochs=0`` keeps the checkpoint's own head (e.g. bert-base-uncased)."""

    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 64
    max_length: int = 64
    train_layers: int = 2  # top encoder layers trained with the head (0: encoder frozen)
    mlm_probability: float = 0.15
    seed: int = 0


def fingerprint(model: torch.nn.Module, tokenizer, texts: list[str], fit: MLMFit) -> str:
    """The cache key of a fitted head (always fitted in fp32: under bf16 autocast the fit collapsed)."""
    settings = json.dumps(asdict(fit), sort_keys=True)
    h = hashlib.sha256(f"{VERSION}|{settings}|{tokenizer_key(tokenizer)}|{weights_digest(model.bert)}".encode())
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:20]


def _trained(model: BertForMaskedLM, train_layers: int) -> dict[str, torch.nn.Parameter]:
    """The parameters the fit updates: the head (not its tied decoder) and the top ``train_layers``."""
    n = model.config.num_hidden_layers
    if not 0 <= train_layers <= n:
        raise DistillError(f"augment mlm.train_layers={train_layers} must be in 0..{n} (the encoder's layers)")
    top = tuple(f"bert.encoder.layer.{i}." for i in range(n - train_layers, n))
    return {name: p for name, p in model.named_parameters()
            if (name.startswith("cls.") and "decoder" not in name) or name.startswith(top)}


def masked_positions_loss(model: BertForMaskedLM, batch: dict, frozen_encoder: bool) -> tuple[torch.Tensor, int, int]:
    """CE over masked positions only; returns (loss, correct top-1, masked count)."""
    labels = batch["labels"]  # (B, T), -100 where not masked
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_encoder):
        hidden = model.bert(batch["input_ids"], batch["attention_mask"]).last_hidden_state  # (B, T, H)
    keep = labels != IGNORE_INDEX
    logits = model.cls.predictions(hidden[keep])  # (N, V)
    targets = labels[keep]  # (N,)
    loss = F.cross_entropy(logits, targets)
    return loss, int((logits.argmax(-1) == targets).sum()), int(targets.numel())


def _batches(tokenizer, texts: list[str], fit: MLMFit, generator: torch.Generator, shuffle: bool):
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=fit.mlm_probability)
    order = torch.randperm(len(texts), generator=generator).tolist() if shuffle else range(len(texts))
    order = list(order)
    for start in range(0, len(order), fit.batch_size):
        chunk = [texts[i] for i in order[start:start + fit.batch_size]]
        rows = [{"input_ids": ids} for ids in tokenizer(chunk, truncation=True, max_length=fit.max_length)["input_ids"]]
        yield collate(rows)  # masks drawn from torch's global RNG, seeded below


def held_out_accuracy(model: BertForMaskedLM, tokenizer, texts: list[str], fit: MLMFit) -> float:
    """Top-1 accuracy at BERT-masked positions of ``texts`` (same seed: same masks every call)."""
    correct = total = 0
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(fit.seed + 1)
        for batch in _batches(tokenizer, texts, fit, torch.Generator(), shuffle=False):
            batch = {k: v.to(_device(model)) for k, v in batch.items()}
            _, c, n = masked_positions_loss(model, batch, frozen_encoder=True)
            correct, total = correct + c, total + n
    return correct / max(total, 1)


def reset_head(model: BertForMaskedLM, seed: int) -> None:
    """The head's transform and bias drawn afresh from ``seed`` (HF's init), whatever the global RNG
    holds: the fitted head, and so every variant, is then the same on every machine and trainer seed.
    The decoder is tied to the word embeddings and stays as it is."""
    head = model.cls.predictions
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        torch.nn.init.normal_(head.transform.dense.weight, 0.0, model.config.initializer_range)
        torch.nn.init.zeros_(head.transform.dense.bias)
        torch.nn.init.ones_(head.transform.LayerNorm.weight)
        torch.nn.init.zeros_(head.transform.LayerNorm.bias)
        torch.nn.init.zeros_(head.bias)


def fit_head(model: BertForMaskedLM, tokenizer, texts: list[str], fit: MLMFit) -> None:
    """Train a fresh head (and ``train_layers`` top layers) in place with BERT's masking on ``texts``."""
    reset_head(model, fit.seed)
    params = _trained(model, fit.train_layers)
    for name, p in model.named_parameters():
        p.requires_grad_(name in params)
    optimizer = torch.optim.AdamW(params.values(), lr=fit.lr, weight_decay=0.01)
    steps = fit.epochs * -(-len(texts) // fit.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(steps, 1)))
    generator = torch.Generator().manual_seed(fit.seed)
    model.train()
    with torch.random.fork_rng(devices=[]), tqdm(total=steps, desc="fitting the masked-LM head") as bar:
        torch.manual_seed(fit.seed)
        for _ in range(fit.epochs):
            for batch in _batches(tokenizer, texts, fit, generator, shuffle=True):
                batch = {k: v.to(_device(model)) for k, v in batch.items()}
                loss, _, _ = masked_positions_loss(model, batch, frozen_encoder=fit.train_layers == 0)
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval().requires_grad_(False)


def headless(model) -> bool:
    """The checkpoint ``model`` was loaded from had no masked-LM head (``from_pretrained`` initialised it)."""
    return any(k.startswith("cls.predictions.") for k in getattr(model, "newly_initialised", None) or ())


def own_tokenizer(model):
    """The tokenizer saved in the dir ``model`` was loaded from (a hub id's download dir too), or None (a model
    built in code, a dir without tokenizer files)."""
    try:
        return saved_tokenizer(str(getattr(model.config, "name_or_path", "") or ""))
    except DistillError as e:
        raise DistillError(f"the masked-LM's own tokenizer: {e}") from None


def check_masked_lm(model, tokenizer, fit: MLMFit | None = None) -> None:
    """``model`` can rank ``tokenizer``'s ids: a masked-LM (task='mlm') whose vocabulary is the tokenizer's size
    (and, where its dir saved a tokenizer, the same ids), and, when ``fit`` keeps the checkpoint's head
    (``epochs=0``), one the checkpoint has."""
    if not isinstance(model, BertForMaskedLM):
        raise DistillError(f"augment.mlm.model must build a masked-LM model (task='mlm'), not {type(model).__name__}")
    if model.config.vocab_size != len(tokenizer):
        raise DistillError(f"augment.mlm.model has a vocabulary of {model.config.vocab_size} tokens but the teacher's "
                           f"tokenizer {len(tokenizer)}; give a masked-LM with the teacher's vocabulary")
    own = own_tokenizer(model)
    if own is not None and own.get_vocab() != tokenizer.get_vocab():  # same size, other ids: silently wrong words
        raise DistillError(f"augment.mlm.model's tokenizer ({model.config.name_or_path}) gives other ids than the "
                           "teacher's to the same tokens; give a masked-LM with the teacher's vocabulary")
    if fit is not None and fit.epochs == 0 and headless(model):
        raise DistillError("mlm.epochs=0 keeps the checkpoint's own masked-LM head, but this checkpoint has none "
                           "(its head would be random); fit one: data.augment.mlm.epochs "
                           "(or data.mlm.teacher_head.epochs) >= 1")


def masked_lm(model: BertForMaskedLM, tokenizer, texts: list[str], held_out: list[str], fit: MLMFit,
              key: str | None = None) -> BertForMaskedLM:
    """``model`` with a fitted (or cached) masked-LM head; logs its held-out top-1 accuracy.
    ``key``: ``fingerprint(model, tokenizer, texts, fit)`` when the caller has it already."""
    check_masked_lm(model, tokenizer, fit)
    if fit.epochs == 0:
        log.info("masked-LM: the checkpoint's own head (mlm.epochs=0)")
        return model.eval().requires_grad_(False)
    if not texts:
        raise DistillError("augment: no training text to fit the masked-LM head on")
    path = cache_dir("mlm") / (key or fingerprint(model, tokenizer, texts, fit))
    weights, meta = path / "head.safetensors", path / "meta.json"
    if weights.is_file() and meta.is_file():
        state = load_file(str(weights))
        model.load_state_dict(state, strict=False)
        info = json.loads(meta.read_text())
        log.info("masked-LM head from cache %s (held-out top-1 accuracy %.3f)", path, info["held_out_accuracy"])
        return model.eval().requires_grad_(False)
    cache_dir("mlm", write=True)  # before the fit, not after it
    fit_head(model, tokenizer, texts, fit)
    accuracy = held_out_accuracy(model, tokenizer, held_out or texts[:500], fit)
    trained = _trained(model, fit.train_layers)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in trained}
    path.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path, suffix=".tmp")
    os.close(fd)
    save_file(state, tmp)
    os.replace(tmp, weights)  # readers see the whole file or none
    meta.write_text(json.dumps({"held_out_accuracy": accuracy, "texts": len(texts), **asdict(fit)}))
    log.info("masked-LM head fitted on %d texts: held-out top-1 accuracy %.3f (cached in %s)",
             len(texts), accuracy, path)
    return model


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
