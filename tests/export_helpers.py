"""Tiny text fixtures for compare/export/trim tests: a WordPiece vocab, tiny models, tokenized rows."""

from __future__ import annotations

import random

import torch
from transformers import BertTokenizerFast

from distill.models import heads
from tests.conftest import tiny_config

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "film", "movie", "plot", "cast", "story", "it", "was", "is", "not", "very", "and", "but",
         "good", "bad", "great", "dull", "funny", "boring", "moving", "slow", "play", "run", "watch",
         "##s", "##ing", "##ed", "##ly"]
PLAIN = [w for w in WORDS if not w.startswith("##")]


def tiny_tokenizer() -> BertTokenizerFast:
    """A lower-casing BERT WordPiece tokenizer over 5 specials + 29 tokens (ids 0..33)."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)


def tiny_model(task: str = "sequence", vocab_size: int = 34, labels=("negative", "positive"), seed: int = 0,
               **config):
    """A random hidden-32, 2-layer BERT of ``task`` whose config names ``labels``.

    ``initializer_range=0.2`` gives a head whose answers vary with the input (at BERT's 0.02 a
    random sequence head answers one class for everything)."""
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=vocab_size, num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={n: i for i, n in enumerate(labels)}, **config)
    model = heads.TASK_CLASSES[task](config)
    model.init_weights()
    return model.eval()


def sentences(n: int, seed: int = 0, words=PLAIN) -> list[list[str]]:
    """``n`` random sentences of 3–12 words; some words get a suffix piece (``play`` + ``##ing``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sent = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        out.append([w + rng.choice(["s", "ing", "ed", "ly"]) if w in ("play", "run", "watch") else w for w in sent])
    return out


def sequence_rows(tokenizer, texts: list[str], labels: list[int]) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=64)
    return [{**dict(zip(enc, vals)), "labels": int(y)} for vals, y in zip(zip(*enc.values()), labels)]


def token_rows(tokenizer, words: list[list[str]], tags: list[list[int]]) -> list[dict]:
    """Word-level tags → token rows: the tag on each word's first sub-token, -100 elsewhere."""
    rows = []
    for i, (sent, sent_tags) in enumerate(zip(words, tags)):
        enc = tokenizer(sent, is_split_into_words=True, truncation=True, max_length=64)
        labels, previous = [], None
        for w in enc.word_ids():
            labels.append(-100 if w is None or w == previous else sent_tags[w])
            previous = w
        rows.append({**{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, "labels": labels,
                     "idx": i})
    return rows
