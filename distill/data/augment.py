"""N teacher-labelled variants of every training example (TinyBERT's augmentation, built in).

    augment=words            # conf/augment/words.yaml → data.augment: {n: 8, p: 0.4, top_k: 15, ...}

For every training row, ``n`` variants: each eligible word is replaced with probability ``p`` by one
of its ``top_k`` candidates —
  * a word that is one vocabulary token: the masked-LM's top-K for it in context (``contextual.py``;
    the packaged teacher has no masked-LM head, ``mlm_head.py`` fits one once on the corpus's text);
  * a word of several pieces: its nearest whole words in the teacher's embedding space (``neighbours.py``);
  * token tasks: only ``O`` words are replaced, and each entity mention is swapped with probability
    ``swap_mentions`` for another mention of its type from the training split (``mentions.py``), so
    tags stay aligned; with ``entity_words`` the words inside mentions are replaced too, so the student
    meets entity-like words the training split never had, with the teacher's tags for them (their
    carried-over tags become guesses, which only the teacher-labelled setting can afford);
  * optionally, a share ``mask_share`` of the words chosen for replacement become the tokenizer's mask
    token instead of a candidate (the cheap end: no candidate to find; tags stay aligned);
  * sequence tasks, optionally: one span of 1–3 words deleted with probability ``delete_span``.
Identical variants, variants equal to their source and variants whose text is in the validation or
test split are dropped. Variants carry ``gold=0`` (``label: teacher``: the teacher's soft targets
label them and the hard-label loss skips them) or ``gold=1`` (``label: gold``: the source row's gold
label — the "more data, no teacher" control). Original rows carry ``gold=1``.

Deterministic: a row's variants depend only on ``seed``, the row (its index and words) and the
candidates; the masked-LM head starts from ``mlm.seed``, whatever the trainer's seed. The result is
written to ``$DISTILL_CACHE/augment/<fingerprint>`` (temp dir + rename) and memory-mapped from there,
so tokenization and the teacher-logit cache are reused by the next run, seed or recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import datasets
import torch

from distill.data.contextual import contextual_candidates
from distill.data.corpus import TaskData, cache_dir, save_dataset
from distill.data.mentions import mention_bank, swap
from distill.data.mlm_head import MLMFit, check_masked_lm, masked_lm
from distill.data.mlm_head import fingerprint as mlm_fingerprint
from distill.data.neighbours import embedding_neighbours
from distill.data.splits import normalise
from distill.data.tokenize import tokenizer_key
from distill.errors import DistillError
from distill.launch import resolve_precision

log = logging.getLogger(__name__)
VERSION = 1  # bump when the sampling below changes, so old augmented sets are not reused
# words (with their apostrophes: "don't" is one word, never touched), punctuation runs, whitespace
SEGMENTS = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+|\s+")


@dataclass
class Augment:
    """The ``data.augment`` node (type-checked as a structured config)."""

    n: int = 8  # variants per training row
    p: float = 0.4  # replacement probability per eligible word
    top_k: int = 15  # candidates per word
    pool: int = 50  # masked-LM ranks the word's pool nearest embedding neighbours (0: the whole vocabulary)
    mask_every: int = 4  # forwards per sentence; each masks every mask_every-th eligible word
    method: str = "contextual"  # contextual (masked-LM + embedding neighbours) | neighbours (embeddings only)
    swap_mentions: float = 0.5  # token tasks: per-mention swap probability
    delete_span: float = 0.0  # sequence tasks: per-variant probability of deleting 1-3 words
    mask_share: float = 0.0  # share of the chosen words that become the mask token instead of a candidate
    entity_words: bool = False  # token tasks: words inside entity mentions are replaced too (label: teacher only)
    label: str = "teacher"  # teacher (soft targets, gold=0) | gold (the source row's label: the control)
    seed: int = 0
    batch_size: int = 64
    max_length: int = 128
    precision: str = "auto"  # the candidates' forwards: auto (bf16 where native) | bf16 | no (fp32); the fit is fp32
    mlm: MLMFit = field(default_factory=MLMFit)

    def check(self) -> None:
        problems = [
            (self.n >= 1, f"n={self.n} must be at least 1 variant per row (data.augment=null for none)"),
            (0 <= self.p <= 1, f"p={self.p} must be a probability in [0, 1]"),
            (self.top_k >= 1, f"top_k={self.top_k} must be at least 1"),
            (self.pool == 0 or self.pool >= self.top_k, f"pool={self.pool} must be 0 or at least top_k={self.top_k}"),
            (self.mask_every >= 1, f"mask_every={self.mask_every} must be at least 1"),
            (self.method in ("contextual", "neighbours"), f"method={self.method!r}: use contextual or neighbours"),
            (0 <= self.swap_mentions <= 1, f"swap_mentions={self.swap_mentions} must be in [0, 1]"),
            (0 <= self.delete_span <= 1, f"delete_span={self.delete_span} must be in [0, 1]"),
            (0 <= self.mask_share <= 1, f"mask_share={self.mask_share} must be in [0, 1]"),
            (self.label in ("teacher", "gold"), f"label={self.label!r}: use teacher or gold"),
            (self.precision in ("auto", "bf16", "no"), f"precision={self.precision!r}: use auto, bf16 or no"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be at least 1"),
            (self.max_length >= 3, f"max_length={self.max_length} must be at least 3 tokens ([CLS] word [SEP])"),
            (self.mlm.epochs >= 0, f"mlm.epochs={self.mlm.epochs} must be >= 0"),
            (self.mlm.batch_size >= 1, f"mlm.batch_size={self.mlm.batch_size} must be at least 1"),
            (self.mlm.lr > 0, f"mlm.lr={self.mlm.lr} must be positive"),
            (0 < self.mlm.mlm_probability < 1, f"mlm.mlm_probability={self.mlm.mlm_probability} must be in (0, 1)"),
            (self.mlm.train_layers >= 0, f"mlm.train_layers={self.mlm.train_layers} must be >= 0"),
        ]
        for ok, message in problems:
            if not ok:
                raise DistillError(f"data.augment.{message}")
        if self.entity_words and self.label == "gold":
            raise DistillError("data.augment.entity_words=true replaces words inside entity mentions, whose copied "
                               "tags would then be guesses: the control (label: gold) needs entity_words=false")


@dataclass
class _Row:
    """One training row as words: ``words`` go to the models, ``segments`` rebuild sequence text."""

    words: list[str]
    eligible: list[bool]
    segments: list[str] | None = None  # sequence tasks: words, punctuation and whitespace in order
    tags: list[str] | None = None  # token tasks: BIO names

    @property
    def text(self) -> str:
        return " ".join(self.words) if self.segments is None else "".join(self.segments)


def _rows(data: TaskData, entity_words: bool = False) -> list[_Row]:
    train = data.splits["train"]
    if data.task == "token":
        names = data.label_names
        return [_Row(list(words), [(entity_words or names[t] == "O") and w.isalpha() for w, t in zip(words, tags)],
                     tags=[names[t] for t in tags]) for words, tags in zip(train["tokens"], train["tags"])]
    rows = []
    for text in train["text"]:
        segments = SEGMENTS.findall(text)
        words = [s for s in segments if not s.isspace()]
        rows.append(_Row(words, [w.isalpha() for w in words], segments=segments))
    return rows


def _match_case(original: str, new: str) -> str:
    if original.isupper() and len(original) > 1:
        return new.upper()
    return new.capitalize() if original[:1].isupper() else new


def _replace(word: str, candidates: list[str], settings: Augment, rng: random.Random, mask_token: str | None) -> str:
    """``word``, or with probability ``p`` one of its candidates (or, for ``mask_share`` of those, the
    mask token). At ``mask_share`` 0 the draws are the ones made before it existed: the same variants."""
    if not candidates or rng.random() >= settings.p:
        return word
    if settings.mask_share and rng.random() < settings.mask_share:
        return mask_token
    return _match_case(word, rng.choice(candidates))


def _variant(row: _Row, candidates: list[list[str]], settings: Augment, bank, rng: random.Random,
             names: frozenset[str] = frozenset(), mask_token: str | None = None):
    """(words or text, tags or None, share of words changed) of one variant of ``row``."""
    words = [_replace(w, c, settings, rng, mask_token) for w, c in zip(row.words, candidates)]
    changed = sum(a != b for a, b in zip(words, row.words))
    if row.tags is not None:
        tags = row.tags
        if bank and settings.swap_mentions:
            words, tags, swapped = swap(words, row.tags, bank, settings.swap_mentions, rng, names)
            changed += swapped
        return words, tags, changed / max(len(row.words), 1)
    it = iter(words)
    out = [s if s.isspace() else next(it) for s in row.segments]
    if settings.delete_span and rng.random() < settings.delete_span:
        spots = [i for i, s in enumerate(out) if s.isalpha() or (mask_token and s == mask_token)]  # words, masked too
        if len(spots) > 3:
            start = rng.randrange(len(spots) - 1)
            for i in spots[start:start + rng.randint(1, 3)]:
                out[i] = ""
                changed += 1
    return " ".join("".join(out).split()), None, changed / max(len(row.words), 1)


def _candidates(rows: list[_Row], mlm, tokenizer, settings: Augment) -> list[list[list[str]]]:
    """Per row, per word: its replacement candidates (empty: the word stays)."""
    sentences = [r.words for r in rows]
    eligible = [r.eligible for r in rows]
    found: dict[tuple[int, int], list[str]] = {}  # every eligible single-token word, when contextual
    if settings.method == "contextual":
        found = contextual_candidates(mlm, tokenizer, sentences, eligible, settings.top_k, settings.mask_every,
                                      settings.batch_size, settings.max_length, settings.pool)
    rest = {w for i, r in enumerate(rows) for j, (w, ok) in enumerate(zip(r.words, r.eligible))
            if ok and (i, j) not in found}
    near = embedding_neighbours(mlm.bert.embeddings.word_embeddings.weight, tokenizer, rest, settings.top_k)

    def pick(i: int, j: int, word: str, ok: bool) -> list[str]:
        if not ok:
            return []
        return found[(i, j)] if (i, j) in found else near.get(word, [])

    return [[pick(i, j, w, ok) for j, (w, ok) in enumerate(zip(r.words, r.eligible))] for i, r in enumerate(rows)]


def _fingerprint(data: TaskData, tokenizer, settings: Augment, mlm_key: str, extra: Sequence[str]) -> str:
    """Everything the rows depend on; not ``label`` (it only sets ``gold``) nor ``batch_size``; the
    precision as resolved on this machine (bf16 ranks candidates a little differently from fp32)."""
    chosen = {k: v for k, v in asdict(settings).items() if k not in ("label", "batch_size")}
    for added in ("mask_share", "entity_words"):  # added later: at 0 / false the sets made before are the same rows
        if not chosen[added]:
            chosen.pop(added)
    chosen["precision"] = resolve_precision(settings.precision)
    h = hashlib.sha256(json.dumps({"v": VERSION, "settings": chosen, "tokenizer": tokenizer_key(tokenizer),
                                   "mlm": mlm_key, "task": data.task}, sort_keys=True).encode())
    for split in ("train", "validation", "test"):
        if split in data.splits:
            h.update(f"{split}:{data.splits[split]._fingerprint}".encode())
    for text in extra:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:20]


def _held_out(data: TaskData) -> set[str]:
    keys = set()
    for split in ("validation", "test"):
        if split in data.splits:
            ds = data.splits[split]
            texts = ds["text"] if "text" in ds.column_names else [" ".join(t) for t in ds["tokens"]]
            keys |= {normalise(t) for t in texts}
    return keys


def _generate(data: TaskData, rows: list[_Row], candidates, settings: Augment,
              mask_token: str | None = None) -> tuple[dict, float]:
    """Columns of original + variant rows, and the mean share of words changed per variant."""
    train = data.splits["train"]
    names = data.label_names
    bank = mention_bank([(r.words, r.tags) for r in rows]) if data.task == "token" else None
    held_out = _held_out(data)
    columns = {name: list(train[name]) for name in train.column_names}
    columns["gold"] = [1] * len(train)
    shares = []
    for index, (row, cands) in enumerate(zip(rows, candidates)):
        rng = random.Random(f"{settings.seed}|{index}|{' '.join(row.words)}")
        seen = {normalise(row.text)}
        for _ in range(settings.n):
            out, tags, share = _variant(row, cands, settings, bank, rng, frozenset(names), mask_token)
            key = normalise(" ".join(out) if tags is not None else out)
            if key in seen or key in held_out or not key:
                continue
            seen.add(key)
            shares.append(share)
            for name in train.column_names:
                if name in ("text", "tokens"):
                    value = out
                elif name == "tags":
                    value = [names.index(t) for t in tags]
                else:
                    value = columns[name][index]
                columns[name].append(value)
            columns["gold"].append(0)  # label: gold sets these to 1 after loading (same rows, same cache)
    return columns, sum(shares) / max(len(shares), 1)


def _all_gold(batch: dict) -> dict:
    return {"gold": [1] * len(batch["gold"])}


def augment(data: TaskData, tokenizer, settings: Augment, mlm_model: Callable[[], object],
            extra_text: Sequence[str] = (), device: torch.device | str | None = None) -> TaskData:
    """``data`` with ``settings.n`` variants of every train row appended (see the module docstring).
    ``device``: where the candidates are generated (default: a GPU when there is one)."""
    settings.check()
    if data.task not in ("sequence", "token"):
        raise DistillError(f"data.augment needs a sequence or token task, not task={data.task!r}")
    if data.task == "token" and settings.delete_span:
        raise DistillError(f"data.augment.delete_span={settings.delete_span} deletes words, which a token task's "
                           "tags could not follow; set it to 0 for token tasks")
    if data.task != "token" and settings.entity_words:
        raise DistillError("data.augment.entity_words=true is for token tasks (a sequence task's words are all "
                           "eligible already); set it to false")
    if settings.mask_share and tokenizer.mask_token is None:
        raise DistillError(f"data.augment.mask_share={settings.mask_share}: {type(tokenizer).__name__} has no mask "
                           "token; set it to 0")
    if "train" not in data.splits or len(data.splits["train"]) == 0:
        raise DistillError("data.augment: the train split is empty")
    if "gold" in data.splits["train"].column_names:
        raise DistillError("data.augment is applied once; this train split is already augmented")
    start = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mlm = mlm_model()
    # either method reads its word embeddings by the tokenizer's ids; checked before a cached result is reused
    check_masked_lm(mlm, tokenizer, settings.mlm if settings.method == "contextual" else None)
    mlm = mlm.to(device)
    rows = _rows(data, settings.entity_words)
    texts = [r.text for r in rows] + list(extra_text)
    held = data.splits.get("validation")
    held_texts = [] if held is None else [" ".join(t) for t in held["tokens"]] if data.task == "token" else held["text"]
    bf16 = resolve_precision(settings.precision) == "bf16"
    if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DistillError("data.augment.precision=bf16, but this GPU has no bf16 (before Ampere); use auto or no")
    mlm_key = mlm_fingerprint(mlm, tokenizer, texts, settings.mlm)  # fitted in fp32, whatever the precision
    key = _fingerprint(data, tokenizer, settings, mlm_key, extra_text)
    path = cache_dir("augment") / f"{data.name or 'data'}-{key}"
    fresh = not (path / "distill.json").is_file()
    if fresh:
        cache_dir("augment", write=True)
        if settings.method == "contextual":  # the neighbours method asks no masked-LM
            # fp32: under bf16 autocast the fit collapsed on MR (held-out top-1 0.000 vs 0.168 in fp32)
            mlm = masked_lm(mlm, tokenizer, texts, list(held_texts)[:1000], settings.mlm, key=mlm_key)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # the candidates' forwards
            candidates = _candidates(rows, mlm, tokenizer, settings)
        columns, share = _generate(data, rows, candidates, settings, tokenizer.mask_token)
        train = data.splits["train"]
        features = datasets.Features({**train.features, "gold": datasets.Value("int8")})
        ds = datasets.Dataset.from_dict(columns, features=features, split="train")
        meta = {"rows_before": len(train), "rows_after": len(ds), "changed_share": share,
                "seconds": time.perf_counter() - start, "settings": asdict(settings)}
        save_dataset(path, datasets.DatasetDict({"train": ds}), meta)
    meta = json.loads((path / "distill.json").read_text())
    train = datasets.load_from_disk(str(path))["train"]
    if settings.label == "gold":  # the control: the same rows, each with its source row's gold label
        train = train.map(_all_gold, batched=True, new_fingerprint=hashlib.sha256(
            f"{train._fingerprint}|gold".encode()).hexdigest()[:16], desc="gold labels")
    log.info("augment: %s train rows -> %s (%d variants asked per row; mean %.1f%% of words changed; labels: %s; %s)",
             f"{meta['rows_before']:,}", f"{meta['rows_after']:,}", settings.n, 100 * meta["changed_share"],
             settings.label, f"generated in {meta['seconds']:.0f} s" if fresh else f"cached in {path}")
    splits = datasets.DatasetDict({**data.splits, "train": train})
    return TaskData(splits=splits, label_names=data.label_names, task=data.task, name=f"{data.name}+augment",
                    stats=dict(getattr(data, "stats", {}) or {}))
