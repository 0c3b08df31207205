"""Shipped corpora: exact split sizes, label sets, no train/test leakage, same split every time."""

import logging

import pytest

from distill.data import sources
from distill.data.splits import carve, normalise, stable_hash


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(tmp_path_factory.mktemp("distill_cache")))
        yield


def sizes(data):
    return {split: len(ds) for split, ds in data.splits.items()}


def assert_no_leak(data):
    if data.task == "token":
        texts = {s: {normalise(" ".join(w)) for w in ds["tokens"]} for s, ds in data.splits.items()}
    else:
        texts = {s: {normalise(t) for t in ds["text"]} for s, ds in data.splits.items()}
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


def test_mr_split_sizes_labels_and_no_leak(caplog):
    with caplog.at_level(logging.INFO, logger="distill.data.corpus"):
        data = sources.mr()
    assert sizes(data) == {"train": 5971, "validation": 853, "test": 1706}
    assert sum(sizes(data).values()) == 8530
    assert data.stats == {"rows_read": 8530, "duplicates_dropped": 0, "overlap_dropped": 0}
    assert len(data.splits["test"]) / 8530 >= 0.2  # product requirement: tight confidence intervals
    assert data.task == "sequence" and data.label_names == ["negative", "positive"]
    for ds in data.splits.values():
        assert set(ds["label"]) == {0, 1}
    assert sum(data.splits["train"]["label"]) == 2993  # balanced corpus, hash split keeps it near 50%
    assert_no_leak(data)
    assert "8,530 rows read, 0 exact duplicates dropped" in caplog.text


def test_mr_split_is_the_same_in_a_fresh_cache(tmp_path, monkeypatch):
    first = sources.mr()
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    second = sources.mr()  # rebuilt from the csv, not read from the first cache
    assert second.splits["train"].cache_files[0]["filename"].startswith(str(tmp_path))
    for split in ("train", "validation", "test"):
        assert first.splits[split]["text"] == second.splits[split]["text"]
    # pinned: the hash split must not drift across machines or Python versions
    assert second.splits["test"][0] == {"text": "showtime is closer to slowtime .", "label": 0}


def test_limit_takes_the_first_rows_of_each_split():
    full, small = sources.mr(), sources.mr(limit=20)
    assert sizes(small) == {"train": 20, "validation": 20, "test": 20}
    for split in small.splits:
        assert small.splits[split]["text"] == full.splits[split]["text"][:20]
    assert set(small.splits["train"]["label"]) == {0, 1}  # hash order mixes the labels


def test_imdb_counts_after_duplicates():
    data = sources.imdb()
    assert data.stats["rows_read"] == 25000 and data.stats["duplicates_dropped"] == 98
    assert sizes(data) == {"train": 17430, "validation": 2491, "test": 4981}
    assert sum(sizes(data).values()) == 25000 - 98
    assert "<br />" not in data.splits["test"][0]["text"]
    assert set(data.splits["test"]["label"]) == {0, 1}
    assert_no_leak(data)


def test_sms_spam_counts_labels_and_no_leak():
    data = sources.sms_spam()
    assert data.stats["rows_read"] == 4862 and data.stats["duplicates_dropped"] == 328
    assert sizes(data) == {"train": 3173, "validation": 454, "test": 907}
    assert sum(sizes(data).values()) == 4862 - 328
    assert data.label_names == ["ham", "spam"]
    assert sum(data.splits["train"]["label"]) == 397  # spam is the minority class
    assert_no_leak(data)  # 329 normalised duplicates: the one case-variant pair stays together


def test_wnut16_sentences_tags_and_no_leak():
    data = sources.wnut16()
    assert data.task == "token"
    assert data.stats["rows_read"] == 2394 and data.stats["duplicates_dropped"] == 99
    assert sizes(data) == {"train": 1606, "validation": 230, "test": 459}
    assert len(data.label_names) == 21 and data.label_names[0] == "O"
    assert len({n[2:] for n in data.label_names if n != "O"}) == 10
    row = data.splits["train"][0]
    assert len(row["tokens"]) == len(row["tags"])
    used = {t for tags in data.splits["train"]["tags"] for t in tags}
    assert used == set(range(21))  # every tag of every type occurs in train
    assert_no_leak(data)

    kept = sources.wnut16(dedupe=False)
    assert sizes(kept) == {"train": 1675, "validation": 240, "test": 479}
    assert sum(sizes(kept).values()) == 2394


def test_tiny_is_learnable_and_fast():
    data = sources.tiny()
    assert sizes(data) == {"train": 210, "validation": 30, "test": 60}
    for row in data.splits["train"]:
        words = row["text"].split()
        pos = sum(w in sources.POSITIVE for w in words)
        neg = sum(w in sources.NEGATIVE for w in words)
        assert row["label"] == int(pos > neg)
    token = sources.tiny(task="token")
    assert token.label_names == ["O", "B-loc", "B-person", "I-person"]
    assert token.splits["train"][0]["tags"][0] == 2  # every sentence opens with a person
    raw = sources.tiny(task="raw")
    assert raw.task == "raw" and list(raw.splits) == ["train", "validation"] and raw.label_names == []


def test_raw_text_drops_labels_and_test():
    raw = sources.raw_text(sources.wnut16(limit=3))
    assert raw.task == "raw" and list(raw.splits) == ["train", "validation"]
    assert raw.splits["train"].column_names == ["text"]
    assert raw.splits["train"][0]["text"] == " ".join(sources.wnut16(limit=3).splits["train"][0]["tokens"])


def test_carve_keeps_groups_together_and_meets_fractions():
    keys = [f"text {i}" for i in range(50)] + ["Same  Text", "same text", "SAME TEXT"]
    parts = carve(keys, [("test", 0.2), ("validation", 0.1)])
    assert sorted(i for p in parts.values() for i in p) == list(range(53))
    assert len(parts["test"]) >= 11 and len(parts["validation"]) >= 6  # ceil(0.2 * 53), ceil(0.1 * 53)
    homes = [name for name, rows in parts.items() if {50, 51, 52} & set(rows)]
    assert len(homes) == 1 and {50, 51, 52} <= set(parts[homes[0]])
    assert stable_hash("Same  Text") == stable_hash("same text") == 0x6744541113CCF498  # blake2b, pinned
