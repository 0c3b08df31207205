"""Task metrics from predicted and gold label ids: accuracy / macro-F1, or entity-level F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from seqeval.metrics import f1_score as entity_f1
from sklearn.metrics import accuracy_score, f1_score


def sequence_metrics(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """preds, labels (N,) → accuracy and macro-F1."""
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def token_tag_sequences(preds: np.ndarray, labels: np.ndarray, label_names: Sequence[str]):
    """(N, T) ids with -100 where there is no word → per-sentence lists of tag names (gold, pred)."""
    gold, pred = [], []
    for p_row, l_row in zip(preds, labels):
        keep = l_row != -100
        gold.append([label_names[i] for i in l_row[keep]])
        pred.append([label_names[i] for i in p_row[keep]])
    return gold, pred


def token_metrics(preds: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    """(N, T) ids → seqeval entity-level F1 (the NER standard) and token accuracy."""
    gold, pred = token_tag_sequences(preds, labels, label_names)
    real = labels != -100
    return {
        "entity_f1": float(entity_f1(gold, pred, zero_division=0)),
        "token_accuracy": float((preds[real] == labels[real]).mean()) if real.any() else 0.0,
    }


def compute_metrics(task: str, preds, labels, label_names: Sequence[str]) -> dict[str, float]:
    preds, labels = np.asarray(preds), np.asarray(labels)
    if task == "token":
        return token_metrics(preds, labels, label_names)
    return sequence_metrics(preds, labels)


def main_metric(task: str) -> str:
    """The metric that picks the best checkpoint and that retention is computed on."""
    return "entity_f1" if task == "token" else "accuracy"
