"""Losses on the output logits: softened KL (Hinton et al.), MSE, soft cross-entropy.

Every formula works on rows (N, C) and softmaxes over the LAST axis (classes), never over time:
  * sequence logits (B, C): N = B;
  * token logits (B, T, C): N = real tokens that carry a label (labels != -100 when the batch has
    token labels, else every real token) — padding never counts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor
from transformers import BertConfig

from distill.errors import DistillError
from distill.losses.base import DistillLoss, Row
from distill.losses.masking import as_float, field, logit_rows
from distill.losses.schedules import Constant, Schedule, as_schedule
from distill.outputs import ModelOutputs


class _LogitsLoss(DistillLoss):
    """Shared plumbing: label-count check, shape check, rows (N, C) in float32."""

    needs = frozenset({"logits"})

    def setup(self, student_config: BertConfig, teacher_config: BertConfig | None) -> None:
        super().setup(student_config, teacher_config)
        s, t = student_config.num_labels, teacher_config.num_labels
        if s != t:
            raise DistillError(
                f"{self.name}: the student has num_labels={s} but the teacher {t}; build the student from "
                f"the teacher so the label set matches"
            )

    def rows(self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        s = field(student, "logits", self.name, "student")
        t = field(teacher, "logits", self.name, "teacher")
        if s.shape != t.shape:
            raise DistillError(
                f"{self.name}: student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ; "
                f"student and teacher need the same task head, labels and vocab"
            )
        s, t = as_float(s, t)
        return logit_rows(student, s, t, batch)  # (N, C) each

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        shapes = f"(…, {student_config.num_labels}) → (…, {teacher_config.num_labels})"
        return [("logits", "logits", shapes, "-")]


class _Tempered(_LogitsLoss):
    """A logits loss with a (possibly scheduled) temperature T > 0."""

    def __init__(self, temperature: float | Schedule = 1.0, weight: float | Schedule = 1.0):
        super().__init__(weight)
        self.temperature = as_schedule(temperature, f"{self.name}.temperature")
        if isinstance(self.temperature, Constant):
            self.current_temperature()  # a constant T <= 0 fails at build time, not at step 1

    def current_temperature(self) -> float:
        T = self.temperature(self.progress)
        if not T > 0:
            raise DistillError(f"{self.name}: temperature is {T:g} at progress {self.progress:g}; it must stay > 0")
        return T

    def extras(self) -> dict[str, float]:
        return {"temperature": self.current_temperature()}

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        ((s, t, shapes, proj),) = super().describe(student_config, teacher_config)
        return [(s, t, f"{shapes}, T={self.temperature}", proj)]


class LogitsKL(_Tempered):
    """Softened KL divergence, scaled by T² so gradients keep their size as T changes.

    L = T² · (1/N) Σ_n Σ_c p_t[n, c] · (log p_t[n, c] − log p_s[n, c]),   p = softmax(z / T, dim=-1)

    ∂L/∂z_s[n] = T · (p_s[n] − p_t[n]) / N. At T = 1 on (B, C) this equals
    ``F.kl_div(log_softmax(s), softmax(t), reduction="batchmean")``.
    """

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, Tensor]) -> Tensor:
        s, t = self.rows(student, teacher, batch)  # (N, C)
        T = self.current_temperature()
        log_ps = F.log_softmax(s / T, dim=-1)
        log_pt = F.log_softmax(t / T, dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum()
        return kl * (T * T) / max(s.shape[0], 1)


class SoftCrossEntropy(_Tempered):
    """Cross-entropy against the teacher's softened distribution (DistilBERT's ``L_ce``).

    L = −T² · (1/N) Σ_n Σ_c p_t[n, c] · log p_s[n, c]  =  LogitsKL + T² · mean teacher entropy.

    Same gradient as :class:`LogitsKL`; its value does not reach 0 when the student matches the
    teacher (it bottoms out at the teacher's entropy) — prefer LogitsKL when you read the number.
    """

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, Tensor]) -> Tensor:
        s, t = self.rows(student, teacher, batch)  # (N, C)
        T = self.current_temperature()
        ce = -(F.softmax(t / T, dim=-1) * F.log_softmax(s / T, dim=-1)).sum()
        return ce * (T * T) / max(s.shape[0], 1)


class LogitsMSE(_LogitsLoss):
    """Mean squared error between raw logits (Tang et al., 2019), no temperature.

    L = (1 / (N · C)) Σ_n Σ_c (z_s[n, c] − z_t[n, c])²
    """

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, Tensor]) -> Tensor:
        s, t = self.rows(student, teacher, batch)  # (N, C)
        return (s - t).pow(2).sum() / max(s.numel(), 1)
