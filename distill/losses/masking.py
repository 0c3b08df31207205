"""Which positions a loss may read, and in which dtype it computes.

Padded positions carry no information in our model (hidden states are zero there, attention rows of
padded queries are meaningless), so every loss selects real positions before it reduces anything.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import Tensor

from distill.errors import DistillError
from distill.outputs import IGNORE_INDEX, ModelOutputs


def as_float(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both in a common dtype of at least float32; the teacher detached (it is a target, never trained).

    fp16 teacher outputs from a cache and bf16 outputs under autocast are upcast: softmax, log and
    squared differences lose too much in half precision.
    """
    dtype = functools.reduce(torch.promote_types, (student.dtype, teacher.dtype), torch.float32)
    return student.to(dtype), teacher.detach().to(dtype)


def field(outputs: ModelOutputs | None, name: str, loss: str, side: str):
    """``outputs.<name>``, or a one-line error saying what to change when it is missing."""
    value = None if outputs is None else getattr(outputs, name)
    if value is None or (isinstance(value, tuple) and not value):
        if side == "teacher":
            raise DistillError(
                f"{loss} reads the teacher's {name}, but the teacher outputs have none (a teacher cache "
                f"keeps only what it was built for); turn the teacher cache off or drop this loss term"
            )
        raise DistillError(
            f"{loss} reads the student's {name}, but the student outputs have none; run the student with "
            f"the loss's `needs` (e.g. output_{name}=True)"
        )
    return value


def real_tokens(student: ModelOutputs, batch: Mapping[str, Tensor], like: Tensor) -> Tensor:
    """(B, T) bool, True at real tokens: batch["attention_mask"], else the student's, else all True.

    ``like`` is any (B, T, ...) tensor of the batch, used for the all-True fallback.
    """
    mask = batch.get("attention_mask") if batch is not None else None
    if mask is None:
        mask = student.attention_mask
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    return mask.to(device=like.device, dtype=torch.bool)


def scored_tokens(student: ModelOutputs, batch: Mapping[str, Tensor], logits: Tensor) -> Tensor:
    """(B, T) bool for token logits (B, T, C): real tokens that carry a label.

    With token labels (B, T) in the batch only labels != -100 count (e.g. the masked positions of
    masked-LM, the first sub-word of NER); without labels every real token counts.
    """
    keep = real_tokens(student, batch, logits)
    labels = batch.get("labels") if batch is not None else None
    if labels is not None and labels.shape == logits.shape[:2]:
        keep = keep & (labels.to(logits.device) != IGNORE_INDEX)
    return keep


def logit_rows(student: ModelOutputs, s: Tensor, t: Tensor, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Student and teacher logits as rows (N, C): (B, C) unchanged; (B, T, C) → scored tokens only."""
    if s.dim() == 2:
        return s, t
    keep = scored_tokens(student, batch, s)  # (B, T)
    index = batch.get("teacher_word_index") if batch is not None else None
    if index is not None and index.shape == keep.shape:  # a teacher with its own tokenizer lost these words
        keep = keep & (index.to(keep.device) >= 0)
    return s[keep], t[keep]  # (N, C) each
