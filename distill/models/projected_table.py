"""A narrow student's word embeddings as a trained projection of the teacher's table (trainer.project_word_embeddings).

A student cut from the teacher (``student=pruned_*``) keeps H_s of the teacher's H_t embedding channels; frozen
(``trainer.freeze_word_embeddings``), a word the training rows never had keeps only that slice of what the teacher
knows about it. Here the table is the teacher's, frozen, times one trained (H_t, H_s) matrix, started at the
least-squares fit of the student's own table (for a pruned student: the channel selection, exactly). Every row —
an unseen word's too — moves with what the layers learn, through all H_t of its teacher channels, while only
H_t·H_s numbers train (ALBERT's factorised embedding, Lan et al. 2020, with the teacher's table as the factor).
No library provides it. On leaving training the product is folded back into the student's plain table.

    table = ProjectedTable(embedding, source)   # embedding: the student's (V, H_s); source: the teacher's (V, H_t)
    table(input_ids)                            # (B, T) → (B, T, H_s) = source[input_ids] @ projection
    table.full_weight()                         # (V, H_s) = source @ projection
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.models.used_rows import embeddings_block, swapped_table

log = logging.getLogger(__name__)


class ProjectedTable(nn.Module):
    """``source`` (V, H_t): the teacher's table (a frozen parameter, as ``UsedRows.initial``); ``projection``
    (H_t, H_s), trained. The padding row is ``source[pad] @ projection`` too: attention masks it out."""

    def __init__(self, embedding: nn.Embedding, source: Tensor):
        super().__init__()
        table = embedding.weight.detach()
        source = source.detach().to(table.device, table.dtype)
        fit = torch.linalg.lstsq(source.double(), table.double()).solution  # (H_t, H_s)
        self.residual = float((source.double() @ fit - table.double()).norm() / table.double().norm().clamp(min=1e-12))
        self.source = nn.Parameter(source.clone(), requires_grad=False)
        self.projection = nn.Parameter(fit.to(table.dtype))

    @property
    def num_embeddings(self) -> int:
        return self.source.shape[0]

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.source[input_ids] @ self.projection

    def full_weight(self) -> Tensor:
        """(V, H_s): the plain table this projection gives."""
        with torch.no_grad():
            return self.source @ self.projection


def word_table(model: nn.Module | None) -> Tensor | None:
    """A BERT model's word-embedding table (V, H); an ensemble's first member's; None for other models."""
    model = getattr(model, "primary", model)
    table = getattr(embeddings_block(model), "word_embeddings", None) if model is not None else None
    return table.weight if isinstance(table, nn.Embedding) else None


@contextmanager
def projected_word_embeddings(model: nn.Module, source: Tensor | None):
    """Within the block (``source`` given), ``model``'s word embeddings are ``ProjectedTable(table, source)``;
    on leaving it, the plain table holds ``source @ projection``."""
    if source is None:
        yield
        return
    embeddings = embeddings_block(model)
    original = getattr(embeddings, "word_embeddings", None)
    if not isinstance(original, nn.Embedding) or original.num_embeddings != source.shape[0]:
        raise DistillError("trainer.project_word_embeddings=true needs a BERT student whose word-embedding table has "
                           "the teacher's rows; set it to false for this student")
    trained = ProjectedTable(original, source)
    log.info("word embeddings: the teacher's %d x %d table, frozen, times a trained %d x %d projection (its start "
             "reproduces the student's table within %.1e, relative)", *source.shape, *trained.projection.shape,
             trained.residual)
    with swapped_table(embeddings, original, trained):
        yield
