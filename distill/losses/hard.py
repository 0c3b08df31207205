"""Cross-entropy on gold labels: fine-tuning a teacher, or mixed into distillation (Hinton's α)."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor
from transformers import BertConfig

from distill.errors import DistillError
from distill.losses.base import DistillLoss, Row
from distill.losses.masking import IGNORE_INDEX, field, real_tokens
from distill.outputs import ModelOutputs


class HardCrossEntropy(DistillLoss):
    """Cross-entropy of the student's logits against ``batch["labels"]``; needs no teacher.

    L = −(1/N) Σ_n log softmax(z[n])[y_n], over the last axis (classes), where the rows n are
      * sequence tasks: logits (B, C), labels (B,) — rows with label −100 are skipped;
      * token tasks: logits (B, T, C), labels (B, T) — only real tokens with label != −100;
      * with ``batch["gold"]`` (B,) (an augmented split), only rows with gold = 1: the other rows are
        variants the teacher labels, not a human.
    Regression (num_labels = 1, float labels (B,)): L = (1/B) Σ (z[b, 0] − y_b)².
    """

    needs = frozenset({"logits"})
    uses_teacher = False

    def __init__(self, weight=1.0):
        super().__init__(weight)
        self._labels_checked = False  # label range is checked once: a per-step check would sync the GPU

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: Mapping[str, Tensor]) -> Tensor:
        logits = field(student, "logits", self.name, "student").float()
        labels = batch.get("labels")
        if labels is None:
            raise DistillError(
                "HardCrossEntropy needs batch['labels'] but the data has none; use labelled data or set "
                "this term's weight to 0"
            )
        labels = labels.to(logits.device)
        gold = batch.get("gold")
        gold = None if gold is None else gold.to(logits.device).bool()  # (B,)
        if labels.is_floating_point():
            if logits.shape[-1] != 1 or logits.dim() != 2:
                raise DistillError(
                    f"float labels mean regression, but the logits are {tuple(logits.shape)}; set num_labels=1 "
                    f"for regression or give integer class labels"
                )
            if gold is not None:
                logits, labels = logits[gold], labels[gold]
            return F.mse_loss(logits.squeeze(-1), labels.float()) if labels.numel() else logits.sum() * 0
        if labels.shape != logits.shape[:-1]:
            raise DistillError(
                f"labels {tuple(labels.shape)} do not fit logits {tuple(logits.shape)}; sequence tasks need "
                f"labels (B,), token tasks labels (B, T) — check the data's task"
            )
        keep = labels != IGNORE_INDEX  # (B,) or (B, T)
        if logits.dim() == 3:
            keep = keep & real_tokens(student, batch, logits)
        if gold is not None:
            keep = keep & (gold[:, None] if keep.dim() == 2 else gold)
        rows, targets = logits[keep], labels[keep]  # (N, C), (N,)
        self._check_range(targets, logits.shape[-1])
        return F.cross_entropy(rows, targets, reduction="sum") / max(targets.numel(), 1)

    def _check_range(self, targets: Tensor, n_classes: int) -> None:
        if self._labels_checked or targets.numel() == 0:
            return
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= n_classes:
            raise DistillError(
                f"labels run {low}..{high} but the model has {n_classes} classes; set num_labels to the "
                f"data's label count (labels must be 0..num_labels-1, or -100 to ignore)"
            )
        self._labels_checked = True

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        return [("logits", "gold labels", f"(…, {student_config.num_labels}) vs labels", "-")]
