"""Train only the word-embedding rows a training set looks up; every other row follows AdamW's decay alone.

A row no training token looks up gets a zero gradient on every step: AdamW's moments for it stay 0, so
its only change is the decoupled weight decay ``w ← w·(1 − lr_t·wd)``. Training a table of the used rows
and applying that decay to the others at the end gives the same weights — while the embedding backward,
gradient clipping and the optimizer touch only those rows (MR's training split uses 11,555 of BERT's 30,522,
20,795 with 8 augmented variants per sentence; the table is most of a small student's parameters). No
library does this: torch's sparse embeddings need SparseAdam, whose update differs from AdamW's.

    table = UsedRows(embedding, ids)   # ids: (n,) the rows to train
    table(input_ids) == embedding(input_ids)     # (B, T) → (B, T, H), any ids
    table.full_weight()                          # (V, H): the table the full training would have reached
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, suppress

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError

log = logging.getLogger(__name__)


class UsedRows(nn.Module):
    """``weight`` (n + 1, H): the rows ``ids`` of the table, then a row of ones that takes the same decay as
    every unused row (trainable, never looked up: its value is the product of the decay factors so far).
    ``initial`` (V, H): the table as it was (a frozen parameter: DDP copies it from rank 0 once, where a buffer
    would be sent on every forward); an unused row is ``initial · weight[-1]``.
    ``rows`` (V,): id → its row in ``weight``; −1 for an unused id."""

    def __init__(self, embedding: nn.Embedding, ids: Tensor):
        super().__init__()
        table = embedding.weight.detach()
        ids = torch.unique(ids.to(table.device, torch.long))
        rows = torch.full((table.shape[0],), -1, dtype=torch.long, device=table.device)
        rows[ids] = torch.arange(len(ids), device=table.device)
        pad = embedding.padding_idx
        self.pad_row = int(rows[pad]) if pad is not None and rows[pad] >= 0 else None  # its gradient stays 0
        self.register_buffer("rows", rows)
        self.initial = nn.Parameter(table.clone(), requires_grad=False)  # no gradient: AdamW skips it
        self.weight = nn.Parameter(torch.cat([table[ids], torch.ones_like(table[:1])]))

    @property
    def num_embeddings(self) -> int:
        return self.initial.shape[0]

    def forward(self, input_ids: Tensor) -> Tensor:
        rows = self.rows[input_ids]  # (B, T)
        used = F.embedding(rows.clamp(min=0), self.weight, padding_idx=self.pad_row)
        unused = self.initial[input_ids] * self.weight[-1].detach()  # (B, T, H): no gradient, as in the full table
        return torch.where((rows < 0).unsqueeze(-1), unused, used)

    def full_weight(self) -> Tensor:
        """(V, H): the used rows as trained, the others decayed as AdamW decayed them."""
        with torch.no_grad():
            full = self.initial * self.weight[-1]
            used = self.rows >= 0
            full[used] = self.weight[self.rows[used]]
            return full


def embeddings_block(model: nn.Module) -> nn.Module | None:
    """A BERT model's (or bare encoder's) embeddings block, where its word-embedding table lives; None for others."""
    return getattr(getattr(model, "bert", model), "embeddings", None)


@contextmanager
def used_rows_only(model: nn.Module, ids: Tensor | None):
    """Within the block, ``model``'s word embeddings train only the rows ``ids`` (None: all rows, unchanged);
    on leaving it, the full table is back, holding what training the full table would have given. A model
    without a plain ``nn.Embedding`` table (another architecture) trains as it is."""
    embeddings = embeddings_block(model)
    original = getattr(embeddings, "word_embeddings", None)
    if ids is None or not plain_table(original) or (ids.numel() and int(ids.max()) >= original.num_embeddings):
        yield  # (an id past the table fails the lookup as it would without this)
        return
    trained = UsedRows(original, ids)
    log.info("word embeddings: training the %d of %d rows the training rows use (the rest take the weight decay "
             "alone; trainer.trim_embeddings)", len(trained.weight) - 1, original.num_embeddings)
    with swapped_table(embeddings, original, trained):
        yield


@contextmanager
def swapped_table(embeddings: nn.Module, original: nn.Embedding, trained: nn.Module):
    """Within the block ``embeddings.word_embeddings`` is ``trained`` (a table in another form, with
    ``full_weight()``); on leaving it, by an error too, ``original`` is back holding ``trained.full_weight()``."""
    embeddings.word_embeddings = trained

    def restore() -> None:
        full = trained.full_weight()
        original.to(full.device)  # where the trained model went (accelerate's prepare)
        with torch.no_grad():
            original.weight.copy_(full)
        embeddings.word_embeddings = original

    try:
        yield
    except BaseException:
        with suppress(Exception):  # the error that stopped training is the one to report (e.g. out of memory)
            restore()
        raise
    restore()


@contextmanager
def frozen_word_embeddings(model: nn.Module, on: bool):
    """Within the block (``on``), ``model``'s word-embedding table takes no gradient, so AdamW neither steps nor
    decays it (a masked-LM's tied decoder with it); its ``requires_grad`` is back afterwards."""
    if not on:
        yield
        return
    table = getattr(embeddings_block(model), "word_embeddings", None)
    if not isinstance(table, nn.Embedding):
        raise DistillError("trainer.freeze_word_embeddings=true needs a student with a BERT word-embedding table; "
                           "set it to false for this student")
    was = table.weight.requires_grad
    table.weight.requires_grad_(False)
    try:
        yield
    finally:
        table.weight.requires_grad_(was)


def plain_table(module) -> bool:
    """An ``nn.Embedding`` whose update is only its gradient (no max_norm renormalising rows, no frequency
    scaling, dense gradient)."""
    return (type(module) is nn.Embedding and module.max_norm is None and not module.scale_grad_by_freq
            and not module.sparse)


def standard_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with a table trained in another form (``UsedRows``, ``ProjectedTable``: a module with
    ``full_weight()``) written as the full ``weight`` a plain ``nn.Embedding`` (and transformers) loads."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if callable(getattr(module, "full_weight", None)):
            for key in module.state_dict():  # its parameters and buffers (UsedRows: rows, initial, weight)
                state.pop(f"{name}.{key}")
            state[f"{name}.weight"] = module.full_weight()
    return state
