"""Several teachers at once (issue 17): teacher=ensemble averages the members' logits, weighted."""

import json

import pytest
import torch

from distill.errors import DistillError
from distill.models.ensemble import ensemble
from distill.models.hub import from_pretrained, load_tokenizer, minilm_l6_path, save_pretrained
from distill.models.student import random_bert
from tests import cli_run

NAMES = {0: "negative", 1: "positive"}


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two tiny BERT teachers (MiniLM's vocab), differently seeded, with confident random heads."""
    root, tokenizer = tmp_path_factory.mktemp("members"), load_tokenizer(minilm_l6_path())
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = random_bert("sequence", NAMES)
        with torch.no_grad():
            model.classifier.weight.mul_(50)
        dirs.append(save_pretrained(model, root / f"t{seed}", tokenizer))
    return dirs


def test_the_ensembles_logits_are_the_members_weighted_mean(members):
    batch = {"input_ids": torch.tensor([[101, 2204, 3185, 102], [101, 2919, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), "token_type_ids": torch.zeros(2, 4).long()}
    a, b = (from_pretrained(m, task="sequence", id2label=NAMES)(**batch).logits for m in members)
    teacher = ensemble([str(m) for m in members], "sequence", NAMES, weights=[3, 1])
    torch.testing.assert_close(teacher(**batch).logits, (3 * a + b) / 4)
    assert not torch.allclose(a, b)  # two different teachers
    assert teacher.config.name_or_path == f"{members[0]}, {members[1]}"
    with pytest.raises(DistillError, match="gives logits only, not output_hidden_states"):
        teacher(**batch, output_hidden_states=True)


@pytest.mark.parametrize("members_of, weights, words", [
    (lambda m: [m[0]], None, "an ensemble needs two or more fine-tuned checkpoint dirs"),
    (lambda m: m, [1, -1], "give one non-negative weight per member (2)"),
    (lambda m: m, [1], "give one non-negative weight per member (2)"),
    (lambda m: m, [1, float("inf")], "give one non-negative weight per member (2)"),
    (lambda m: m, ["a", 1], "give one non-negative weight per member (2)"),
])
def test_impossible_ensembles_are_one_line(members, members_of, weights, words):
    with pytest.raises(DistillError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ensemble([str(m) for m in members_of(members)], "sequence", NAMES, weights=weights)


def test_members_with_different_tokenizers_are_refused(members, tmp_path):
    from transformers import BertTokenizerFast

    from tests.foreign_helpers import roberta_teacher

    other = roberta_teacher(tmp_path / "roberta", "sequence", steps=1)
    with pytest.raises(DistillError, match="mixes BERT and other architectures"):
        ensemble([str(members[0]), str(other)], "sequence", NAMES)
    cased = tmp_path / "cased"  # the same model and vocabulary, but a tokenizer that keeps case
    save_pretrained(from_pretrained(members[1]), cased, BertTokenizerFast.from_pretrained(
        minilm_l6_path(), do_lower_case=False))
    with pytest.raises(DistillError, match="read the text with different tokenizers"):
        ensemble([str(members[0]), str(cased)], "sequence", NAMES)
    with pytest.raises(DistillError, match="was saved as a sequence classifier .BertForSequenceClassification. but "
                                           "the data is a token task"):
        ensemble([str(m) for m in members], "token", {0: "O", 1: "B-x"})  # a sentence classifier read as a tagger


def test_train_from_an_ensemble_through_the_cli(members, tmp_path):
    """`distill train teacher=ensemble teacher.members=[A,B]`: the teacher's test score in metrics.json is the
    averaged members' (computed here from each member alone); the logits cache holds the average."""
    run = cli_run.distill("train", "teacher=ensemble", f"teacher.members=[{members[0]},{members[1]}]", "student=tiny",
                          "data=tiny", "losses=logits", "trainer.epochs=2", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    from distill import evaluate as ev
    from distill.data.sources import tiny
    from distill.preflight import eval_split

    rows, names, _ = eval_split(tiny("sequence"), load_tokenizer(minilm_l6_path()), split="test", max_length=32)
    forwards = [ev.torch_forward(from_pretrained(m, task="sequence", id2label=NAMES)) for m in members]
    mean = ev.predict(lambda batch: sum(f(batch) for f in forwards) / 2, rows, "sequence")
    assert metrics["teacher"]["accuracy"] == ev.metrics(mean, names)["accuracy"]
    from distill.models.student import count_parameters

    assert metrics["teacher_params"]["total"] == sum(count_parameters(from_pretrained(m))["total"] for m in members)
    log = (tmp_path / "cli.log").read_text()
    assert "an ensemble of 2" in log and "rows present" in log
    import numpy as np

    from distill.data.tokenize import tokenize

    train = tokenize(tiny("sequence"), load_tokenizer(minilm_l6_path()), 32)["train"]  # the run's encoding
    mean_logits = torch.cat([sum(f(batch) for f in forwards) / 2 for batch in ev.batches(train, 64)])  # (N, 2)
    (cache,) = (tmp_path / "teacher_cache").glob("teacher-*")
    stored = np.memmap(cache / "logits.f16", np.float16, "r", shape=(len(train), 2))
    assert np.memmap(cache / "filled.u8", np.uint8, "r", shape=(len(train),)).all()
    torch.testing.assert_close(torch.tensor(np.asarray(stored), dtype=torch.float32), mean_logits, atol=1e-2, rtol=1e-3)
    assert f"{members[0]}, {members[1]}" in (tmp_path / "student" / "README.md").read_text()  # the card names both


@pytest.mark.parametrize("command, extra, words", [
    ("train", ["losses=tinybert"], "a loss term reads the teacher's attentions, but an ensemble of teachers gives "
                                   "logits only"),
    ("pipeline", [], "distill pipeline fine-tunes one teacher; an ensemble of fine-tuned teachers is distilled with"),
])
def test_what_an_ensemble_cannot_do_is_one_line(members, command, extra, words, tmp_path, capsys, monkeypatch):
    from distill.cli import main

    monkeypatch.chdir(tmp_path)
    code = main([command, "teacher=ensemble", f"teacher.members=[{members[0]},{members[1]}]", "student=tiny",
                 "data=tiny", "trainer.max_steps=1", *extra, f"hydra.run.dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and words in err, repr(err)
