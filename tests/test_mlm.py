"""BERT's pre-training objectives: the masking rule, the masked-LM / NSP losses, general distillation
from the CLI (a tiny teacher whose masked-LM head is fitted, then a task stage from its student)."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from omegaconf import OmegaConf

from distill.data.masking import MaskingCollator
from distill.errors import DistillError
from distill.losses.mlm import MaskedLM, MaskedLMKD, NextSentence
from distill.models.hub import load_tokenizer, minilm_l6_path
from distill.outputs import ModelOutputs
from tests import cli_run
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(minilm_l6_path())


def _rows(tokenizer, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(1000, 30000, (20 + i,), generator=g).tolist()
        ids = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "idx": i})
    return rows


def test_masking_follows_berts_80_10_10_rule_on_a_seeded_batch(tokenizer):
    collate = MaskingCollator(tokenizer)
    rows = _rows(tokenizer)
    original = collate.pad(rows)["input_ids"]
    batch = collate(rows)
    chosen = batch["mlm_positions"]
    real = ~torch.isin(original, torch.tensor(tokenizer.all_special_ids))  # (B, T)
    masked = chosen & (batch["input_ids"] == tokenizer.mask_token_id)
    kept = chosen & (batch["input_ids"] == original)
    random = chosen & ~masked & ~kept
    # golden counts for seed 0, epoch 0 (3,296 real tokens): 15.3% chosen; of those 80% [MASK], 10.5% random, 9.5% kept
    assert (int(real.sum()), int(chosen.sum()), int(masked.sum()), int(random.sum()), int(kept.sum())) == \
        (3296, 504, 403, 53, 48)
    assert not (chosen & ~real).any()  # never [CLS], [SEP] or padding
    assert torch.equal(batch["labels"][chosen], original[chosen]) and (batch["labels"][~chosen] == -100).all()
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])
    torch.manual_seed(123)
    assert torch.equal(collate(rows)["input_ids"], batch["input_ids"])  # (seed, epoch, rows): not the global RNG
    collate.set_epoch(1)
    assert not torch.equal(collate(rows)["mlm_positions"], chosen)  # every epoch masks afresh


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(tokenizer):
    text = "the histrionics of an unbelievably tedious film " * 6
    ids = tokenizer(text)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    collate = MaskingCollator(tokenizer, probability=0.3, whole_word=True)
    chosen = collate([{"input_ids": ids, "attention_mask": [1] * len(ids), "idx": 0}])["mlm_positions"][0]
    assert 0 < chosen.sum() < len(ids) - 2
    for t in range(1, len(ids) - 1):  # a piece is chosen exactly when the piece before it in its word is
        if pieces[t].startswith("##"):
            assert chosen[t] == chosen[t - 1], (t, pieces[t])


def _mlm_batch():
    labels = torch.tensor([[-100, 5, -100, 7], [3, -100, -100, -100]])
    return {"labels": labels, "mlm_positions": labels != -100, "attention_mask": torch.ones(2, 4)}


def test_masked_lm_losses_read_the_masked_rows_only():
    torch.manual_seed(0)
    batch = _mlm_batch()
    full_s, full_t = torch.randn(2, 4, 11), torch.randn(2, 4, 11)  # (B, T, V)
    keep = batch["mlm_positions"]
    rows_s, rows_t = full_s[keep], full_t[keep]  # (3, V): what a model decoding only the masked rows returns
    targets = torch.tensor([5, 7, 3])
    mlm = MaskedLM()
    expected = F.cross_entropy(rows_s, targets)
    assert torch.allclose(mlm(ModelOutputs(logits=full_s), None, batch), expected)
    assert torch.allclose(mlm(ModelOutputs(logits=rows_s), None, batch), expected)
    kd = MaskedLMKD(temperature=1.0)
    kl = F.kl_div(rows_s.log_softmax(-1), rows_t.softmax(-1), reduction="batchmean")
    assert torch.allclose(kd(ModelOutputs(logits=rows_s), ModelOutputs(logits=rows_t), batch), kl)
    hot = MaskedLMKD(temperature=2.0)
    kl2 = F.kl_div((rows_s / 2).log_softmax(-1), (rows_t / 2).softmax(-1), reduction="batchmean") * 4
    assert torch.allclose(hot(ModelOutputs(logits=full_s), ModelOutputs(logits=full_t), batch), kl2)
    assert float(kd(ModelOutputs(logits=rows_t), ModelOutputs(logits=rows_t), batch)) == pytest.approx(0, abs=1e-6)


def test_next_sentence_loss_and_one_line_errors():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    batch = {"next_sentence_label": torch.tensor([0, 0])}
    value = NextSentence()(ModelOutputs(nsp_logits=logits), None, batch)
    assert value.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 0])).item())
    with pytest.raises(DistillError, match="needs sentence pairs"):
        NextSentence()(ModelOutputs(nsp_logits=logits), None, {})
    with pytest.raises(DistillError, match="the student's vocabulary has 50 tokens but the teacher's 99"):
        MaskedLMKD().setup(tiny_config(vocab_size=50), tiny_config())
    with pytest.raises(DistillError, match="needs masked-LM labels"):
        MaskedLM()(ModelOutputs(logits=torch.randn(3, 5)), None, {})


def _cli(*args, cache):
    return cli_run.distill(*args, env={"DISTILL_CACHE": str(cache)})  # in this process (tests/cli_run.py)


def test_general_distillation_from_the_cli_then_a_task_stage_from_its_student(tmp_path):
    """`distill train recipe=general_compact` (tiny teacher, raw tiny text), then the README's second stage."""
    general = tmp_path / "general"
    run = _cli("train", "recipe=general_compact", "data=tiny", "data.source.task=raw", "data.mlm.head_texts=120",
               "data.mlm.teacher_head.epochs=8", "data.mlm.teacher_head.lr=0.05", "data.mlm.teacher_head.batch_size=32",
               "teacher=tiny", "student.num_hidden_layers=2", "student.hidden_size=16",
               "student.num_attention_heads=2", "student.intermediate_size=32", "trainer.max_steps=6",
               "trainer.eval_every=3", f"hydra.run.dir={general}", cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((general / "metrics.json").read_text())
    for model in ("student", "teacher"):
        assert 0 <= metrics[model]["mlm_accuracy"] <= 1 and metrics[model]["mlm_perplexity"] > 1
    assert metrics["teacher"]["mlm_accuracy"] > 0.02  # the fitted head learned the corpus's frequent words
    logged = [json.loads(line) for line in (general / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in logged if "eval/mlm_accuracy" in row]
    assert [row["step"] for row in evals] == [3, 6]
    assert metrics["best_validation"] == max(row["eval/mlm_accuracy"] for row in evals)
    assert metrics["split"] == "validation" and (general / "training_curves.png").stat().st_size > 0
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(general / "student", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and hf.config.hidden_size == 16
    task = _cli("train", "data=tiny", "teacher=tiny", "student=pretrained",
                f"student.name_or_path={general / 'student'}", "trainer.max_steps=4",
                f"hydra.run.dir={tmp_path / 'task'}", cache=tmp_path / "cache")
    assert task.returncode == 0, task.stderr[-3000:]
    assert json.loads((tmp_path / "task" / "metrics.json").read_text())["steps"] == 4


def _docs(n=40):
    import random

    rng = random.Random(0)
    words = ["film", "plot", "actor", "scene", "music", "story", "ending", "script"]
    sentence = "the {} number {} {} was {}."
    return [" ".join(sentence.format(rng.choice(words), d, s, rng.choice(words)) for s in range(rng.randint(1, 6)))
            for d in range(n)]


def test_sentence_pairs_are_half_next_half_random_with_segment_types(tokenizer):
    import datasets

    from distill.data.corpus import TaskData
    from distill.data.pairs import sentence_pairs

    data = TaskData(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": _docs()})}), [], "raw",
                    name="docs")
    pairs = sentence_pairs(data, tokenizer, max_length=24)["train"]
    again = sentence_pairs(data, tokenizer, max_length=24)["train"]
    assert pairs["input_ids"] == again["input_ids"] and pairs["idx"] == list(range(len(pairs)))
    labels = pairs["next_sentence_label"]
    assert 0.35 < sum(labels) / len(labels) < 0.65 and len(labels) > 40
    for row in pairs:
        ids, types = row["input_ids"], row["token_type_ids"]
        assert len(ids) <= 24 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        first_sep = ids.index(tokenizer.sep_token_id)
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1) and len(ids) - first_sep > 2
        a, b = tokenizer.decode(ids[1:first_sep]), tokenizer.decode(ids[first_sep + 1:-1])
        doc_a, doc_b = (int(x.split("number ")[1].split()[0]) for x in (a, b))
        assert (doc_a == doc_b) == (row["next_sentence_label"] == 0)  # "is next" pairs come from one review


def test_general_distillation_with_next_sentence_prediction_on_a_users_text_file(tmp_path):
    """`distill train recipe=general_compact_nsp data=files data.task=raw data.train_file=corpus.txt`: a
    user's own raw text (one document per line) → a BertForPreTraining student."""
    (tmp_path / "corpus.txt").write_text("\n".join(_docs(200)) + "\n")
    run = _cli("train", "recipe=general_compact_nsp", "data=files", "data.task=raw",
               f"data.train_file={tmp_path / 'corpus.txt'}", "data.max_length=32", "data.mlm.head_texts=40",
               "data.mlm.teacher_head.max_length=32", "teacher=tiny", "student.num_hidden_layers=1",
               "student.hidden_size=16", "student.num_attention_heads=2", "student.intermediate_size=32",
               "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'run'}", cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.2 < metrics["student"]["nsp_accuracy"] < 0.8  # 4 steps: about a coin, on the held-out pairs
    assert "nsp_accuracy" not in metrics["teacher"]  # its NSP head was never trained: not reported
    hf, info = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "run" / "student",
                                                                     output_loading_info=True)
    assert type(hf).__name__ == "BertForPreTraining" and not info["missing_keys"] and not info["unexpected_keys"]


class _InterruptAt(MaskedLM):
    """Masked-LM that sends this process SIGINT in its n-th forward: Ctrl-C at an exact step, no clock."""

    def __init__(self, n=0, **kw):
        super().__init__(**kw)
        self.n, self.calls = n, 0

    def forward(self, student, teacher, batch):
        import signal

        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(student, teacher, batch)


def test_interrupted_general_distillation_resumes_to_identical_weights(tmp_path, tokenizer):
    """Masks are a function of (seed, epoch, rows), not of the loader's look-ahead: the resumed run masks
    its next batch as the uninterrupted one did (dropout on), so the weights end bit-identical."""
    from distill.data.collate import make_dataloader
    from distill.data.sources import tiny
    from distill.data.tokenize import tokenize
    from distill.engine import train
    from distill.losses.base import CompositeLoss
    from distill.losses.hidden import HiddenCosine
    from distill.models.student import random_bert, student_from_config
    from tests import engine_helpers as H

    tokenized = tokenize(tiny(task="raw", rows=120), tokenizer, 32)

    def run(out, interrupt_at=0):
        torch.manual_seed(0)
        teacher = random_bert("mlm", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64)
        student = student_from_config(teacher, 1, 16, 2, 32)
        loss = CompositeLoss(kd=MaskedLMKD(temperature=2.0), mlm=_InterruptAt(interrupt_at), cosine=HiddenCosine())
        loss.setup(student.config, teacher.config)
        train_loader = make_dataloader(tokenized["train"], MaskingCollator(tokenizer), 16, shuffle=True, seed=0)
        eval_loader = make_dataloader(tokenized["validation"], MaskingCollator(tokenizer), 16, shuffle=False)
        return train(H.config(epochs=2, load_best_at_end=False), student, loss, train_loader, eval_loader, out,
                     "mlm", [], teacher=teacher)

    full = run(tmp_path / "full")
    assert [r["step"] for r in full.history if "eval/mlm_accuracy" in r] == [7, 14]
    with pytest.raises(DistillError, match="interrupted at step 5"):
        run(tmp_path / "cut", interrupt_at=5)
    resumed = run(tmp_path / "cut")
    assert resumed.steps == full.steps == 14
    weights = full.student.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in resumed.student.state_dict().items())


@pytest.mark.parametrize("args,message", [
    (["data=tiny"], "data.mlm masks raw text, but tiny-sequence is a sequence task"),
    (["data=tiny", "data.source.task=raw", "data.mlm.nsp=true"], "data.mlm.nsp=true trains the next-sentence head"),
    (["data=tiny", "data.source.task=raw", "+losses.nsp._target_=distill.losses.mlm.NextSentence"],
     "a NextSentence loss term needs sentence pairs"),
])
def test_mismatched_masked_lm_settings_are_one_line(tmp_path, args, message):
    run = _cli("train", "recipe=general_compact", "teacher=tiny", "student=tiny", "data.mlm.teacher_head.epochs=0",
               *args, f"hydra.run.dir={tmp_path / 'run'}", cache=tmp_path / "cache")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), run.stderr[-500:]


