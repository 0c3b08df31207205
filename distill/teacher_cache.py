"""Teacher logits stored once (fp16, memory-mapped, by example ``idx``) and reused afterwards.

When every loss reads only the teacher's logits, the teacher's forward pass is pure overhead after
the first epoch: its outputs for a given example never change (eval mode, no dropout). The cache
is a ``(N, *logit_shape)`` fp16 array plus an ``(N,)`` "filled" flag array, both ``np.memmap``
files, in a directory named by a fingerprint of everything that could change the logits —
teacher weights, tokenizer vocabulary, the tokenized data and ``max_length``. Anything different
gives a different directory, so a stale cache is never read (and a log line says which was used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from distill.atomic import check_writable
from distill.models.hub import weights_digest

log = logging.getLogger(__name__)


def fingerprint(teacher: torch.nn.Module, tokenizer, data_fingerprint: str, max_length: int) -> str:
    """sha256 over teacher tensors, the tokenizer's vocab, the data's fingerprint and max_length."""
    h = hashlib.sha256(weights_digest(teacher).encode())
    vocab = sorted(tokenizer.get_vocab().items()) if tokenizer is not None else []
    h.update(json.dumps(vocab).encode())
    h.update(f"{data_fingerprint}|{max_length}".encode())
    return h.hexdigest()[:20]


class TeacherCache:
    """Logits of ``n_rows`` examples, each of ``row_shape`` ((C,) or (T_max, C) for token tasks).

    Rows are written the first time a batch is seen and read whenever every row of a batch is
    present; token-task rows are stored padded to ``row_shape[0]`` and cut back to the batch's T.
    """

    def __init__(self, root: str | os.PathLike, key: str, n_rows: int, row_shape: tuple[int, ...]):
        self.dir = Path(root) / f"teacher-{key}"
        check_writable(self.dir, "set trainer.cache_dir to a writable dir, or trainer.teacher_cache=false")
        meta = {"n_rows": n_rows, "row_shape": list(row_shape)}
        meta_file = self.dir / "meta.json"
        fresh = not meta_file.exists() or json.loads(meta_file.read_text()) != meta
        mode = "w+" if fresh else "r+"
        self.logits = np.memmap(self.dir / "logits.f16", np.float16, mode, shape=(n_rows, *row_shape))
        self.filled = np.memmap(self.dir / "filled.u8", np.uint8, mode, shape=(n_rows,))
        if fresh:
            meta_file.write_text(json.dumps(meta))
        log.info("teacher cache %s: %d of %d rows present", self.dir, int(self.filled.sum()), n_rows)

    def get(self, idx: Tensor, seq_len: int | None = None) -> Tensor | None:
        """Logits for the rows ``idx`` (B,) as float32, or None unless every row is cached."""
        rows = idx.cpu().numpy()
        if not self.filled[rows].all():
            return None
        out = torch.from_numpy(np.asarray(self.logits[rows])).float()  # (B, *row_shape)
        return out[:, :seq_len] if seq_len is not None else out

    def put(self, idx: Tensor, logits: Tensor) -> None:
        """Store (B, C) or (B, T, C) logits; token rows are zero-padded to the stored T_max."""
        rows = idx.cpu().numpy()
        values = logits.detach().float().cpu().numpy().astype(np.float16)
        if values.ndim == 3:
            self.logits[rows, : values.shape[1]] = values
        else:
            self.logits[rows] = values
        self.filled[rows] = 1  # flags after values: a crash between the two only loses the rows

    def flush(self) -> None:
        self.logits.flush()
        self.filled.flush()
