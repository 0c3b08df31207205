"""User files (csv / tsv / jsonl / parquet / conll), hub datasets, and one-line errors for bad input."""

import json
import os

import datasets
import pytest

from distill.data import files as files_module
from distill.data import sources
from distill.data.corpus import cache_dir
from distill.errors import DistillError

POS = ["a moving, witty film", "great fun from start to end", "superb acting and a clever plot",
       "charming and lovely", "brilliant work by the whole cast"]
NEG = ["dull and far too long", "the plot is a mess", "boring, flat acting", "tedious and clumsy",
       "awful dialogue throughout"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))


def reviews(n=40):
    """``n`` distinct (review, sentiment) rows with string labels."""
    rows = []
    for i in range(n):
        text = (POS if i % 2 else NEG)[i % 5]
        rows.append({"review": f"{text} (take {i})", "sentiment": "pos" if i % 2 else "neg"})
    return rows


def write_csv(path, rows, sep=","):
    lines = [sep.join(rows[0])] + [sep.join(f'"{v}"' if sep == "," else str(v) for v in r.values()) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_line_error(call, *fragments):
    with pytest.raises(DistillError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def cached_entries():
    data = cache_dir() / "data"
    return sorted(os.listdir(data)) if data.exists() else []


def test_csv_with_string_labels_and_custom_columns(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", reviews(40))
    data = sources.files(path, text_column="review", label_column="sentiment")
    assert data.task == "sequence" and data.label_names == ["neg", "pos"]
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 28, "validation": 4, "test": 8}
    assert data.splits["train"].column_names == ["text", "label"]
    row = data.splits["test"][0]
    assert row["label"] == (0 if row["text"].startswith(tuple(NEG)) else 1)


def test_tsv_jsonl_given_splits_and_overlap(tmp_path):
    rows = reviews(30)
    train = write_csv(tmp_path / "train.tsv", rows[:20] + [rows[25]], sep="\t")  # rows[25] leaks into test
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[20:24])
    test = write_jsonl(tmp_path / "test.jsonl", rows[24:30])
    data = sources.files(train, valid, test, text_column="review", label_column="sentiment")
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 20, "validation": 4, "test": 6}
    assert data.stats == {"rows_read": 31, "duplicates_dropped": 0, "overlap_dropped": 1}
    assert sorted(data.splits["validation"]["text"]) == sorted(r["review"] for r in rows[20:24])


def test_parquet_int_labels_and_sentence_pairs(tmp_path):
    rows = [{"premise": f"the film number {i} is good", "hypothesis": f"film {i} is {'good' if i % 3 else 'bad'}",
             "label": int(i % 3 == 0)} for i in range(30)]
    path = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    data = sources.files(path, text_column="premise", text_pair_column="hypothesis")
    assert data.label_names == ["0", "1"]
    assert data.splits["train"].column_names == ["text", "text_pair", "label"]
    row = data.splits["train"][0]
    i = int(row["text"].split()[3])
    assert row["text_pair"] == rows[i]["hypothesis"] and row["label"] == rows[i]["label"]


def test_token_files_jsonl_and_conll(tmp_path):
    rows = [{"words": ["alice", "visited", "paris", str(i)], "ner": ["B-PER", "O", "B-LOC", "O"]} for i in range(20)]
    data = sources.files(write_jsonl(tmp_path / "ner.jsonl", rows), task="token", text_column="words",
                         label_column="ner")
    assert data.label_names == ["O", "B-LOC", "B-PER"]
    assert data.splits["train"][0]["tags"] == [2, 0, 1, 0]
    conll = tmp_path / "ner.conll"
    conll.write_text("".join(f"bob\tB-PER\nin\tO\nrome\tB-LOC\n{i}\tO\n\t\n" for i in range(20)))
    data = sources.files(conll, task="token")
    assert sum(len(d) for d in data.splits.values()) == 20
    assert data.splits["test"][0]["tags"] == [2, 0, 1, 0]


def test_raw_text_file_one_text_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"sentence number {i}\n\n" for i in range(30)))
    data = sources.files(path, task="raw")
    assert data.task == "raw" and data.label_names == []
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 27, "validation": 3}


