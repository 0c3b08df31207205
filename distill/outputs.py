"""What a model hands to the losses: one frozen record per forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

IGNORE_INDEX = -100  # the label every loss and metric skips: padding, non-first sub-words, unmasked tokens,
# rows the teacher labels (torch's cross-entropy default)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what every model (and ONNX graph) takes
# a teacher with its own tokenizer (distill.models.foreign): its encoding of the same rows
TEACHER_INPUTS = ("teacher_input_ids", "teacher_attention_mask", "teacher_token_type_ids", "teacher_word_index")


@dataclass(frozen=True)
class ModelOutputs:
    """Outputs of :class:`distill.models.bert.BertModel` and its heads.

    Attributes:
        logits: (B, C) for sequence tasks, (B, T, C) for token tasks and masked-LM (C = vocab; (N, C)
            at the N masked positions when the batch names them); None for the bare encoder.
        nsp_logits: (B, 2) next-sentence logits of the pre-training model (0 = B follows A).
        hidden_states: L+1 entries when requested, [0] = embeddings output, each (B, T, H).
        attentions: L entries when requested, post-softmax probabilities (B, heads, T, T).
        qkv: L entries when requested, each (query, key, value) of shape (B, heads, T, d).
        attention_mask: (B, T), 1 = real token, 0 = padding.
        last_hidden_state: (B, T, H), the encoder's final output (always present).
    """

    logits: Tensor | None = None
    nsp_logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] = ()
    attentions: tuple[Tensor, ...] = ()
    qkv: tuple[tuple[Tensor, Tensor, Tensor], ...] = ()
    attention_mask: Tensor | None = None
    last_hidden_state: Tensor | None = None
