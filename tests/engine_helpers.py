"""A tiny, fully deterministic distillation setup for loop tests (also run as a subprocess)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

import distill.checkpoint
from distill.data.collate import Collator
from distill.engine import TrainerConfig
from distill.errors import DistillError
from distill.losses.attention import AttentionMSE
from distill.losses.base import CompositeLoss
from distill.losses.hard import HardCrossEntropy
from distill.losses.hidden import HiddenMSE
from distill.losses.logits import LogitsKL
from distill.losses.relation import MiniLMRelation
from distill.models import heads
from tests.conftest import tiny_config


class KDTestLoss(nn.Module):
    """Logits KL (T=2) + CE, the engine-facing interface of distill.losses without its internals."""

    needs = frozenset({"logits"})
    uses_teacher = True

    def __init__(self, with_teacher: bool = True):
        super().__init__()
        self.uses_teacher = with_teacher

    def setup(self, student_config, teacher_config):
        pass

    def set_progress(self, step, total_steps):
        self.progress = step / total_steps

    def forward(self, student, teacher, batch):
        ce = F.cross_entropy(student.logits, batch["labels"])
        parts = {"hard": ce.detach()}
        total = ce
        if self.uses_teacher:
            kl = F.kl_div(F.log_softmax(student.logits / 2, -1), F.softmax(teacher.logits.float() / 2, -1),
                          reduction="batchmean") * 4
            parts["kd"] = kl.detach()
            total = total + kl
        parts["total"] = total.detach()
        return total, parts


def dataset(n: int = 48, seed: int = 0, length: int = 12) -> Dataset:
    """Label 1 iff token 7 occurs; variable lengths so batches carry padding."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "labels": [], "idx": []}
    for i in range(n):
        size = int(torch.randint(4, length, (1,), generator=g))
        ids = torch.randint(8, 99, (size,), generator=g)
        label = i % 2
        if label:
            ids[int(torch.randint(1, size, (1,), generator=g))] = 7
        rows["input_ids"].append([1] + ids.tolist())
        rows["attention_mask"].append([1] * (size + 1))
        rows["token_type_ids"].append([0] * (size + 1))
        rows["labels"].append(label)
        rows["idx"].append(i)
    return Dataset.from_dict(rows)


collate = Collator(pad_token_id=0)  # the framework's own collator: the loop is tested on the batches it trains on


def loaders(batch_size: int = 8, n: int = 48):
    # its own generator: creating an iterator then never draws from the global RNG (exact resume)
    train = torch.utils.data.DataLoader(dataset(n, 0), batch_size=batch_size, shuffle=True, collate_fn=collate,
                                        generator=torch.Generator().manual_seed(0))
    val = torch.utils.data.DataLoader(dataset(16, 1), batch_size=batch_size, collate_fn=collate)
    return train, val


def models(dropout: float = 0.0):
    torch.manual_seed(0)
    config = tiny_config(num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    teacher = heads.BertForSequenceClassification(config)
    teacher.init_weights()
    student = heads.BertForSequenceClassification(tiny_config(num_labels=2, num_hidden_layers=1,
                                                             hidden_dropout_prob=dropout,
                                                             attention_probs_dropout_prob=dropout))
    student.init_weights()
    return teacher, student


def config(**changes) -> TrainerConfig:
    base = dict(epochs=2, lr=1e-3, warmup_ratio=0.0, log_every=2, keep_last=2, teacher_cache=False)
    base.update(changes)
    return TrainerConfig(**base)


class SignalAt(KDTestLoss):
    """Sends this process ``sig`` during the forward of call ``n``: a fault at an exact step, no clock."""

    def __init__(self, n: int, sig: int):
        super().__init__()
        self.n, self.sig, self.calls = n, sig, 0

    def forward(self, student, teacher, batch):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.sig)
        return super().forward(student, teacher, batch)


class LayerKDLoss(CompositeLoss):
    """Logits KL + hidden MSE + attention MSE + MiniLM relations: every field a teacher cache can hold, at a
    subset of the teacher's layers. ``signal_at=(n, sig)`` sends ``sig`` during forward call ``n``."""

    def __init__(self, teacher, student, signal_at: tuple[int, int] | None = None):
        super().__init__(logits=LogitsKL(temperature=2.0), hard=HardCrossEntropy(weight=0.5),
                         hidden=HiddenMSE(layer_map="uniform"), attention=AttentionMSE(layer_map="uniform"),
                         relation=MiniLMRelation(layer_map="last"))
        self.setup(student.config, teacher.config)
        self.signal_at, self.calls = signal_at, 0

    def forward(self, student, teacher, batch):
        self.calls += 1
        if self.signal_at is not None and self.calls == self.signal_at[0]:
            os.kill(os.getpid(), self.signal_at[1])
        return super().forward(student, teacher, batch)


def cut_by_ctrl_c_and_resumed(run, root, message: str) -> tuple[dict, object]:
    """``run(out_dir, loss)`` trained whole, then cut by SIGINT at step 3 and run again: (the whole run's
    state_dict, the resumed run's result), after checking the cut said ``message`` (a regex) and left exactly its
    step-3 checkpoint."""
    full = run(root / "full", KDTestLoss()).student.state_dict()
    with pytest.raises(DistillError, match=message):
        run(root / "cut", SignalAt(3, signal.SIGINT))
    assert [p.name for p in distill.checkpoint.checkpoints(root / "cut")] == ["step_00000003"]
    return full, run(root / "cut", KDTestLoss())
