"""MiniLM / MiniLMv2 self-attention relation distillation — any hidden size, any head count.

At each mapped layer (transformer layers 1..L; default the last) the per-head query, key and value
vectors (B, heads, T, d) are concatenated back to (B, T, H) and re-split into A_r *relation heads*
of size d_r = H / A_r, the same A_r for student and teacher (so head counts may differ). For a
relation xy (e.g. "qq": queries with queries):

    R_xy = softmax(X Yᵀ / √d_r)  over real keys            (B, A_r, T, T)
    L_xy = (1 / (A_r · N)) Σ_{b, a, q real} KL(R_xy^t[b, a, q] ‖ R_xy^s[b, a, q])

L = Σ_layers Σ_relations L_xy. MiniLMv2: relations qq, kk, vv; MiniLM: qk (the attention
distribution when A_r = heads) and vv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import BertConfig

from distill.errors import DistillError
from distill.layer_map import LayerMap, check_depth, layer_name, source_layers
from distill.losses.base import DistillLoss, Row
from distill.losses.masking import as_float, field, real_tokens
from distill.losses.schedules import Schedule
from distill.outputs import ModelOutputs

QKV = "qkv"  # position of each letter in a ModelOutputs.qkv triple


class MiniLMRelation(DistillLoss):
    """Relation KL between teacher and student Q/K/V self-relations.

    Args:
        layer_map: ``last`` (default), ``uniform`` or [[student, teacher], ...] (1 = first layer).
        relations: pairs of letters from q, k, v; default MiniLMv2's ``["qq", "kk", "vv"]``.
        relation_heads: A_r; must divide both hidden sizes. None: the larger of the two head counts
            that divides both hidden sizes.
    """

    needs = frozenset({"qkv"})

    def __init__(
        self,
        layer_map: str | Sequence[Sequence[int]] = "last",
        relations: Sequence[str] = ("qq", "kk", "vv"),
        relation_heads: int | None = None,
        weight: float | Schedule = 1.0,
    ):
        super().__init__(weight)
        relations = tuple(str(r) for r in relations)
        if not relations or any(len(r) != 2 or set(r) - set(QKV) for r in relations):
            raise DistillError(
                f"relations={list(relations)} is not understood; use pairs of q, k, v such as "
                f"['qq', 'kk', 'vv'] (MiniLMv2) or ['qk', 'vv'] (MiniLM)"
            )
        self.relations = relations
        self.relation_heads_spec = relation_heads
        self.relation_heads: int | None = None
        self.layer_map_spec = layer_map
        self.layer_map: LayerMap | None = None

    def resolve(self, student_config: BertConfig, teacher_config: BertConfig) -> tuple[LayerMap, int]:
        layer_map = LayerMap.resolve(
            self.layer_map_spec, student_config.num_hidden_layers, teacher_config.num_hidden_layers, embeddings=False,
            source=source_layers(student_config),
        )
        hs, ht = student_config.hidden_size, teacher_config.hidden_size
        heads = self.relation_heads_spec
        if heads is None:
            fits = [n for n in (teacher_config.num_attention_heads, student_config.num_attention_heads)
                    if hs % n == 0 and ht % n == 0]
            heads = max(fits, default=None)
        if heads is None or heads < 1 or hs % heads or ht % heads:
            common = [n for n in range(1, 65) if hs % n == 0 and ht % n == 0]
            raise DistillError(
                f"{self.name}: relation_heads={heads} must divide both hidden sizes (student {hs}, teacher "
                f"{ht}); set relation_heads to one of {common}"
            )
        return layer_map, int(heads)

    def setup(self, student_config: BertConfig, teacher_config: BertConfig | None) -> None:
        super().setup(student_config, teacher_config)
        self.layer_map, self.relation_heads = self.resolve(student_config, teacher_config)

    def teacher_layers(self, field: str) -> frozenset[int] | None:
        return None if field != "qkv" or self.layer_map is None else frozenset(self.layer_map.teacher_layers())

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, Tensor]) -> Tensor:
        if self.layer_map is None:
            raise DistillError(f"{self.name} was not set up; call CompositeLoss.setup(student_config, teacher_config)")
        qkv_s = field(student, "qkv", self.name, "student")
        qkv_t = field(teacher, "qkv", self.name, "teacher")
        check_depth(self.name, self.layer_map, len(qkv_s), len(qkv_t))
        real = real_tokens(student, batch, qkv_s[0][0][:, 0])  # (B, T)
        rows = real[:, None, :]  # (B, 1, T)
        keys = real[:, None, None, :]  # (B, 1, 1, T)
        A = self.relation_heads
        total = qkv_s[0][0].new_zeros((), dtype=torch.float32)
        for i, j in self.layer_map.pairs:
            s_layer, t_layer = qkv_s[i - 1], qkv_t[j - 1]  # qkv[0] is layer 1
            for x, y in self.relations:
                sx, tx = as_float(s_layer[QKV.index(x)], t_layer[QKV.index(x)])
                sy, ty = as_float(s_layer[QKV.index(y)], t_layer[QKV.index(y)])
                log_s = relation_log_probs(split_heads(sx, A), split_heads(sy, A), keys)  # (B, A, T, T)
                log_t = relation_log_probs(split_heads(tx, A), split_heads(ty, A), keys)
                kl = torch.where(keys, log_t.exp() * (log_t - log_s), 0.0).sum(-1)  # (B, A, T)
                total = total + kl.masked_fill(~rows, 0.0).sum() / (rows.sum() * A).clamp_min(1)
        return total

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        layer_map, A = self.resolve(student_config, teacher_config)
        hs, ht = student_config.hidden_size, teacher_config.hidden_size
        rel = ",".join(self.relations)
        shapes = f"{rel}: (B, T, {hs}) → (B, T, {ht}) as {A} heads of {hs // A}/{ht // A} → (B, {A}, T, T)"
        return [(f"{layer_name(i)} qkv", f"{layer_name(j)} qkv", shapes, "-") for i, j in layer_map.pairs]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, nh, T, d) attention heads → (B, A, T, H / A) relation heads, H = nh · d."""
    B, nh, T, d = x.shape
    x = x.transpose(1, 2).reshape(B, T, nh * d)  # (B, T, H)
    return x.view(B, T, heads, nh * d // heads).transpose(1, 2)  # (B, A, T, d_r)


def relation_log_probs(x: Tensor, y: Tensor, keys: Tensor) -> Tensor:
    """log softmax(x yᵀ / √d_r) over real keys; x, y (B, A, T, d_r), keys (B, 1, 1, T) → (B, A, T, T)."""
    scores = torch.matmul(x, y.transpose(-1, -2)) / math.sqrt(x.shape[-1])  # (B, A, T, T)
    return F.log_softmax(scores.masked_fill(~keys, torch.finfo(scores.dtype).min), dim=-1)
