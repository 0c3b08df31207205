"""Attention-map losses on post-softmax probabilities, head by head (TinyBERT, MiniLM v1 style).

For each pair (i, j) of the layer map (transformer layers, 1..L — attention has no layer 0), the
student map ``attentions[i - 1]`` and teacher map ``attentions[j - 1]``, each (B, heads, T, T),
are compared at real query rows and real key columns only; padded rows are meaningless in our model
and padded columns hold no probability. Pair losses are SUMMED over the map.

Head counts must match; for students with other head counts use
:class:`distill.losses.relation.MiniLMRelation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from transformers import BertConfig

from distill.errors import DistillError
from distill.layer_map import LayerMap, check_depth, layer_name, source_layers
from distill.losses.base import DistillLoss, Row
from distill.losses.masking import as_float, field, real_tokens
from distill.losses.schedules import Schedule
from distill.outputs import ModelOutputs


class _AttentionLoss(DistillLoss):
    """Layer map + head-count check; subclasses define ``pair_loss``."""

    needs = frozenset({"attentions"})

    def __init__(self, layer_map: str | Sequence[Sequence[int]] = "uniform", weight: float | Schedule = 1.0):
        super().__init__(weight)
        self.layer_map_spec = layer_map
        self.layer_map: LayerMap | None = None

    def resolve(self, student_config: BertConfig, teacher_config: BertConfig) -> LayerMap:
        return LayerMap.resolve(
            self.layer_map_spec,
            student_config.num_hidden_layers,
            teacher_config.num_hidden_layers,
            embeddings=False,
            source=source_layers(student_config),
        )

    def setup(self, student_config: BertConfig, teacher_config: BertConfig | None) -> None:
        super().setup(student_config, teacher_config)
        s, t = student_config.num_attention_heads, teacher_config.num_attention_heads
        if s != t:
            raise DistillError(
                f"{self.name} compares attention maps head by head, but the student has {s} heads and the "
                f"teacher {t}; use distill.losses.relation.MiniLMRelation (any head count) or give the "
                f"student num_attention_heads={t}"
            )
        self.layer_map = self.resolve(student_config, teacher_config)

    def teacher_map_layers(self) -> frozenset[int] | None:
        return None if self.layer_map is None else frozenset(self.layer_map.teacher_layers())

    def pair_loss(self, s: Tensor, t: Tensor, rows: Tensor, keys: Tensor) -> Tensor:
        """s, t (B, nh, T, T); rows (B, 1, T, 1) real queries; keys (B, 1, 1, T) real keys → scalar."""
        raise NotImplementedError

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, Tensor]) -> Tensor:
        if self.layer_map is None:
            raise DistillError(f"{self.name} was not set up; call CompositeLoss.setup(student_config, teacher_config)")
        maps_s = field(student, "attentions", self.name, "student")
        maps_t = field(teacher, "attentions", self.name, "teacher")
        check_depth(self.name, self.layer_map, len(maps_s), len(maps_t))
        real = real_tokens(student, batch, maps_s[0][:, 0])  # (B, T)
        rows = real[:, None, :, None]  # (B, 1, T, 1)
        keys = real[:, None, None, :]  # (B, 1, 1, T)
        total = maps_s[0].new_zeros((), dtype=torch.float32)
        for i, j in self.layer_map.pairs:
            s, t = as_float(maps_s[i - 1], maps_t[j - 1])  # (B, nh, T, T); attentions[0] is layer 1
            total = total + self.pair_loss(s, t, rows, keys)
        return total

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        layer_map = self.resolve(student_config, teacher_config)
        nh_s, nh_t = student_config.num_attention_heads, teacher_config.num_attention_heads
        shapes = f"maps (B, {nh_s}, T, T) → (B, {nh_t}, T, T)"
        return [(layer_name(i), layer_name(j), shapes, "-") for i, j in layer_map.pairs]


class AttentionMSE(_AttentionLoss):
    """TinyBERT's attention loss (on probabilities, not pre-softmax scores).

    L = Σ_(i,j) Σ_{b,h,q,k real} (A_s^i − A_t^j)² / (heads · Σ_b n_b²),  n_b = real tokens of row b.
    """

    def pair_loss(self, s: Tensor, t: Tensor, rows: Tensor, keys: Tensor) -> Tensor:
        cells = rows & keys  # (B, 1, T, T)
        sq = (s - t).pow(2).masked_fill(~cells, 0.0)  # (B, nh, T, T)
        return sq.sum() / (cells.sum() * s.shape[1]).clamp_min(1)  # no host sync


class AttentionKL(_AttentionLoss):
    """KL between attention distributions, per head and real query row (MiniLM's attention transfer).

    L = Σ_(i,j) (1 / (heads · N)) Σ_{b,h,q real} Σ_{k real} A_t[q, k] · (log A_t[q, k] − log A_s[q, k]),
    N = real tokens in the batch.
    """

    def pair_loss(self, s: Tensor, t: Tensor, rows: Tensor, keys: Tensor) -> Tensor:
        t = t.masked_fill(~keys, 0.0)  # (B, nh, T, T); padded keys carry no probability
        # 1 at padded keys (log 0 there, no NaN gradient) and a floor at underflowed real keys
        s = s.masked_fill(~keys, 1.0).clamp_min(torch.finfo(s.dtype).tiny)
        kl = (torch.xlogy(t, t) - t * s.log()).sum(-1, keepdim=True)  # (B, nh, T, 1)
        kl = kl.masked_fill(~rows, 0.0)
        return kl.sum() / (rows.sum() * s.shape[1]).clamp_min(1)
