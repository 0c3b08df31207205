"""BERT's pre-training objectives as loss terms: masked-LM on gold tokens, masked-LM KD, next sentence.

The batch comes from ``distill.data.masking.MaskingCollator``: ``labels`` (B, T) hold the original id
at the masked positions and −100 elsewhere; ``mlm_positions`` (B, T) = labels != −100, so both models
decode only those N positions and return masked-LM logits (N, V) (full (B, T, V) logits also work:
the masked rows are taken from them).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor
from transformers import BertConfig

from distill.errors import DistillError
from distill.losses.base import DistillLoss, Row
from distill.losses.logits import _Tempered
from distill.losses.masking import IGNORE_INDEX, as_float, field
from distill.outputs import ModelOutputs


def masked_rows(logits: Tensor, batch: Mapping[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
    """(N, V) logits and (N,) target ids at the masked positions, from (N, V) or (B, T, V) logits."""
    labels = batch.get("labels")
    if labels is None or labels.dim() != 2:
        raise DistillError(f"{name} needs masked-LM labels (B, T) in the batch; train on raw text with data.mlm set")
    keep = labels.to(logits.device) != IGNORE_INDEX  # (B, T)
    rows = logits[keep] if logits.dim() == 3 else logits  # (N, V)
    if rows.shape[0] != int(keep.sum()):
        raise DistillError(f"{name}: {rows.shape[0]} masked-LM rows for {int(keep.sum())} masked tokens; "
                           "pass the batch's mlm_positions to the model")
    return rows, labels.to(logits.device)[keep]


class MaskedLM(DistillLoss):
    """Cross-entropy of the student's masked-LM logits on the original tokens (BERT's MLM; DistilBERT's L_mlm).

    L = −(1/N) Σ_n log softmax(z[n])[x_n],  z (N, V) at the N masked positions, x_n the original id.
    Needs no teacher.
    """

    needs = frozenset({"logits"})
    uses_teacher = False

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: Mapping[str, Tensor]) -> Tensor:
        rows, targets = masked_rows(field(student, "logits", self.name, "student").float(), batch, self.name)
        return F.cross_entropy(rows, targets, reduction="sum") / max(targets.numel(), 1)

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        return [("masked-LM logits", "original tokens", f"(N, {student_config.vocab_size}) vs (N,)", "-")]


class MaskedLMKD(_Tempered):
    """Softened KL to the teacher's masked-LM distribution at the masked positions (DistilBERT's L_ce).

    L = T² · (1/N) Σ_n Σ_v p_t[n, v] (log p_t[n, v] − log p_s[n, v]),  p = softmax(z / T) over the
    vocabulary (V), z (N, V) at the N masked positions of the same batch for both models.
    """

    def setup(self, student_config: BertConfig, teacher_config: BertConfig | None) -> None:
        DistillLoss.setup(self, student_config, teacher_config)
        s, t = student_config.vocab_size, teacher_config.vocab_size
        if s != t:
            raise DistillError(f"{self.name}: the student's vocabulary has {s} tokens but the teacher's {t}; "
                               "build the student from the teacher (student=bert_l4_h128) so the ids mean the same")

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, Tensor]) -> Tensor:
        s, _ = masked_rows(field(student, "logits", self.name, "student"), batch, self.name)
        t, _ = masked_rows(field(teacher, "logits", self.name, "teacher"), batch, self.name)
        s, t = as_float(s, t)  # (N, V) each
        T = self.current_temperature()
        log_ps, log_pt = F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1)
        return (log_pt.exp() * (log_pt - log_ps)).sum() * (T * T) / max(s.shape[0], 1)

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        v = student_config.vocab_size
        return [("masked-LM logits", "masked-LM logits", f"(N, {v}) → (N, {v}), T={self.temperature}", "-")]


class NextSentence(DistillLoss):
    """Next-sentence prediction: cross-entropy of the student's NSP logits (B, 2) on
    ``batch["next_sentence_label"]`` (B,) — 0: segment B follows A in its document, 1: B is random.

    L = −(1/B) Σ_b log softmax(s[b])[y_b].  Needs no teacher; the student must be the pre-training model.
    """

    needs = frozenset({"nsp_logits"})
    uses_teacher = False

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: Mapping[str, Tensor]) -> Tensor:
        logits = field(student, "nsp_logits", self.name, "student").float()  # (B, 2)
        labels = batch.get("next_sentence_label")
        if labels is None:
            raise DistillError(f"{self.name} needs sentence pairs (next_sentence_label); set data.mlm.nsp=true")
        return F.cross_entropy(logits, labels.to(logits.device))

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        return [("NSP logits", "pair labels", "(B, 2) vs (B,)", "-")]
