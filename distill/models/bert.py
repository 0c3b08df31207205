"""In-house BERT, weight-compatible 1:1 with Hugging Face's ``transformers`` BERT.

Module and parameter names follow ``transformers.models.bert.modeling_bert`` so a state dict maps
key for key. The configuration object *is* ``transformers.BertConfig`` (so ``config.json`` round
trips exactly); everything that computes is written here.

Attention has two paths:
  * fast path (no maps requested): ``F.scaled_dot_product_attention`` on a fused Q/K/V projection;
  * explicit path (maps requested, or training with attention dropout on a CPU, where SDPA would run
    these same ops with torch's slower dropout): ``softmax(q kᵀ / √d + mask) v`` that also returns the
    post-softmax probabilities (B, heads, T, T). Under bf16 autocast it computes in bf16, where SDPA's
    CPU math fallback upcast to fp32.

The task heads (sequence / token classification, masked LM) live in :mod:`distill.models.heads`.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig

from distill.errors import DistillError
from distill.models.ops import Dropout, Packing, activation, dense, dropout, linear, mask_bias
from distill.outputs import ModelOutputs

CPU_DROPOUT_EXPLICIT = True  # False: SDPA as before (benchmarks/dropout_speed.py times both)


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings → LayerNorm → dropout; output (B, T, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        if torch.onnx.is_in_onnx_export():  # the same rows gathered by position id: the graph onnxruntime fuses
            positions = torch.arange(T, device=input_ids.device).unsqueeze(0).expand_as(input_ids)  # (B, T)
            pos = self.position_embeddings(positions)  # (B, T, H)
        else:
            pos = self.position_embeddings.weight[:T]  # (T, H) broadcast over the batch
        return self.dropout(self.LayerNorm(x + pos))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention. Q/K/V weights are kept separate (HF names) and fused per call."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise DistillError(
                f"hidden_size={config.hidden_size} is not divisible by "
                f"num_attention_heads={config.num_attention_heads}; pick a head count that divides it"
            )
        self.n_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: Tensor, bias: Tensor, packing: Packing, need_map: bool, need_qkv: bool):
        """x (N, H) packed tokens, bias (B, 1, 1, T) → context (N, H), map (B, nh, T, T) | None,
        qkv (each (B, nh, T, d)) | None."""
        if torch.onnx.is_in_onnx_export() and not (need_map or need_qkv):
            return self._export_graph(x, bias, packing), None, None
        B, T, H = packing.B, packing.T, x.shape[-1]
        p = self.dropout_p if self.training else 0.0
        # SDPA with dropout on a CPU runs these same ops with torch's slower dropout (ops.dropout says why)
        explicit = need_map or (p > 0 and x.device.type == "cpu" and CPU_DROPOUT_EXPLICIT)
        # One GEMM instead of three: the (3H, H) weight is concatenated on the fly (cheap next to
        # the matmul). On the explicit path 1/√d is folded into the query weight, which saves a
        # full (B, nh, T, T) multiply forward and backward.
        scale = 1.0 / math.sqrt(self.head_dim) if explicit else 1.0
        qkv = linear(self, x, lambda: self._fused(scale), self._sources, variant=scale)
        qkv = packing.unpack(qkv)  # (B, T, 3H), zeros at padding
        qkv = qkv.view(B, T, 3, self.n_heads, self.head_dim)  # (B, T, 3, nh, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, d)
        probs = None
        if explicit:
            scores = torch.matmul(q, k.transpose(-1, -2)).add_(bias)  # (B, nh, T, T), in place
            probs = torch.softmax(scores, dim=-1)
            ctx = torch.matmul(dropout(probs, p) if p else probs, v)
            if need_qkv:
                q = q / scale  # hand the losses the unscaled query
            probs = probs if need_map else None
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p)
        ctx = ctx.transpose(1, 2).reshape(B, T, H)  # (B, nh, T, d) → (B, T, H)
        return packing.pack(ctx), probs, ((q, k, v) if need_qkv else None)

    @property
    def _sources(self) -> tuple[Tensor, ...]:
        return (self.query.weight, self.key.weight, self.value.weight, self.query.bias, self.key.bias,
                self.value.bias)

    def _fused(self, scale: float) -> tuple[Tensor, Tensor]:
        """The (3H, H) weight and (3H,) bias of Q/K/V in one, the query's scaled by ``scale``."""
        return (torch.cat((self.query.weight * scale, self.key.weight, self.value.weight)),
                torch.cat((self.query.bias * scale, self.key.bias, self.value.bias)))

    def _export_graph(self, x: Tensor, bias: Tensor, packing: Packing) -> Tensor:
        """The same attention as three projections and ``softmax(q kᵀ / √d + mask) v``, as transformers'
        eager BERT writes it: the graph onnxruntime's optimizer fuses into one Attention node (it
        recognises neither the fused Q/K/V projection nor SDPA's decomposition)."""
        B, T, H = packing.B, packing.T, x.shape[-1]
        x = packing.unpack(x)  # (B, T, H)

        def heads(t: Tensor) -> Tensor:  # (B, T, H) → (B, nh, T, d)
            return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias  # (B, nh, T, T)
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, nh, T, d)
        return packing.pack(ctx.transpose(1, 2).reshape(B, T, H))


