"""A compact student cut out of the teacher: its most active hidden channels, heads and FFN neurons.

Width pruning as Minitron does it (Muralidharan et al. 2024, "Compact Language Models via Pruning and
Knowledge Distillation"): rank every hidden channel, attention head and feed-forward neuron of the
teacher by its mean activation on a sample of the training text, keep the top ones in the chosen
layers and slice the teacher's weights to them. The student starts from the teacher's own features
instead of random layers (TinyBERT needs a general-distillation stage for that); distillation then
retrains it. Importance over the real tokens of the calibration rows:

  channel c  Σ over the LayerNorms of every layer of mean |LN(x)_c|     (H_t,)
  head h     mean ‖context_h‖₂, the head's slice of the attention output (nh_t,) per layer
  neuron n   mean |act(x W_in + b)_n|, the feed-forward intermediate      (I_t,) per layer

The student keeps the teacher's head size d (so its 1/√d is the teacher's): num_attention_heads =
hidden_size / d. A LayerNorm keeps γ and β of the kept channels and normalises over those only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.layer_map import SOURCE_LAYERS
from distill.models.bert import BertLayer, BertModel, BertPreTrainedModel
from distill.models.hub import load_tokenizer
from distill.models.student import encoder_of, require_same_vocab, single_teacher, student_config, teacher_layers

log = logging.getLogger(__name__)


@dataclass
class Importance:
    """Activation importance of the teacher's parts (higher: kept first)."""

    channels: Tensor  # (H_t,)
    heads: list[Tensor]  # per layer (nh_t,)
    neurons: list[Tensor]  # per layer (I_t,)


