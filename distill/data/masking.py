"""BERT's masking for masked-LM training and general distillation, as transformers does it.

``MaskingCollator`` pads a batch with :class:`~distill.data.collate.Collator`, then masks it with
transformers' ``DataCollatorForLanguageModeling.torch_mask_tokens``: each real, non-special token is
chosen with ``probability`` (15%); a chosen token becomes [MASK] 80% of the time, a random token 10%,
and stays itself 10%. ``labels`` (B, T) hold the original id at chosen positions and −100 elsewhere;
``mlm_positions`` (B, T) bool marks them, so the models decode only those rows.

``whole_word``: a word's pieces are chosen together, and (transformers' rule) every chosen piece
becomes [MASK]. transformers finds words from the tokenizer's character offsets, which the tokenized
splits do not keep; the offsets are rebuilt from the WordPiece rule instead (a ``##`` piece continues
the word before it).

Masks are a function of (``seed``, epoch, the batch's row ids): a generator seeded from them per batch.
Not torch's global RNG: accelerate's loader collates one batch ahead, so a checkpoint's RNG state would
already include the next batch's draws and a resumed run would mask differently. The engine hands the
epoch over (``set_epoch``, as to samplers), so every epoch masks afresh (dynamic masking, RoBERTa's).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

from distill.data.collate import KEYS, Collator
from distill.data.mlm_head import MLMFit
from distill.errors import DistillError
from distill.outputs import IGNORE_INDEX


@dataclass
class MaskedLMData:
    """The ``data.mlm`` node: raw text is trained with BERT's masking (general distillation)."""

    probability: float = 0.15
    whole_word: bool = False
    nsp: bool = False  # sentence pairs (distill.data.pairs) and the pre-training model's NSP head
    # the teacher's masked-LM head, fitted once on ``head_texts`` training texts when its checkpoint
    # has none (the packaged MiniLM); teacher_head.epochs=0 keeps a checkpoint's own head
    teacher_head: MLMFit = field(default_factory=lambda: MLMFit(epochs=1, train_layers=0, max_length=128))
    head_texts: int = 8000


class MaskingCollator:
    """``list[dict]`` rows → a padded batch with BERT's masking applied (see the module doc)."""

    def __init__(self, tokenizer, probability: float = 0.15, whole_word: bool = False,
                 pad_to_multiple_of: int | None = None, seed: int = 0):
        if not 0 < probability <= 1:
            raise DistillError(f"data.mlm.probability={probability} must be in (0, 1]; BERT masks 0.15")
        if tokenizer.mask_token_id is None:
            raise DistillError(f"{type(tokenizer).__name__} has no [MASK] token; masked-LM needs a BERT tokenizer")
        self.pad = Collator(tokenizer, pad_to_multiple_of=pad_to_multiple_of, keys=KEYS + ("next_sentence_label",))
        with warnings.catch_warnings():  # whole words: transformers uses [MASK] only (said in the module doc)
            warnings.simplefilter("ignore", UserWarning)
            self.masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability,
                                                          whole_word_mask=whole_word)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        pieces = [i for t, i in tokenizer.get_vocab().items() if t.startswith("##")]
        self.continues = torch.zeros(max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1), dtype=torch.bool)
        self.continues[pieces] = True
        self.whole_word, self.seed, self.epoch = whole_word, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.pad([{k: v for k, v in r.items() if k != "labels"} for r in rows])
        ids = batch["input_ids"]
        special = torch.isin(ids, self.special)  # (B, T): [CLS], [SEP], [PAD] are never chosen
        key = f"{self.seed}|{self.epoch}|{batch['idx'].tolist() if 'idx' in batch else ids.tolist()}"
        self.masker.generator = torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:15], 16))
        offsets = self._offsets(ids) if self.whole_word else None
        batch["input_ids"], labels = self.masker.torch_mask_tokens(ids.clone(), special.long(), offsets)
        batch["labels"] = labels
        batch["mlm_positions"] = labels != IGNORE_INDEX
        return batch

    def _offsets(self, ids: torch.Tensor) -> np.ndarray:
        """(B, T, 2) character spans as a fast tokenizer would give them, up to a shift: a ``##`` piece
        starts where the token before it ended, any other token one character later."""
        step = torch.where(self.continues[ids], 1, 2)  # (B, T)
        ends = step.cumsum(1)
        return torch.stack([ends - 1, ends], dim=-1).numpy()
