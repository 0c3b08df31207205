"""Shared fixtures: tiny random BERTs (hidden 32, 2 layers) and padded batches."""

import logging
import os

# pytest-xdist runs one worker per core and most tests run `distill` (in the worker, tests/cli_run.py, or in a
# process of its own): each worker and every process it starts on one intra-op thread (inherited), not two
# workers x 2 OpenMP threads spinning against each other on 2 cores (two tiny pipelines side by side here:
# 34-40 s on one thread each, 41-66 s on two)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_config(**changes) -> BertConfig:
    base = dict(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, num_labels=3,
    )
    base.update(changes)
    config = BertConfig(**base)
    config._attn_implementation = "eager"  # transformers' reference path for attention maps
    return config


def padded_batch(seed: int = 0, batch: int = 4, length: int = 11, vocab: int = 99):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, batch):  # every row but the first is padded by a different amount
        mask[row, length - 2 * row:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """An in-process `distill train` lets Hydra configure the root logger with a handler on this test's
    captured stderr; later tests must not log into that closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def config():
    return tiny_config()
