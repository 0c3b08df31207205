"""Several fine-tuned teachers at once (TextBrewer's MultiTeacherDistiller): one teacher whose logits are
the members' weighted mean.

    z = Σ_k w_k · z_k / Σ_k w_k        z_k: member k's logits (B, C) or (B, T, C), in the data's label order

Averaging logits (not probabilities) is TextBrewer's rule; the loss then softens z with its temperature.
Members read one encoding of the text: BERT checkpoints of one vocabulary (the student's), or teachers of
another architecture (``teacher=hf_any``) sharing one tokenizer. They are loaded as ``teacher=hf_dir`` /
``teacher=hf_any`` load them, so label names are matched per member. A student built from the ensemble
(``student=from_teacher``, copied or projected embeddings) is built from its first member. The ensemble
gives logits only: layer losses need one teacher.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.models import foreign, hub
from distill.outputs import MODEL_INPUTS, ModelOutputs

log = logging.getLogger(__name__)


class EnsembleTeacher(nn.Module):
    """``forward(**inputs)`` → ``ModelOutputs(logits=Σ w_k z_k / Σ w_k)``; ``config``: the first member's
    (labels, vocab), named after all members."""

    logits_only = True

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]) / float(sum(weights)))
        first = members[0]
        self.task = getattr(first, "task", None)
        self.config = copy.deepcopy(first.config)
        self.config.name_or_path = ", ".join(m.config.name_or_path for m in members)
        self.input_keys = getattr(first, "input_keys", MODEL_INPUTS)
        self.own_tokenizer = foreign.is_foreign(first)
        for name in ("tokenizer_path", "student_tokenizer"):  # members of another architecture: their tokenizer
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))
        self.newly_initialised = sorted({k for m in members for k in getattr(m, "newly_initialised", [])})

    @property
    def primary(self) -> nn.Module:
        """The member a student built from the ensemble is built from (not a second registered submodule)."""
        return self.members[0]

    def forward(self, **inputs: Tensor) -> ModelOutputs:
        wanted = sorted(k for k in ("output_hidden_states", "output_attentions", "output_qkv") if inputs.pop(k, None))
        if wanted:
            raise DistillError(f"an ensemble of teachers gives logits only, not {wanted[0]}; distil from it with "
                               "logits losses (losses=logits), or name one teacher for layer losses")
        logits = torch.stack([m(**inputs).logits.float() for m in self.members])  # (K, B, C) or (K, B, T, C)
        weights = self.weights.view(-1, *([1] * (logits.dim() - 1)))
        return ModelOutputs(logits=(weights * logits).sum(0))


def ensemble(members: Sequence[str | os.PathLike], task: str = "sequence", id2label: dict | None = None,
             weights: Sequence[float] | None = None, student_tokenizer: str | None = None,
             num_labels: int | None = None) -> EnsembleTeacher:
    """Fine-tuned checkpoint dirs (or hub ids) → one teacher averaging their logits (``weights``: one
    per member, default equal)."""
    members = [members] if isinstance(members, str | os.PathLike) else list(members or [])
    if task not in ("sequence", "token"):
        raise DistillError(f"an ensemble of teachers distils sequence or token tasks, not task={task!r}")
    if len(members) < 2:
        raise DistillError(f"teacher.members={members}: an ensemble needs two or more fine-tuned checkpoint dirs; "
                           "for one teacher use teacher=hf_dir (BERT) or teacher=hf_any")
    try:
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    except (TypeError, ValueError):
        weights = [math.nan]
    if len(weights) != len(members) or any(not 0 <= w < math.inf for w in weights) or sum(weights) <= 0:
        raise DistillError(f"teacher.weights={weights}: give one non-negative weight per member "
                           f"({len(members)}), not all zero")
    kinds = {str(m): _is_bert(m) for m in members}
    if len(set(kinds.values())) > 1:
        raise DistillError(f"teacher.members mixes BERT and other architectures ({kinds}); members read one "
                           "encoding of the text: use teachers of one kind and one tokenizer")
    labels = {"id2label": id2label} if id2label is not None else {"num_labels": num_labels}
    def load(member):
        if kinds[str(member)]:
            return hub.from_pretrained(member, task=task, **labels)
        return foreign.from_pretrained(member, task=task, student_tokenizer=student_tokenizer, **labels)

    loaded = [load(members[0])]
    with torch.random.fork_rng():  # the first member draws what one teacher would: a run from the ensemble and
        loaded += [load(m) for m in members[1:]]  # one from member A alone build the same student, same dropout
    _one_tokenizer(loaded)
    log.info("teacher: an ensemble of %d (%s), weights %s", len(loaded), ", ".join(map(str, members)), weights)
    return EnsembleTeacher(loaded, weights).eval()


def _is_bert(member) -> bool:
    config = hub.resolve(member) / "config.json"
    if not config.is_file():
        raise DistillError(f"{member}: no config.json; each teacher.members entry is a fine-tuned checkpoint dir")
    return json.loads(config.read_text()).get("model_type") == "bert"


def _one_tokenizer(members: list[nn.Module]) -> None:
    """Every member must read the same ids: one tokenizer class and vocabulary."""
    paths = [getattr(m, "tokenizer_path", m.config.name_or_path) for m in members]
    tokenizers = [hub.load_tokenizer(p) for p in paths]
    sample = "Hello World, naïve café: 3.5% off!"  # normalisation (case, accents) beyond the vocabulary
    kinds = [(type(t).__name__, t.get_vocab(), t(sample)["input_ids"]) for t in tokenizers]
    other = next((p for p, k in zip(paths, kinds) if k != kinds[0]), None)
    if other is not None:
        raise DistillError(f"teacher.members read the text with different tokenizers ({paths[0]} vs {other}); an "
                           "ensemble's members share one tokenizer (e.g. one model fine-tuned with two seeds)")
