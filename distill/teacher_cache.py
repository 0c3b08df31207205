"""Teacher outputs stored once (fp16, memory-mapped, by example ``idx``) and reused afterwards.

The teacher is frozen (eval mode, no dropout), so its outputs for a given example never change: after
the first epoch its forward pass is pure overhead. The cache keeps what the losses read —

* logits: a ``(N, *logit_shape)`` array ((C,) per row, or (T_max, C) for token tasks);
* hidden states, attention maps and Q/K/V, at the teacher layers the losses map only: stored ragged,
  each row's real tokens only (n_i units for hidden states and Q/K/V, n_i² for a map), because a row
  padded to the longest in the dataset would cost ~4x the disk on MR, and maps grow with T².

All are ``np.memmap`` files plus an ``(N,)`` "filled" flag array, in a directory named by a fingerprint
of everything that could change the outputs — teacher weights, tokenizer vocabulary, the tokenized data
and ``max_length`` — and by which layers are kept. Anything different gives a different directory, so a
stale cache is never read (and a log line says which was used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from distill.atomic import check_writable
from distill.errors import DistillError
from distill.models.hub import weights_digest
from distill.outputs import ModelOutputs

log = logging.getLogger(__name__)

CACHEABLE = frozenset({"logits", "hidden_states", "attentions", "qkv"})  # what a cache can hand the losses


def fingerprint(teacher: torch.nn.Module, tokenizer, data_fingerprint: str, max_length: int) -> str:
    """sha256 over teacher tensors, the tokenizer's vocab, the data's fingerprint and max_length."""
    h = hashlib.sha256(weights_digest(teacher).encode())
    vocab = sorted(tokenizer.get_vocab().items()) if tokenizer is not None else []
    h.update(json.dumps(vocab).encode())
    h.update(f"{data_fingerprint}|{max_length}".encode())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class Layers:
    """The teacher layers a cache keeps per field (hidden states: 0 = embeddings; maps, Q/K/V: 1-based)
    and the teacher's shape, to rebuild its ``ModelOutputs``."""

    num_layers: int
    hidden_size: int
    heads: int
    hidden_states: tuple[int, ...] = ()
    attentions: tuple[int, ...] = ()
    qkv: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hidden_states or self.attentions or self.qkv)

    def fields(self) -> dict[str, tuple[bool, tuple[int, ...]]]:
        """name -> (units per row are n² — a map — rather than n, feature shape per unit), kept fields only."""
        h, nh = self.hidden_size, self.heads
        shapes = {"hidden_states": (False, (len(self.hidden_states), h)),
                  "attentions": (True, (len(self.attentions), nh)),
                  "qkv": (False, (len(self.qkv), 3, nh, h // nh))}
        return {name: shape for name, shape in shapes.items() if getattr(self, name)}

    def bytes(self, lengths: np.ndarray) -> int:
        """fp16 bytes of the kept fields over rows of ``lengths`` real tokens."""
        total = 0
        for squared, feature in self.fields().values():
            units = int((lengths.astype(np.int64) ** 2).sum() if squared else lengths.sum())
            total += units * int(np.prod(feature)) * 2
        return total


def finite_fp16(values: Tensor, name: str) -> np.ndarray:
    """``values`` as an fp16 array; one line if fp16 cannot hold them (a value past ±65504 would be read back as
    inf in every later epoch)."""
    out = values.detach().float().cpu().numpy().astype(np.float16)
    if not np.isfinite(out).all() and np.isfinite(values.detach().float().cpu().numpy()).all():
        raise DistillError(f"the teacher's {name} exceed fp16's range (|x| > 65504), which the teacher cache stores; "
                           "set trainer.teacher_cache=false")
    return out


class TeacherCache:
    """Logits of ``n_rows`` examples, each of ``row_shape`` ((C,) or (T_max, C) for token tasks; None
    when no loss reads logits), and the teacher's ``layers`` outputs for rows of ``lengths`` real tokens.

    Rows are written the first time a batch is seen and read whenever every row of a batch is present;
    token-task logits are stored padded to ``row_shape[0]`` and cut back to the batch's T; layer outputs
    come back zero at padded positions (every loss reads real positions only).
    """

    def __init__(self, root: str | os.PathLike, key: str, n_rows: int, row_shape: tuple[int, ...] | None,
                 layers: Layers | None = None, lengths: list[int] | None = None):
        self.layers = layers if layers else None
        # a logits-only cache keeps its old name; one with layers is named by what it holds, so two recipes
        # caching other fields of one teacher and data do not take turns wiping one dir
        kept = {"layers": asdict(self.layers) if self.layers else None, "row_shape": row_shape}
        suffix = "" if self.layers is None else "-" + hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:8]
        self.dir = Path(root) / f"teacher-{key}{suffix}"
        check_writable(self.dir, "set trainer.cache_dir to a writable dir, or trainer.teacher_cache=false")
        self.lengths = np.asarray(lengths if lengths is not None else [], dtype=np.int64)
        meta = json.loads(json.dumps({"n_rows": n_rows, "row_shape": row_shape, "tokens": int(self.lengths.sum()),
                                      "layers": asdict(self.layers) if self.layers else None}))  # as read back
        meta_file = self.dir / "meta.json"
        fresh = not meta_file.exists() or json.loads(meta_file.read_text()) != meta
        mode = "w+" if fresh else "r+"
        self.logits = (np.memmap(self.dir / "logits.f16", np.float16, mode, shape=(n_rows, *row_shape))
                       if row_shape else None)
        self.arrays, self.offsets = {}, {}
        for name, (squared, feature) in (self.layers.fields() if self.layers else {}).items():
            units = self.lengths ** 2 if squared else self.lengths
            self.offsets[name] = np.concatenate([[0], np.cumsum(units)])  # row i: units offsets[i]:offsets[i+1]
            self.arrays[name] = np.memmap(self.dir / f"{name}.f16", np.float16, mode,
                                          shape=(max(int(units.sum()), 1), *feature))
        self.filled = np.memmap(self.dir / "filled.u8", np.uint8, mode, shape=(n_rows,))
        if fresh:
            meta_file.write_text(json.dumps(meta))
        size = sum(a.nbytes for a in self.arrays.values()) + (self.logits.nbytes if self.logits is not None else 0)
        log.info("teacher cache %s (%s; %.2f GB): %d of %d rows present", self.dir,
                 ", ".join((["logits"] if row_shape else []) + list(self.arrays)), size / 1e9,
                 int(self.filled.sum()), n_rows)

    def get(self, idx: Tensor, attention_mask: Tensor, seq_len: int | None = None) -> ModelOutputs | None:
        """The cached outputs of rows ``idx`` (B,) as float32 on the mask's device, or None unless every
        row is cached; ``seq_len``: token-task logits are cut to it."""
        rows = idx.cpu().numpy()
        if not self.filled[rows].all():
            return None
        device = attention_mask.device
        fields = {"attention_mask": attention_mask}
        if self.logits is not None:
            out = torch.from_numpy(np.asarray(self.logits[rows])).float()  # (B, *row_shape)
            fields["logits"] = (out[:, :seq_len] if seq_len is not None else out).to(device)
        if self.layers is not None:
            fields.update(self._layer_outputs(rows, attention_mask))
        return ModelOutputs(**fields)

    def put(self, idx: Tensor, outputs: ModelOutputs, attention_mask: Tensor) -> None:
        """Store the teacher's outputs for rows ``idx`` (B,); token-task logits are zero-padded to T_max."""
        rows = idx.cpu().numpy()
        if self.logits is not None:
            values = finite_fp16(outputs.logits, "logits")
            if values.ndim == 3:
                self.logits[rows, : values.shape[1]] = values
            else:
                self.logits[rows] = values
        if self.layers is not None:
            masks = self._masks(rows, attention_mask)
            for name, tensor in self._stacked(outputs).items():
                units = finite_fp16(tensor[masks[name]], name)  # (units, *feature)
                self.arrays[name][self._units(name, rows)] = units
        self.filled[rows] = 1  # flags after values: a crash between the two only loses the rows

    def flush(self) -> None:
        for array in (self.logits, *self.arrays.values(), self.filled):
            if array is not None:
                array.flush()

    def _masks(self, rows: np.ndarray, attention_mask: Tensor) -> dict[str, Tensor]:
        """Per field, a (B, T) or (B, T, T) bool mask of the positions stored for each row: its first
        n_i tokens (the collator pads on the right)."""
        n = torch.as_tensor(self.lengths[rows], device=attention_mask.device)  # (B,)
        real = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None] < n[:, None]  # (B, T)
        if not torch.equal(real, attention_mask.bool()):
            raise DistillError("the teacher cache found batch rows whose real tokens differ from the dataset's "
                               "lengths (left padding?); set trainer.teacher_cache=false")
        return {name: real[:, :, None] & real[:, None, :] if squared else real
                for name, (squared, _) in self.layers.fields().items()}

    def _units(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Flat unit indices of ``rows`` in a field's array, in the order a boolean mask enumerates them."""
        start, stop = self.offsets[name][rows], self.offsets[name][rows + 1]
        return np.concatenate([np.arange(a, b) for a, b in zip(start, stop)])

    def _stacked(self, outputs: ModelOutputs) -> dict[str, Tensor]:
        """The kept layers of each field as one tensor: (B, T, L, H), (B, T, T, L, heads), (B, T, L, 3, heads, d)."""
        lay, out = self.layers, {}
        if lay.hidden_states:
            out["hidden_states"] = torch.stack([outputs.hidden_states[j] for j in lay.hidden_states], 2)
        if lay.attentions:
            maps = torch.stack([outputs.attentions[j - 1] for j in lay.attentions], 1)  # (B, L, heads, T, T)
            out["attentions"] = maps.permute(0, 3, 4, 1, 2)
        if lay.qkv:
            qkv = torch.stack([torch.stack(outputs.qkv[j - 1], 1) for j in lay.qkv], 1)  # (B, L, 3, heads, T, d)
            out["qkv"] = qkv.permute(0, 4, 1, 2, 3, 5)
        return out

    def _layer_outputs(self, rows: np.ndarray, attention_mask: Tensor) -> dict:
        """hidden_states / attentions / qkv tuples as the teacher returns them; None at layers not kept."""
        lay, masks, device = self.layers, self._masks(rows, attention_mask), attention_mask.device
        B, T = attention_mask.shape
        fields = {}
        for name, (squared, feature) in lay.fields().items():
            full = torch.zeros((B, T, T, *feature) if squared else (B, T, *feature))
            full[masks[name].cpu()] = torch.from_numpy(np.asarray(self.arrays[name][self._units(name, rows)])).float()
            full = full.to(device)
            kept = getattr(lay, name)
            if name == "hidden_states":
                slots = [None] * (lay.num_layers + 1)
                for k, j in enumerate(kept):
                    slots[j] = full[:, :, k]  # (B, T, H)
            elif name == "attentions":
                slots = [None] * lay.num_layers
                for k, j in enumerate(kept):
                    slots[j - 1] = full[:, :, :, k].permute(0, 3, 1, 2)  # (B, heads, T, T)
            else:
                slots = [None] * lay.num_layers
                for k, j in enumerate(kept):
                    slots[j - 1] = tuple(full[:, :, k, m].transpose(1, 2) for m in range(3))  # (B, heads, T, d)
            fields[name] = tuple(slots)
        return fields