def test_hub_offline_is_one_line(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    one_line_error(lambda: sources.hub("no-such-user/no-such-dataset"), "could not load", "data=files")
    assert cached_entries() == []


def test_hub_class_labels_and_hidden_test_labels(monkeypatch):
    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["negative", "positive"])})
    split = lambda n, labels: datasets.Dataset.from_dict(  # noqa: E731
        {"sentence": [f"sentence {n} {i}" for i in range(len(labels))], "label": labels}, features=feats)
    fake = datasets.DatasetDict({"train": split("a", [0, 1] * 20), "validation": split("b", [1, 0] * 3),
                                 "test": split("c", [-1] * 5)})
    monkeypatch.setattr(files_module.datasets, "load_dataset", lambda *a, **k: fake)
    data = sources.hub("glue-like", text_column="sentence")
    assert data.label_names == ["negative", "positive"]
    # hidden test labels (-1) → test carved from train; validation kept as published
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 32, "validation": 6, "test": 8}


def test_bad_inputs_raise_one_line(tmp_path):
    good = write_csv(tmp_path / "good.csv", reviews(20))
    one_line_error(lambda: sources.files(tmp_path / "nope.csv"), "nope.csv", "does not exist")
    one_line_error(lambda: sources.files(good, text_column="body", label_column="sentiment"),
                   "no column 'body'", "review, sentiment", "text_column=")
    one_line_error(lambda: sources.files(good, text_column="review"), "no column 'label'", "label_column=")
    header_only = tmp_path / "empty.csv"
    header_only.write_text("review,sentiment\n")
    one_line_error(lambda: sources.files(good, test_file=header_only, text_column="review",
                                         label_column="sentiment"), "empty.csv has no rows")
    unseen = write_csv(tmp_path / "test.csv", [{"review": "so-so", "sentiment": "meh"}])
    one_line_error(lambda: sources.files(good, test_file=unseen, text_column="review", label_column="sentiment"),
                   "label 'meh' in test", "not in train", "label_names=")
    numbers = write_csv(tmp_path / "numbers.csv", [{"review": i, "sentiment": "pos"} for i in range(5)])
    one_line_error(lambda: sources.files(numbers, text_column="review", label_column="sentiment"),
                   "numbers.csv row 1: column 'review' holds 0 (int)", "not non-empty text")
    nulls = write_jsonl(tmp_path / "nulls.jsonl", [{"text": "fine", "label": 1}, {"text": None, "label": 0}])
    one_line_error(lambda: sources.files(nulls), "nulls.jsonl row 2", "None")
    conll = tmp_path / "bad.conll"
    conll.write_text("bob\tB-PER\nin\tO\n\t\nrome B-LOC\nparis\n")
    one_line_error(lambda: sources.files(conll, task="token"), "bad.conll line 5", "'paris'")
    one_line_error(lambda: sources.files(tmp_path / "x.xlsx"), "does not exist")
    (tmp_path / "x.xlsx").write_text("")
    one_line_error(lambda: sources.files(tmp_path / "x.xlsx"), "unknown file type '.xlsx'")
    one_line_error(lambda: sources.files(good, text_column="review", label_column="sentiment", limit=0), "limit=0")
    one_line_error(lambda: sources.mr(test_fraction=0.5, validation_fraction=0.45), "leaves under 10%")
    one_line_error(lambda: sources.files(good, task="ner"), "task='ner' is unknown")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("review,sentiment\ncaf\u00e9 au lait,pos\n".encode("latin-1"))
    one_line_error(lambda: sources.files(latin1, text_column="review", label_column="sentiment"),
                   "latin1.csv is not UTF-8 text (it holds byte b'\\xe9')", "re-save it as UTF-8")
    assert cached_entries() == []  # nothing half-written by any failure above


def test_too_small_for_three_splits(tmp_path):
    tiny = write_csv(tmp_path / "two.csv", reviews(2))
    one_line_error(lambda: sources.files(tiny, text_column="review", label_column="sentiment"),
                   "the train split is empty (2 train rows before carving test and validation)", "give more rows")
    assert cached_entries() == []
