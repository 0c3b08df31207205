"""Tokenization: exact ids, sub-word label alignment, raw chunks, the datasets cache, summaries."""

import os

import datasets
import pytest

import distill.data.tokenize as tokenize_module
from distill.data import sources
from distill.data.corpus import TaskData
from distill.data.tokenize import summarize, tokenize, tokenizer_key
from distill.errors import DistillError
from distill.models.hub import load_tokenizer, minilm_l6_path


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(tmp_path_factory.mktemp("distill_cache")))
        yield


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(minilm_l6_path())


def in_memory(task, label_names=(), **columns):
    return TaskData(datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}), list(label_names), task,
                    name="hand")


def test_sequence_rows_match_the_tokenizer(tok):
    data = sources.mr(limit=50)
    out = tokenize(data, tok, max_length=16)
    assert out["train"].column_names == ["input_ids", "attention_mask", "token_type_ids", "labels", "idx", "truncated"]
    for i in (0, 7, 49):
        row, source = out["train"][i], data.splits["train"][i]
        assert row["input_ids"] == tok(source["text"], truncation=True, max_length=16)["input_ids"]
        assert row["labels"] == source["label"] and row["idx"] == i
        assert row["attention_mask"] == [1] * len(row["input_ids"]) and set(row["token_type_ids"]) == {0}
        assert row["truncated"] == (len(tok(source["text"])["input_ids"]) > 16)
    assert out["test"]["idx"] == list(range(50))


