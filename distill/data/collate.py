"""Batches: dynamic padding to the longest row, and the DataLoader the engine prepares.

A batch is ``{"input_ids", "attention_mask", "token_type_ids", "labels"?, "idx"}``, all int64
tensors: ids/masks (B, T) with T the longest row in the batch (rounded up to
``pad_to_multiple_of``); labels (B,) for sequence tasks or (B, T) padded with -100 for token
tasks; idx (B,), the row within its split (keys the teacher-output cache); gold (B,), augmented
splits only: 0 on rows the teacher labels (the hard-label loss skips them); teacher_* (a teacher with its
own tokenizer): its ids and mask (B, T_t) padded to their own longest row, teacher_word_index (B, T)
padded with -1. Any other column
(``word_ids``, ``truncated``, text) is dropped, so ``model(**batch)``-style calls stay clean.

Hand-written: transformers' DataCollatorWithPadding / ForTokenClassification need a tokenizer object and
pad sequence and token labels in two classes; this one takes a bare pad id and keeps idx/gold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from distill.data.samplers import LengthGroupedBatchSampler, SeededShuffle
from distill.data.tokenize import lengths
from distill.errors import DistillError
from distill.outputs import IGNORE_INDEX, MODEL_INPUTS, TEACHER_INPUTS

PADDED = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0,  # None: the tokenizer's pad id
          # a teacher with its own tokenizer: its padded ids sit under mask 0 (it swaps in its own pad id)
          "teacher_input_ids": 0, "teacher_attention_mask": 0, "teacher_token_type_ids": 0, "teacher_word_index": -1}
KEYS = (*MODEL_INPUTS, "labels", "idx", "gold", *TEACHER_INPUTS)


class Collator:
    """``list[dict]`` rows from ``tokenize`` → dict of padded ``LongTensor``s (see module doc)."""

    def __init__(self, tokenizer=None, pad_token_id: int | None = None, pad_to_multiple_of: int | None = None,
                 keys: Sequence[str] = KEYS):
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else 0
        if pad_token_id is None:
            raise DistillError(f"{type(tokenizer).__name__} has no pad token; pass pad_token_id=... to Collator")
        self.pad_token_id, self.pad_to_multiple_of, self.keys = int(pad_token_id), pad_to_multiple_of, tuple(keys)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise DistillError("Collator got an empty batch; check the dataset is not empty")
        batch = {}
        for key in self.keys:
            if key not in rows[0]:
                continue
            values = [r[key] for r in rows]
            if key in PADDED or (key == "labels" and isinstance(values[0], list)):
                fill = self.pad_token_id if key == "input_ids" else PADDED.get(key, IGNORE_INDEX)
                out = torch.full((len(rows), self._longest(values)), fill, dtype=torch.long)  # (B, T)
                for i, v in enumerate(values):
                    out[i, :len(v)] = torch.as_tensor(v, dtype=torch.long)
                batch[key] = out
            else:
                batch[key] = torch.as_tensor(values, dtype=torch.long)  # (B,)
        return batch

    def _longest(self, values: list) -> int:
        longest = max(len(v) for v in values)  # the teacher's ids have their own length
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return longest


def make_dataloader(dataset, collator: Collator, batch_size: int, shuffle: bool, seed: int = 0,
                    group_by_length: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader over a tokenized split, ready for ``accelerator.prepare``.

    ``shuffle``: a new seeded order every epoch (``SeededShuffle``). ``group_by_length``: batches
    of similar length (``LengthGroupedBatchSampler``), shuffled in batch order when ``shuffle``.
    Both are deterministic from ``seed`` and the epoch, on every process.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DistillError(f"batch_size={batch_size!r} must be a positive integer")
    if len(dataset) == 0:
        raise DistillError("cannot batch an empty dataset; check the split and limit")
    # The loader's own generator: creating an iterator then never draws from the global RNG, so a
    # resumed run's dropout masks continue exactly where the interrupted run's stopped.
    generator = torch.Generator().manual_seed(seed)
    if group_by_length:
        sampler = LengthGroupedBatchSampler(lengths(dataset), batch_size, shuffle=shuffle, seed=seed,
                                            drop_last=drop_last)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, sampler=SeededShuffle(len(dataset), seed) if shuffle else None,
                      collate_fn=collator, drop_last=drop_last, generator=generator)
