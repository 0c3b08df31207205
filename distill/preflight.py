"""Before a model is trusted with a dataset: does its head match the data's labels, is it above chance.

``teacher_preflight`` is what training runs before distilling; compare and export reuse the pieces
(``check_labels`` on every model, ``eval_split`` / ``load`` to evaluate one).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from distill import evaluate as ev
from distill.errors import DistillError
from distill.models.bert import BertPreTrainedModel

log = logging.getLogger(__name__)
ModelRef = BertPreTrainedModel | str | os.PathLike


def split_name(data, split: str | None = None) -> str:
    """The split a TaskData is evaluated on: ``split``, else test if it has one, else validation."""
    name = split or next((s for s in ("test", "validation") if s in data.splits), None)
    if name not in data.splits:
        raise DistillError(f"the data has no {split or 'test/validation'} split; pick one of {list(data.splits)}")
    return name


def eval_split(data, tokenizer=None, split: str | None = None, max_length: int = 128):
    """TaskData or an already tokenized split → (tokenized split, label_names | None, task | None)."""
    if not hasattr(data, "splits"):
        return data, None, None
    name = split_name(data, split)
    if tokenizer is None:
        raise DistillError("raw TaskData needs a tokenizer; pass tokenizer= (e.g. load_tokenizer(teacher_dir))")
    from datasets import DatasetDict

    from distill.data.tokenize import tokenize

    one = dataclasses.replace(data, splits=DatasetDict({name: data.splits[name]}))
    return tokenize(one, tokenizer, max_length=max_length)[name], list(data.label_names), data.task


def load(ref, task: str, threads: int = 1):
    """A model object, a checkpoint dir, or an ``.onnx`` file → (forward, info dict, model | None)."""
    if isinstance(ref, torch.nn.Module):
        return ev.torch_forward(ref), {"runtime": "pytorch"}, ref
    path = Path(ref)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise DistillError(f"{path} does not exist; export the model with formats=[onnx] first")
        return ev.onnx_forward(str(path), threads), {"runtime": "onnxruntime", "path": str(path)}, None
    from distill.models.hub import from_pretrained

    model = from_pretrained(path, task=task)
    return ev.torch_forward(model), {"runtime": "pytorch", "path": str(path)}, model


def check_labels(config, label_names: Sequence[str]) -> str | None:
    """Raise when the head cannot match the data; a warning line when the names look off."""
    n = int(config.num_labels)
    names = [str(config.id2label.get(i, config.id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]
    if n != len(label_names):
        raise DistillError(f"the model predicts {n} labels {names} but the data has {len(label_names)} "
                           f"{list(label_names)}; use a model fine-tuned on this dataset")
    lower, data_lower = [s.lower() for s in names], [str(s).lower() for s in label_names]
    if lower == data_lower:
        return None
    if all(re.fullmatch(r"label_\d+", s) for s in lower):
        return (f"the model's config names its labels {names[:3]}...; assuming they follow the data's order "
                f"{list(label_names)}")
    if sorted(lower) == sorted(data_lower):
        raise DistillError(f"the model orders its labels {names} but the data orders them {list(label_names)}; "
                           "fix the model's config id2label or the data's label order")
    return f"the model's label names {names} differ from the data's {list(label_names)}; assuming the same order"


def preflight_from_predictions(pred: ev.Predictions, config, label_names: Sequence[str],
                               min_kappa: float = 0.1) -> dict:
    """The pre-flight verdict from predictions already made (compare reuses its evaluation)."""
    found = [w for w in [check_labels(config, label_names)] if w]
    scores, base = ev.metrics(pred, label_names), ev.chance(pred)
    key = ev.main_metric(pred.task)
    near = base["kappa"] < min_kappa
    if near:
        found.append(f"TEACHER NEAR CHANCE: {key}={scores[key]:.3f} (majority class {base['majority_rate']:.3f}, "
                     f"Cohen's kappa {base['kappa']:.2f} < {min_kappa}); it was probably never fine-tuned on "
                     "this task, and distilling it teaches the student noise")
    for line in found:
        log.warning("teacher pre-flight: %s", line)
    return {"metrics": scores, **base, "near_chance": near, "min_kappa": min_kappa, "warnings": found}


def teacher_preflight(teacher: ModelRef, data, tokenizer=None, task: str | None = None,
                      label_names: Sequence[str] | None = None, split: str | None = None,
                      batch_size: int = 32, min_kappa: float = 0.1) -> dict:
    """Evaluate the teacher on ``data`` (TaskData or tokenized split), check its label mapping and
    warn loudly when it is near chance (Cohen's κ < ``min_kappa``). Returns the figures and warnings."""
    dataset, names, data_task = eval_split(data, tokenizer, split)
    label_names, task = label_names or names, task or data_task or getattr(teacher, "task", None)
    if label_names is None or task is None:
        raise DistillError("a tokenized split needs label_names= and task= (or pass TaskData)")
    forward, _, model = load(teacher, task)
    if model is None:
        raise DistillError("the teacher must be a PyTorch model or checkpoint dir, not an ONNX file")
    check_labels(model.config, label_names)  # before spending time on predictions
    return preflight_from_predictions(ev.predict(forward, dataset, task, batch_size), model.config,
                                      label_names, min_kappa)
