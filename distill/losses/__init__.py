"""Distillation losses: each term a small ``nn.Module`` with ``needs``; :class:`CompositeLoss` sums them.

Terms (build from YAML with ``_target_: distill.losses.<file>.<Class>``):
  logits.py     LogitsKL, SoftCrossEntropy, LogitsMSE
  mlm.py        MaskedLM, MaskedLMKD, NextSentence (pre-training objectives, general distillation)
  hard.py       HardCrossEntropy (gold labels, no teacher)
  hidden.py     HiddenMSE, HiddenCosine, PatientKD
  attention.py  AttentionMSE, AttentionKL
  relation.py   MiniLMRelation
  schedules.py  Constant, Linear (weights and temperatures as a function of progress)
"""

from distill.losses.attention import AttentionKL, AttentionMSE
from distill.losses.base import CompositeLoss, DistillLoss
from distill.losses.hard import HardCrossEntropy
from distill.losses.hidden import HiddenCosine, HiddenMSE, PatientKD
from distill.losses.logits import LogitsKL, LogitsMSE, SoftCrossEntropy
from distill.losses.mlm import MaskedLM, MaskedLMKD, NextSentence
from distill.losses.relation import MiniLMRelation
from distill.losses.schedules import Constant, Linear, Schedule

__all__ = [
    "AttentionKL",
    "AttentionMSE",
    "CompositeLoss",
    "Constant",
    "DistillLoss",
    "HardCrossEntropy",
    "HiddenCosine",
    "HiddenMSE",
    "Linear",
    "LogitsKL",
    "LogitsMSE",
    "MaskedLM",
    "MaskedLMKD",
    "MiniLMRelation",
    "NextSentence",
    "PatientKD",
    "Schedule",
    "SoftCrossEntropy",
]
