"""`distill predict`: a student dir and its ONNX export label a file the same way, row by row as alone."""

import csv
from pathlib import Path

import pytest
import torch

from distill import evaluate as ev
from distill.cli import main
from distill.export import export
from tests import cli_run
from tests.export_helpers import sentences, tiny_model, tiny_tokenizer
from tests.test_export import saved

TAGS = ["O", "B-PER", "I-PER"]


def _cli(*args, stdin=None):
    return cli_run.distill("predict", *args, stdin=stdin)  # in this process (tests/cli_run.py)


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _alone(model, rows: list[dict]) -> list[torch.Tensor]:
    """Each row's logits from a batch of one: no padding, no reordering."""
    forward = ev.torch_forward(model)
    return [forward(ev.pad_rows([row]))[0] for row in rows]


def test_a_student_dir_and_its_onnx_export_give_the_same_labels_on_100_rows(tmp_path):
    names = ("negative", "positive")
    model, run = saved(tmp_path, "sequence", labels=names)
    texts = [" ".join(s) for s in sentences(100, seed=3)]
    export(run, tmp_path / "export", ["onnx"], texts=texts[:20])
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "label"], *[[f"{i:03d}", t, "gold"] for i, t in enumerate(texts)]])
    for model_ref, out in ((run, "torch.csv"), (tmp_path / "export" / "onnx" / "model.onnx", "onnx.csv")):
        done = _cli(f"model={model_ref}", f"input={source}", f"output={tmp_path / out}", "batch_size=16")
        assert done.returncode == 0, done.stderr[-3000:]
    by_torch, by_onnx = _read(tmp_path / "torch.csv"), _read(tmp_path / "onnx.csv")
    assert [r["id"] for r in by_torch] == [f"{i:03d}" for i in range(100)]  # the input's order, "007" kept as text
    assert {r["label"] for r in by_torch} == {"gold"}  # the input's own label column is kept, not overwritten
    assert [r["predicted_label"] for r in by_torch] == [r["predicted_label"] for r in by_onnx]
    enc = tiny_tokenizer()(texts, truncation=True, max_length=128)
    alone = _alone(model, [dict(zip(enc, v)) for v in zip(*enc.values())])
    assert [r["predicted_label"] for r in by_torch] == [names[int(x.argmax())] for x in alone]
    assert len({r["predicted_label"] for r in by_torch}) == 2  # the head answers both classes on these rows
    probs = torch.tensor([[float(r["p_negative"]), float(r["p_positive"])] for r in by_torch])
    assert torch.allclose(probs, torch.stack([x.softmax(-1) for x in alone]), atol=2e-6)
    onnx_probs = torch.tensor([[float(r["p_negative"]), float(r["p_positive"])] for r in by_onnx])
    assert torch.allclose(probs, onnx_probs, atol=1e-4)


def test_a_token_model_tags_every_word_and_marks_words_beyond_max_length(tmp_path):
    model = tiny_model("token", labels=TAGS, initializer_range=0.2)
    from distill.models.hub import save_pretrained

    folder = save_pretrained(model, tmp_path / "student", tiny_tokenizer())
    words = sentences(12, seed=5) + [["the", "film"] * 20]  # the last: 40 words, cut at max_length=16
    (tmp_path / "in.txt").write_text("\n".join(" ".join(w) for w in words) + "\n")
    done = _cli(f"model={folder}", f"input={tmp_path / 'in.txt'}", f"output={tmp_path / 'tags.csv'}", "max_length=16")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "words lie beyond max_length=16 and get no tag" in done.stderr
    rows = _read(tmp_path / "tags.csv")
    tags = [r["predicted_tags"].split(" ") for r in rows]
    assert [len(t) for t in tags] == [len(w) for w in words]
    enc = tiny_tokenizer()(words, is_split_into_words=True, truncation=True, max_length=16)
    alone = _alone(model, [dict(zip(enc, v)) for v in zip(*enc.values())])
    for i, (row_tags, logits) in enumerate(zip(tags, alone)):
        firsts = {}
        for pos, word in enumerate(enc.word_ids(i)):
            if word is not None:
                firsts.setdefault(word, pos)
        expected = [TAGS[int(logits[firsts[w]].argmax())] if w in firsts else "-" for w in range(len(words[i]))]
        assert row_tags == expected
    assert tags[-1].count("-") == 40 - 14  # 16 positions - [CLS] - [SEP] = 14 words tagged
    assert set(TAGS) <= {t for row in tags for t in row}  # the head answers every tag on these rows


def test_lines_on_stdin(tmp_path):
    _, run = saved(tmp_path, "sequence", labels=("negative", "positive"))
    done = _cli(f"model={run}", "input=-", f"output={tmp_path / 'out.csv'}", stdin="the film was good\n\nslow plot\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["text"] for r in _read(tmp_path / "out.csv")] == ["the film was good", "slow plot"]


def _masked_lm(folder: Path) -> None:
    """A general (masked-LM) student: no classification head to predict with."""
    from distill.models.hub import save_pretrained

    folder.joinpath("f.csv").write_text("text\nok\n")
    save_pretrained(tiny_model("mlm", labels=("a",)), folder / "mlm", tiny_tokenizer())


@pytest.mark.parametrize("make, args, message", [
    (lambda d: d.joinpath("a.csv").write_text("review,label\ngood,1\n"), ["input={d}/a.csv"],
     "has no column 'text' (it has: review, label); set text_column=..."),
    (lambda d: d.joinpath("b.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1")), ["input={d}/b.csv"],
     "is not UTF-8 text (it holds byte b'\\xe9')"),
    (lambda d: None, ["input={d}/missing.csv"], "does not exist"),
    (lambda d: d.joinpath("c.xlsx").write_text("x"), ["input={d}/c.xlsx"], "use a .csv, .tsv, .jsonl or .txt file"),
    (lambda d: d.joinpath("e.csv").write_text("\n"), ["input={d}/e.csv"], "is empty"),
    (lambda d: d.joinpath("f.csv").write_text("text\nok\n"), ["input={d}/f.csv", "model={d}/nowhere"],
     "model={d}/nowhere does not exist"),
    (lambda d: None, [], "predict takes model=DIR (or FILE.onnx) input=FILE"),
    (lambda d: d.joinpath("g.csv").write_text("text\nok\n"), ["input={d}/g.csv", "outptu=x.csv"],
     "unknown key 'outptu'"),
    (lambda d: d.joinpath("h.csv").write_text("text,predicted_label\nok,x\n"), ["input={d}/h.csv"],
     "already has a column 'predicted_label'; rename it"),
    (lambda d: _masked_lm(d), ["input={d}/f.csv", "model={d}/mlm"], "is a BertForMaskedLM, not a classifier"),
])
def test_predict_mistakes_are_one_line(tmp_path, capsys, make, args, message):
    _, run = saved(tmp_path, "sequence")
    make(tmp_path)
    args = [a.format(d=tmp_path) for a in args]
    model = [] if any(a.startswith("model=") for a in args) or not args else [f"model={run}"]
    assert main(["predict", *model, *args, f"output={tmp_path / 'o.csv'}"]) == 1
    assert message.format(d=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
