"""The unlabelled transfer set: appended with label -100, never leaking evaluation text, stable."""

import datasets
import pytest

from distill.data.corpus import TaskData
from distill.data.transfer import sentences, with_transfer
from distill.errors import DistillError
from distill.outputs import IGNORE_INDEX


def _data():
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})

    def split(texts):
        return datasets.Dataset.from_dict({"text": texts, "label": [0, 1]}, features=feats)

    splits = {"train": split(["a b c d", "e f g h"]), "validation": split(["held out one", "x y z w"]),
              "test": split(["a test sentence here", "q r s t"])}
    return TaskData(datasets.DatasetDict(splits), ["neg", "pos"], "sequence")


def _source(texts):
    return TaskData(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})}), [], "raw")


def test_sentences_split_reviews_and_drop_fragments_and_duplicates():
    reviews = ["Great film. Truly a great film to watch!<br />Bad? No. It was a great film to watch!"]
    assert sentences(reviews) == ["Truly a great film to watch!", "It was a great film to watch!"]


def test_transfer_rows_are_unlabelled_and_exclude_evaluation_text():
    source = _source(["One two three four five. A test sentence here. Six seven eight nine ten."])
    mixed = with_transfer(_data(), source, max_rows=10)
    train = mixed.splits["train"]
    assert train["label"] == [0, 1, IGNORE_INDEX, IGNORE_INDEX]
    assert train["text"][2:] and "A test sentence here." not in train["text"]
    again = with_transfer(_data(), source, max_rows=10)
    assert again.splits["train"]["text"] == train["text"]  # same pick on every call
    assert with_transfer(_data(), source, max_rows=1).splits["train"].num_rows == 3


def test_transfer_fingerprint_is_stable_so_caches_are_shared_across_runs():
    data, source = _data(), _source(["One two three four five. Six seven eight nine ten."])
    first = with_transfer(data, source, max_rows=10).splits["train"]._fingerprint
    assert with_transfer(data, source, max_rows=10).splits["train"]._fingerprint == first
    assert with_transfer(data, source, max_rows=1).splits["train"]._fingerprint != first


def test_transfer_needs_text():
    with pytest.raises(DistillError, match="no usable text"):
        with_transfer(_data(), _source(["short."]), max_rows=5)
