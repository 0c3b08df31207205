"""Data: sources → ``TaskData`` → ``tokenize`` (cached) → ``Collator`` / ``make_dataloader`` batches."""

from distill.data.collate import Collator, make_dataloader
from distill.data.corpus import TaskData
from distill.data.tokenize import summarize, tokenize

__all__ = ["Collator", "TaskData", "make_dataloader", "summarize", "tokenize"]
