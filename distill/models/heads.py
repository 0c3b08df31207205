"""Task heads on the in-house encoder, named as in ``transformers`` so state dicts map key for key.

``TASK_CLASSES`` maps a task name (sequence | token | mlm | pretraining | base) to its class: what every loader
(``hub.from_pretrained``, the student builders) instantiates.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig

from distill.models.bert import BertModel, BertPreTrainedModel
from distill.models.ops import Dropout, activation
from distill.outputs import ModelOutputs


class _Classifier(BertPreTrainedModel):
    """Encoder (+ pooler when ``pooling``) → dropout → linear to ``num_labels``: HF's module names."""

    def __init__(self, config: BertConfig, pooling: bool):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=pooling)
        drop = config.classifier_dropout
        self.dropout = Dropout(config.hidden_dropout_prob if drop is None else drop)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)


class BertForSequenceClassification(_Classifier):
    """[CLS] → pooler → dropout → linear; logits (B, C)."""

    task = "sequence"

    def __init__(self, config: BertConfig):
        super().__init__(config, pooling=True)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw) -> ModelOutputs:
        out = self.bert(input_ids, attention_mask, **kw)
        logits = self.classifier(self.dropout(self.bert.pooler(out.last_hidden_state)))
        return _with_logits(out, logits)


class BertForTokenClassification(_Classifier):
    """Every token → dropout → linear; logits (B, T, C)."""

    task = "token"

    def __init__(self, config: BertConfig):
        super().__init__(config, pooling=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw) -> ModelOutputs:
        out = self.bert(input_ids, attention_mask, **kw)
        return _with_logits(out, self.classifier(self.dropout(out.last_hidden_state)))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform → decoder tied to the word embeddings (+ its own bias); (B, T, H) → (B, T, V)."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied, as in HF
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.transform(x), self.decoder.weight, self.bias)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)


class BertForMaskedLM(BertPreTrainedModel):
    """Masked-LM head (BERT's pre-training objective); logits (B, T, V), or (N, V) at ``mlm_positions``."""

    task = "mlm"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config, self.bert.embeddings.word_embeddings)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.zeros_(self.cls.predictions.bias)  # HF's init: the decoder bias starts at zero

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, mlm_positions: Tensor | None = None,
                **kw) -> ModelOutputs:
        out = self.bert(input_ids, attention_mask, **kw)
        return _with_logits(out, self.cls.predictions(_at(out.last_hidden_state, mlm_positions)))


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertForPreTraining(BertForMaskedLM):
    """BERT's two pre-training heads: masked-LM logits (B, T, V) — (N, V) at ``mlm_positions`` when given —
    and next-sentence logits (B, 2) from the pooled [CLS] (``cls.predictions.*``, ``cls.seq_relationship.*``:
    transformers' ``BertForPreTraining`` keys)."""

    task = "pretraining"

    def __init__(self, config: BertConfig):
        BertPreTrainedModel.__init__(self, config)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, mlm_positions: Tensor | None = None,
                **kw) -> ModelOutputs:
        out = self.bert(input_ids, attention_mask, **kw)
        nsp = self.cls.seq_relationship(self.bert.pooler(out.last_hidden_state))  # (B, 2)
        logits = self.cls.predictions(_at(out.last_hidden_state, mlm_positions))
        return dataclasses.replace(out, logits=logits, nsp_logits=nsp)


def _at(hidden: Tensor, positions: Tensor | None) -> Tensor:
    """(B, T, H) → (N, H) at ``positions`` (B, T) bool, row-major: only the masked tokens go through the
    vocabulary-sized decoder (a 4×128 student's full (B, T, 30522) logits would be most of a step)."""
    return hidden if positions is None else hidden[positions.bool()]


def _with_logits(out: ModelOutputs, logits: Tensor) -> ModelOutputs:
    return dataclasses.replace(out, logits=logits)


TASK_CLASSES = {
    "sequence": BertForSequenceClassification,
    "token": BertForTokenClassification,
    "mlm": BertForMaskedLM,
    "pretraining": BertForPreTraining,
    "base": BertModel,
}