class BertSelfOutput(nn.Module):
    """dense → dropout → LayerNorm(· + residual)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(dense(self.dense, x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: Tensor, bias: Tensor, packing: Packing, need_map: bool, need_qkv: bool):
        ctx, probs, qkv = self.self(x, bias, packing, need_map, need_qkv)
        return self.output(ctx, x), probs, qkv


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        activation(config.hidden_act)  # an unknown name stops here, when the model is built
        self.act_name = config.hidden_act

    def forward(self, x: Tensor) -> Tensor:
        return dense(self.dense, x, self.act_name)


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(dense(self.dense, x)) + residual)


class BertLayer(nn.Module):
    """attention → feed-forward, post-LayerNorm as in the original BERT."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: Tensor, bias: Tensor, packing: Packing, need_map: bool, need_qkv: bool):
        h, probs, qkv = self.attention(x, bias, packing, need_map, need_qkv)
        return self.output(self.intermediate(h), h), probs, qkv


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    """tanh(W · h[CLS]); (B, T, H) → (B, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.dense(h[:, 0]))


class BertPreTrainedModel(nn.Module):
    """Shared init (HF's ``_init_weights``) and the common forward signature."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class BertModel(BertPreTrainedModel):
    """The bare encoder: embeddings → L layers (→ optional pooler).

    ``skip_padding`` (default on) runs every per-token layer on the real tokens only (see
    :class:`Packing`); hidden states then hold zeros at padded positions instead of the values
    transformers computes there, which no mask-respecting consumer reads.
    """

    task = "base"

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.skip_padding = True
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool | Collection[int] = False,
        output_qkv: bool = False,
        **unused: Tensor,
    ) -> ModelOutputs:
        """input_ids (B, T) → ModelOutputs with last_hidden_state (B, T, H) and what was asked.

        ``output_attentions`` may name layers (1-based): only those take the explicit-map path, the
        rest keep the SDPA fast path and hold ``None`` in ``attentions`` (a teacher whose maps are
        read at 2 of 6 layers saves the other 4 maps).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        output_attentions = bool(output_attentions) if output_attentions in (None, 0, 1) else output_attentions
        packing = Packing(attention_mask, self.skip_padding)
        h = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        bias = mask_bias(attention_mask, h.dtype)  # (B, 1, 1, T)
        hidden, maps, qkvs = [packing.unpack(packing.pack(h))] if output_hidden_states else [], [], []
        h = packing.pack(h)  # (N, H)
        for n, layer in enumerate(self.encoder.layer, 1):
            need_map = output_attentions if isinstance(output_attentions, bool) else n in output_attentions
            h, probs, qkv = layer(h, bias, packing, need_map, output_qkv)
            if output_hidden_states:
                hidden.append(packing.unpack(h))
            if output_attentions is not False:
                maps.append(probs)
            if output_qkv:
                qkvs.append(qkv)
        return ModelOutputs(
            hidden_states=tuple(hidden),
            attentions=tuple(maps),
            qkv=tuple(qkvs),
            attention_mask=attention_mask,
            last_hidden_state=hidden[-1] if output_hidden_states else packing.unpack(h),
        )