def test_a_teacher_checkpoint_with_a_masked_lm_head_keeps_it(tmp_path):
    """Only a checkpoint without cls.predictions (the packaged MiniLM) gets a fitted head; a real
    masked-LM teacher (e.g. bert-base-uncased) teaches with its own."""
    from omegaconf import OmegaConf

    from distill.data.sources import tiny
    from distill.models.hub import from_pretrained, save_pretrained
    from distill.models.student import random_bert
    from distill.run import with_masked_lm_head

    torch.manual_seed(0)
    model = random_bert("mlm", num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    save_pretrained(model, tmp_path / "mlm", load_tokenizer(minilm_l6_path()))
    cfg = OmegaConf.create({"data": {"mlm": {"head_texts": 50, "teacher_head": {"epochs": 1, "max_length": 32}}}})
    teacher = from_pretrained(tmp_path / "mlm", task="mlm")
    head = {k: v.clone() for k, v in teacher.cls.state_dict().items()}
    kept = with_masked_lm_head(cfg, teacher, tiny(task="raw", rows=60))
    assert all(torch.equal(v, kept.cls.state_dict()[k]) for k, v in head.items())
    bare = from_pretrained(tmp_path / "mlm", task="base")
    save_pretrained(bare, tmp_path / "bare", load_tokenizer(minilm_l6_path()))
    fitted = with_masked_lm_head(cfg, from_pretrained(tmp_path / "bare", task="mlm"), tiny(task="raw", rows=60))
    assert not torch.equal(fitted.cls.predictions.transform.dense.weight, head["predictions.transform.dense.weight"])


def test_readme_wnut16_task_pipeline_from_a_general_student(tmp_path):
    """`distill pipeline recipe=wnut16_compact_general student.name_or_path=outputs/general/student` as the README
    writes it (tiny teacher, WNUT-16 cut to 32 rows): the KD stage starts from the general student's weights."""
    general = tmp_path / "general"
    run = _cli("train", "recipe=general_compact", "data=tiny", "data.source.task=raw", "data.mlm.head_texts=120",
               "data.mlm.teacher_head.epochs=1", "teacher=tiny", "student.num_hidden_layers=2",
               "student.hidden_size=16", "student.num_attention_heads=2", "student.intermediate_size=32",
               "trainer.max_steps=2", f"hydra.run.dir={general}", cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "wnut"
    task = _cli("pipeline", "recipe=wnut16_compact_general", f"student.name_or_path={general / 'student'}",
                "teacher=tiny", "data.limit=32", "trainer.max_steps=2", "finetune.max_steps=2", "data.augment.n=1",
                "export.formats=[hf]", f"stage_root={tmp_path / 'stages'}", f"hydra.run.dir={out}",
                cache=tmp_path / "cache")
    assert task.returncode == 0, task.stderr[-3000:]
    stages = json.loads((out / "pipeline.json").read_text())
    kd = OmegaConf.load(Path(stages["distill"]) / "stage.yaml")
    assert kd.student.name_or_path == str(general / "student") and kd.data.augment.n == 1
    assert transformers.AutoConfig.from_pretrained(Path(stages["distill"]) / "student").hidden_size == 16