def test_sentence_pairs_get_segment_ids(tok):
    data = in_memory("sequence", ["0", "1"], text=["a good film"], text_pair=["it was good"], label=[1])
    row = tokenize(data, tok, max_length=32)["train"][0]
    assert tok.convert_ids_to_tokens(row["input_ids"]) == \
        ["[CLS]", "a", "good", "film", "[SEP]", "it", "was", "good", "[SEP]"]
    assert row["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_token_labels_align_to_first_sub_tokens(tok):
    data = in_memory("token", ["O", "B-loc", "I-loc", "B-person"],
                     tokens=[["Heathrow", "airport", "unbelievably", "@paulwalk"]], tags=[[1, 2, 0, 3]])
    row = tokenize(data, tok, max_length=32)["train"][0]
    assert tok.convert_ids_to_tokens(row["input_ids"]) == \
        ["[CLS]", "heath", "##row", "airport", "un", "##bel", "##ie", "##va", "##bly", "@", "paul", "##walk", "[SEP]"]
    assert row["word_ids"] == [-1, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3, 3, -1]
    assert row["labels"] == [-100, 1, -100, 2, 0, -100, -100, -100, -100, 3, -100, -100, -100]
    assert row["truncated"] is False

    cut = tokenize(data, tok, max_length=6)["train"][0]
    assert cut["word_ids"] == [-1, 0, 0, 1, 2, -1] and cut["labels"] == [-100, 1, -100, 2, 0, -100]
    assert cut["truncated"] is True


def test_words_that_tokenize_to_nothing_keep_their_tags(tok, caplog):
    """Issue 19 #5: U+200B and a lone combining accent became no sub-token, and their tags vanished."""
    data = in_memory("token", ["O", "B-person"], tokens=[["\u200b", "Paul", "\u0301", "runs"]], tags=[[1, 1, 0, 0]])
    with caplog.at_level("WARNING", logger="distill.data.tokenize"):
        row = tokenize(data, tok, max_length=32)["train"][0]
    assert tok.convert_ids_to_tokens(row["input_ids"]) == ["[CLS]", "[UNK]", "paul", "[UNK]", "runs", "[SEP]"]
    assert row["word_ids"] == [-1, 0, 1, 2, 3, -1] and row["labels"] == [-100, 1, 1, 0, 0, -100]
    assert "2 word(s) tokenize to nothing" in caplog.text


def test_raw_text_is_cut_into_chunks(tok):
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
            "seventeen eighteen nineteen twenty"
    data = in_memory("raw", text=[words, "short text"])
    out = tokenize(data, tok, max_length=8)["train"]
    assert out["idx"] == [0, 1, 2, 3, 4] and "labels" not in out.column_names
    assert [len(ids) for ids in out["input_ids"]] == [8, 8, 8, 4, 4]  # 20 words = 6 + 6 + 6 + 2
    assert tok.decode(out[3]["input_ids"]) == "[CLS] nineteen twenty [SEP]"
    assert all(ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id for ids in out["input_ids"])


def test_second_tokenize_is_served_from_the_cache(tok, monkeypatch):
    calls = []
    real = tokenize_module._encode_sequence
    monkeypatch.setattr(tokenize_module, "_encode_sequence", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = sources.mr()
    key = tokenizer_key(tok)
    first = tokenize(data, tok, max_length=64)
    assert len(calls) == 9  # map batches of 1,000 rows: 6 train + 1 validation + 2 test
    assert tokenizer_key(tok) == key  # a call's truncation state does not change the fingerprint

    calls.clear()
    again = tokenize(sources.mr(), tok, max_length=64)  # new TaskData, as in a new run
    assert calls == []
    cache_file = again["train"].cache_files[0]["filename"]
    assert cache_file == first["train"].cache_files[0]["filename"]
    assert os.path.basename(cache_file).startswith("cache-")
    assert os.path.dirname(cache_file) == os.path.dirname(data.splits["train"].cache_files[0]["filename"])
    assert again["test"][5] == first["test"][5]

    tokenize(data, tok, max_length=32)  # another max_length is another cache entry
    assert len(calls) == 9


def test_an_error_mid_map_leaves_no_cache_file(tok, monkeypatch):
    data = sources.mr(limit=1500)  # two map batches in train
    folder = os.path.dirname(data.splits["train"].cache_files[0]["filename"])
    before = sorted(os.listdir(folder))
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("tokenizer crashed")
        return tokenize_module.__dict__["_real"](*args, **kwargs)

    monkeypatch.setitem(tokenize_module.__dict__, "_real", tokenize_module._encode_sequence)
    monkeypatch.setattr(tokenize_module, "_encode_sequence", fail_second)
    with pytest.raises(RuntimeError):
        tokenize(data, tok, max_length=20)
    assert sorted(os.listdir(folder)) == before


def test_bad_arguments(tok):
    data = sources.tiny(limit=4)
    for max_length, fragment in ((2, "at least 4"), (1024, "model_max_length 512")):
        with pytest.raises(DistillError, match=fragment):
            tokenize(data, tok, max_length=max_length)


def test_summary_line(tok):
    data = sources.tiny()
    full = [len(tok(t)["input_ids"]) for d in data.splits.values() for t in d["text"]]
    cut = [min(n, 12) for n in full]
    assert round(100 * sum(n > 12 for n in full) / 300, 1) == 27.7 and round(sum(cut) / 300, 1) == 10.4
    assert sum(data.splits["train"]["label"]) == 119
    assert summarize(data, tokenize(data, tok, max_length=12)) == (
        "data tiny-sequence (sequence): train 210, validation 30, test 60; train labels negative 91, positive 119; "
        "tokens mean 10.4, max 12; truncated 27.7%"
    )
    ner = sources.tiny(task="token")
    assert summarize(ner, tokenize(ner, tok, max_length=32)) == (
        "data tiny-token (token): train 210, validation 30, test 60; train entities loc 210, person 210; "
        "tokens mean 7.6, max 10; truncated 0.0%"
    )


@pytest.mark.slow
def test_imdb_tokenizes_with_truncation(tok):
    data = sources.imdb()
    out = tokenize(data, tok, max_length=256)
    assert {s: len(d) for s, d in out.items()} == {"train": 17430, "validation": 2491, "test": 4981}
    line = summarize(data, out)
    assert "max 256" in line and "truncated 0.0%" not in line