def calibration_rows(texts: Sequence[str], rows: int) -> list[str]:
    """``rows`` texts spread evenly over ``texts`` (all of them when fewer): the same sample every seed."""
    if rows < 1:
        raise DistillError(f"student.calibration={rows}: rank on at least 1 training row (default 1024)")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DistillError("a pruned student ranks the teacher's parts on the training text, and it has none: "
                           "check data.text_column and data.limit")
    k = min(rows, len(texts))
    return [texts[i * len(texts) // k] for i in range(k)]


@torch.no_grad()
def importance(encoder: BertModel, batches) -> Importance:
    """Mean activations (see the module docstring) over the real tokens of ``batches``
    (dicts with input_ids and attention_mask)."""
    layers = list(encoder.encoder.layer)
    nh, d = layers[0].attention.self.n_heads, layers[0].attention.self.head_dim
    sums = {"channels": 0.0, "heads": [0.0] * len(layers), "neurons": [0.0] * len(layers)}

    def rows(out: Tensor) -> Tensor:  # packed (N, D) or, with no padding in the batch, (B, T, D)
        return out.reshape(-1, out.shape[-1]).float()

    def add_channels(_m, _i, out):
        sums["channels"] = sums["channels"] + rows(out).abs().sum(0)

    hooks = []
    for i, layer in enumerate(layers):
        def add_heads(_m, _i, out, i=i):
            sums["heads"][i] = sums["heads"][i] + rows(out[0]).view(-1, nh, d).norm(dim=-1).sum(0)

        def add_neurons(_m, _i, out, i=i):
            sums["neurons"][i] = sums["neurons"][i] + rows(out).abs().sum(0)

        hooks += [layer.attention.self.register_forward_hook(add_heads),
                  layer.intermediate.register_forward_hook(add_neurons),
                  layer.attention.output.LayerNorm.register_forward_hook(add_channels),
                  layer.output.LayerNorm.register_forward_hook(add_channels)]
    tokens = 0
    was_training, skipped = encoder.training, encoder.skip_padding
    try:
        encoder.eval()
        encoder.skip_padding = True  # the hooks then see real tokens only, packed (N, D)
        for batch in batches:
            encoder(batch["input_ids"], batch["attention_mask"])
            tokens += int(batch["attention_mask"].sum())
    finally:
        encoder.train(was_training)
        encoder.skip_padding = skipped
        for hook in hooks:
            hook.remove()
    if not tokens:
        raise DistillError("student=pruned found no tokens in the calibration text")
    return Importance(sums["channels"] / tokens, [h / tokens for h in sums["heads"]],
                      [n / tokens for n in sums["neurons"]])


def top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, in their original order (ties: the lower index)."""
    order = torch.argsort(-scores, stable=True)[:k]
    return order.sort().values


@torch.no_grad()
def _copy(dst: nn.Module, src: nn.Module, rows: Tensor | None, cols: Tensor | None) -> None:
    """dst.weight = src.weight[rows][:, cols] (a LayerNorm or bias: [rows]); None keeps a whole dim."""
    weight = src.weight if rows is None else src.weight.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    dst.weight.copy_(weight)
    if getattr(src, "bias", None) is not None:
        dst.bias.copy_(src.bias if rows is None else src.bias.index_select(0, rows))


def slice_layer(dst: BertLayer, src: BertLayer, channels: Tensor, heads: Tensor, neurons: Tensor) -> None:
    """One encoder layer cut to the kept hidden channels C, heads and feed-forward neurons:
    Q/K/V (H_t, H_t) → (nh_s·d, H_s), attention output (H_t, H_t) → (H_s, nh_s·d), LayerNorms (H_t,) →
    (H_s,), intermediate (I_t, H_t) → (I_s, H_s), output (H_t, I_t) → (H_s, I_s)."""
    d = src.attention.self.head_dim
    head_rows = (heads[:, None] * d + torch.arange(d, device=heads.device)).reshape(-1)  # kept heads' Q/K/V rows
    for name in ("query", "key", "value"):
        _copy(getattr(dst.attention.self, name), getattr(src.attention.self, name), head_rows, channels)
    _copy(dst.attention.output.dense, src.attention.output.dense, channels, head_rows)
    _copy(dst.attention.output.LayerNorm, src.attention.output.LayerNorm, channels, None)
    _copy(dst.intermediate.dense, src.intermediate.dense, neurons, channels)
    _copy(dst.output.dense, src.output.dense, channels, neurons)
    _copy(dst.output.LayerNorm, src.output.LayerNorm, channels, None)


@torch.no_grad()
def slice_rest(student: nn.Module, teacher: nn.Module, channels: Tensor, hs: int, ht: int) -> None:
    """Embeddings, pooler and task head: every dimension of the teacher's hidden size cut to ``channels``
    (word embeddings (V, H), classifier (labels, H), pooler (H, H), LayerNorms (H,)). Every other dim
    (vocabulary, positions, labels) is the same in both, so only hidden dims match (hs, ht)."""
    own = {k: v for k, v in student.named_parameters() if ".encoder.layer." not in f".{k}"}
    for name, value in teacher.named_parameters():
        if name not in own:
            continue
        for dim, (s, t) in enumerate(zip(own[name].shape, value.shape)):
            if (s, t) == (hs, ht):
                value = value.index_select(dim, channels)
        if value.shape == own[name].shape:
            own.pop(name).copy_(value)
    if own:  # a head the teacher lacks (or shaped otherwise) would start random without a word
        raise DistillError(f"a pruned student takes every weight from the teacher, which has none for "
                           f"{sorted(own)[:3]}; fine-tune the teacher on this task first")


def check_shape(ct, hidden_size: int, num_attention_heads: int, intermediate_size: int) -> None:
    """A pruned student is cut out of the teacher (``ct`` its config): no wider, same head size."""
    d = ct.hidden_size // ct.num_attention_heads
    for name, value, most in (("hidden_size", hidden_size, ct.hidden_size),
                              ("intermediate_size", intermediate_size, ct.intermediate_size)):
        if not 0 < value <= most:
            raise DistillError(f"student.{name}={value}, but a pruned student is cut out of the teacher's {most}; "
                               f"set it in 1..{most}")
    if hidden_size != num_attention_heads * d:
        raise DistillError(f"student.hidden_size={hidden_size} with the teacher's head size {d} needs "
                           f"num_attention_heads={hidden_size / d:g} (hidden_size a multiple of {d}), "
                           f"not {num_attention_heads}")


def student_pruned_from_teacher(
    teacher: BertPreTrainedModel,
    layers: Sequence[int],
    hidden_size: int,
    num_attention_heads: int,
    intermediate_size: int,
    texts: Sequence[str] | None = None,
    calibration: int = 1024,
    max_length: int = 128,
    attention_probs_dropout_prob: float | None = None,
    hidden_dropout_prob: float | None = None,
) -> BertPreTrainedModel:
    """The teacher's ``layers`` (0-based), each cut to its ``num_attention_heads`` and ``intermediate_size``
    most active heads and neurons, over its ``hidden_size`` most active hidden channels, ranked on
    ``calibration`` rows of ``texts`` (the training split; the run passes it)."""
    teacher = single_teacher(teacher)
    require_same_vocab(teacher, "student=pruned_*", "pick a student of its own, e.g. student=bert_l4_h128")
    ct = teacher.config
    layers = teacher_layers(layers, ct.num_hidden_layers)
    check_shape(ct, hidden_size, num_attention_heads, intermediate_size)
    if texts is None:
        raise DistillError("a pruned student ranks the teacher's parts on the training text; build it through "
                           "distill train / pipeline (which pass texts=) or give texts")
    if not ct.name_or_path:
        raise DistillError("a pruned student tokenizes its calibration text with the teacher's tokenizer, and "
                           "this teacher names none (config.name_or_path); load it from its dir")
    tokenizer = load_tokenizer(ct.name_or_path)
    sample = calibration_rows(texts, calibration)
    device = next(teacher.parameters()).device
    batches = (tokenizer(sample[i:i + 64], truncation=True, max_length=max_length, padding=True,
                         return_tensors="pt").to(device) for i in range(0, len(sample), 64))
    t_enc = encoder_of(teacher)
    score = importance(t_enc, batches)
    config = student_config(teacher, num_hidden_layers=len(layers), hidden_size=hidden_size,
                            num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                            attention_probs_dropout_prob=attention_probs_dropout_prob,
                            hidden_dropout_prob=hidden_dropout_prob, **{SOURCE_LAYERS: layers})
    student = type(teacher)(config)
    student.init_weights()
    channels = top(score.channels, hidden_size).to(device)
    for s_layer, i_t in zip(encoder_of(student).encoder.layer, layers):
        slice_layer(s_layer, t_enc.encoder.layer[i_t], channels,
                    top(score.heads[i_t], num_attention_heads).to(device),
                    top(score.neurons[i_t], intermediate_size).to(device))
    slice_rest(student, teacher, channels, hidden_size, ct.hidden_size)
    log.info("student pruned from teacher layers %s: %d of %d hidden channels, %d of %d heads, %d of %d "
             "neurons per layer, ranked on %d training rows", layers, hidden_size, ct.hidden_size,
             num_attention_heads, ct.num_attention_heads, intermediate_size, ct.intermediate_size, len(sample))
    return student
