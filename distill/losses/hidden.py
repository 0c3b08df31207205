"""Hidden-state losses over mapped layers (0 = embeddings): MSE (TinyBERT), cosine (DistilBERT), PKD.

For each pair (i, j) of the layer map, student ``hidden_states[i]`` (B, T, H_s) is compared with
teacher ``hidden_states[j]`` (B, T, H_t) at real tokens only. When H_s != H_t a learned projection
W: H_s → H_t (one ``nn.Linear``, shared by every pair, as TinyBERT's W_h) maps the student first;
it is created in ``setup`` (before the optimizer), trained with the student, and never exported.
Pair losses are SUMMED over the map, as in TinyBERT and PKD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig

from distill.errors import DistillError
from distill.layer_map import LayerMap, check_depth, layer_name, source_layers
from distill.losses.base import DistillLoss, Row
from distill.losses.masking import as_float, field, real_tokens
from distill.losses.schedules import Schedule
from distill.outputs import ModelOutputs


class _HiddenLoss(DistillLoss):
    """Layer map + optional projection; subclasses define ``select`` and ``pair_loss``."""

    needs = frozenset({"hidden_states"})
    uniform_includes_embeddings = True
    row_shape = "(B, T, {})"  # what one compared layer looks like, for the dry-run table

    def __init__(self, layer_map: str | Sequence[Sequence[int]] = "uniform", weight: float | Schedule = 1.0):
        super().__init__(weight)
        self.layer_map_spec = layer_map
        self.layer_map: LayerMap | None = None
        self.projection: nn.Linear | None = None

    def resolve(self, student_config: BertConfig, teacher_config: BertConfig) -> LayerMap:
        return LayerMap.resolve(
            self.layer_map_spec,
            student_config.num_hidden_layers,
            teacher_config.num_hidden_layers,
            embeddings=self.uniform_includes_embeddings,
            allow_embeddings=True,
            source=source_layers(student_config),
        )

    def setup(self, student_config: BertConfig, teacher_config: BertConfig | None) -> None:
        super().setup(student_config, teacher_config)
        self.layer_map = self.resolve(student_config, teacher_config)
        hs, ht = student_config.hidden_size, teacher_config.hidden_size
        if hs == ht:
            self.projection = None
        elif self.projection is None or self.projection.weight.shape != (ht, hs):
            # kept when set up twice with the same widths: its trained weights and optimizer state survive
            self.projection = nn.Linear(hs, ht)

    def teacher_layers(self, field: str) -> frozenset[int] | None:
        if field != "hidden_states" or self.layer_map is None:
            return None
        return frozenset(self.layer_map.teacher_layers())

    def select(self, h: Tensor, real: Tensor) -> Tensor:
        """(B, T, H), (B, T) bool → the rows compared, (N, H): every real token."""
        return h[real]  # (N, H)

    def pair_loss(self, s: Tensor, t: Tensor) -> Tensor:
        """s, t: (N, H_t) → scalar."""
        raise NotImplementedError

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, Tensor]) -> Tensor:
        if self.layer_map is None:
            raise DistillError(f"{self.name} was not set up; call CompositeLoss.setup(student_config, teacher_config)")
        hs = field(student, "hidden_states", self.name, "student")
        ht = field(teacher, "hidden_states", self.name, "teacher")
        check_depth(self.name, self.layer_map, len(hs) - 1, len(ht) - 1)
        real = real_tokens(student, batch, hs[0])  # (B, T)
        total = hs[0].new_zeros((), dtype=torch.float32)
        for i, j in self.layer_map.pairs:
            s, t = as_float(self.select(hs[i], real), self.select(ht[j], real))  # (N, H_s), (N, H_t)
            if self.projection is not None:
                s = self.projection(s.to(self.projection.weight.dtype))  # (N, H_t)
            total = total + self.pair_loss(s, t)
        return total

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        layer_map = self.resolve(student_config, teacher_config)
        hs, ht = student_config.hidden_size, teacher_config.hidden_size
        proj = f"Linear {hs}→{ht} (shared)" if hs != ht else "-"
        shape = self.row_shape
        return [
            (layer_name(i), layer_name(j), f"{shape.format(hs)} → {shape.format(ht)}", proj)
            for i, j in layer_map.pairs
        ]


class HiddenMSE(_HiddenLoss):
    """TinyBERT's hidden-state loss (embeddings included by ``uniform``).

    L = Σ_(i,j) (1 / (N · H_t)) Σ_n ‖W h_s^i[n] − h_t^j[n]‖²,  n over the N real tokens.
    """

    def pair_loss(self, s: Tensor, t: Tensor) -> Tensor:
        return (s - t).pow(2).sum() / max(s.numel(), 1)


class HiddenCosine(_HiddenLoss):
    """DistilBERT's cosine loss, by default on the last layer only.

    L = Σ_(i,j) (1/N) Σ_n (1 − cos(W h_s^i[n], h_t^j[n])),  n over the N real tokens.
    """

    def __init__(self, layer_map: str | Sequence[Sequence[int]] = "last", weight: float | Schedule = 1.0):
        super().__init__(layer_map, weight)

    def pair_loss(self, s: Tensor, t: Tensor) -> Tensor:
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).sum() / max(s.shape[0], 1)


class PatientKD(_HiddenLoss):
    """Patient KD (Sun et al., 2019): normalised [CLS] states of the mapped layers.

    L = Σ_(i,j) (1/B) Σ_b ‖ ĥ_s^i[b] − ĥ_t^j[b] ‖²,   ĥ = h[b, 0] / ‖h[b, 0]‖₂  ([CLS], after W).

    ``uniform`` maps transformer layers only (no embeddings) and includes the last pair; the paper's
    PKD-skip for 6 → 12 layers excludes it: ``[[1, 2], [2, 4], [3, 6], [4, 8], [5, 10]]``.
    """

    uniform_includes_embeddings = False
    row_shape = "[CLS] (B, {})"

    def select(self, h: Tensor, real: Tensor) -> Tensor:
        return h[:, 0]  # (B, H): [CLS] is always a real token

    def pair_loss(self, s: Tensor, t: Tensor) -> Tensor:
        # normalise after the projection, so W can rotate but the loss only sees directions
        diff = F.normalize(s, dim=-1) - F.normalize(t, dim=-1)  # (B, H_t)
        return diff.pow(2).sum() / max(s.shape[0], 1)
