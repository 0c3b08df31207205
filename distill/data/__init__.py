"""Data: sources → ``TaskData`` → ``tokenize`` (cached) → ``Collator`` / ``make_dataloader`` batches.

Import ``tokenize`` from ``distill.data.tokenize``: re-exporting the function here would hide the
submodule of the same name (and break ``monkeypatch``/``import distill.data.tokenize as m``).
"""

from distill.data.collate import Collator, make_dataloader
from distill.data.corpus import TaskData

__all__ = ["Collator", "TaskData", "make_dataloader"]
