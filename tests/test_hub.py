"""Checkpoint dirs in and out, students from teachers, and the one-line errors."""

import json

import pytest
import torch
import transformers

from distill.errors import DistillError
from distill.models import heads
from distill.models.hub import from_pretrained, load_tokenizer, minilm_l6_path, save_pretrained
from distill.models.student import (
    count_parameters,
    student_from_config,
    student_from_pretrained,
    student_from_teacher,
)
from tests.conftest import padded_batch, tiny_config

AUTO = {
    "sequence": transformers.AutoModelForSequenceClassification,
    "token": transformers.AutoModelForTokenClassification,
    "mlm": transformers.AutoModelForMaskedLM,
    "pretraining": transformers.AutoModelForPreTraining,
}


def _ours(task, seed=0):
    torch.manual_seed(seed)
    model = heads.TASK_CLASSES[task](tiny_config())
    model.init_weights()
    return model.eval()


def _logits(out):
    return out.prediction_logits if hasattr(out, "prediction_logits") else out.logits


@pytest.mark.parametrize("task", ["sequence", "token", "mlm", "pretraining"])
def test_ours_to_transformers_round_trip(tmp_path, task):
    ours = _ours(task)
    save_pretrained(ours, tmp_path / "m")
    hf, info = AUTO[task].from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(hf).__name__ == type(ours).__name__
    ids, mask = padded_batch(0)
    with torch.no_grad():
        a = ours(ids, mask).logits
        b = _logits(hf.eval()(input_ids=ids, attention_mask=mask))
        if task == "pretraining":
            nsp = ours(ids, mask).nsp_logits - hf(input_ids=ids, attention_mask=mask).seq_relationship_logits
            assert nsp.abs().max() <= 1e-5
    real = mask.bool()
    diff = (a - b).abs().max() if a.dim() == 2 else (a - b)[real].abs().max()
    assert diff <= 1e-5


@pytest.mark.parametrize("task", ["sequence", "token", "mlm", "pretraining"])
def test_transformers_to_ours_round_trip(tmp_path, task):
    torch.manual_seed(1)
    hf = AUTO[task].from_config(tiny_config()).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf", task=task)
    assert not ours.newly_initialised  # every head tensor came from the checkpoint
    ids, mask = padded_batch(1)
    with torch.no_grad():
        a = ours(ids, mask).logits
        b = _logits(hf(input_ids=ids, attention_mask=mask))
        if task == "pretraining":
            nsp = (ours(ids, mask).nsp_logits - hf(input_ids=ids, attention_mask=mask).seq_relationship_logits)
            assert nsp.abs().max() <= 1e-5
    real = mask.bool()
    assert ((a - b).abs().max() if a.dim() == 2 else (a - b)[real].abs().max()) <= 1e-5


def test_pytorch_bin_is_read_with_weights_only(tmp_path):
    ours = _ours("sequence")
    save_pretrained(ours, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(ours.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    again = from_pretrained(tmp_path / "m")
    ids, mask = padded_batch(0)
    assert torch.equal(again(ids, mask).logits, ours(ids, mask).logits)


def test_packaged_minilm_loads_with_tokenizer():
    model = from_pretrained(minilm_l6_path(), task="sequence", num_labels=2)
    tok = load_tokenizer(minilm_l6_path())
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert tok.vocab_size == 30522 == model.config.vocab_size
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_student_from_teacher_copies_layers():
    teacher = _ours("sequence")
    student = student_from_teacher(teacher, layers=[1])
    assert student.config.num_hidden_layers == 1
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for key, value in s_sd.items():
        source = key.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(value, t_sd[source]), key
    assert count_parameters(student)["total"] < count_parameters(teacher)["total"]


def test_student_from_config_inherits_vocab_labels_and_embeddings():
    teacher = _ours("token")
    student = student_from_config(teacher, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                  init_embeddings=True)
    assert isinstance(student, heads.BertForTokenClassification)
    assert student.config.vocab_size == 99 and student.config.num_labels == 3
    assert student.config.intermediate_size == 128
    assert torch.equal(student.bert.embeddings.word_embeddings.weight,
                       teacher.bert.embeddings.word_embeddings.weight)
    narrow = student_from_config(teacher, num_hidden_layers=1, hidden_size=16, num_attention_heads=2)
    assert narrow.config.hidden_size == 16


def test_student_from_pretrained_takes_the_teachers_task_and_labels(tmp_path):
    teacher = _ours("token")
    teacher.config.id2label = {0: "O", 1: "B-x", 2: "I-x"}
    saved = student_from_config(teacher, num_hidden_layers=1, hidden_size=16, num_attention_heads=2)
    saved.config.id2label = {0: "a", 1: "b", 2: "c"}  # e.g. an earlier stage's placeholder names
    save_pretrained(saved, tmp_path / "s")
    student = student_from_pretrained(teacher, str(tmp_path / "s"))
    assert isinstance(student, heads.BertForTokenClassification) and student.training
    assert student.config.id2label == teacher.config.id2label and student.config.hidden_size == 16
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in student.state_dict().items())


def test_a_general_mlm_student_starts_a_task_and_builder_options_are_refused(tmp_path):
    """A masked-LM student (general distillation) → a sequence student: its encoder, a fresh head; an
    option of the from-config builders (project_embeddings) is one line, not a silent config attribute."""
    teacher = _ours("sequence")
    general = student_from_config(_ours("mlm"), num_hidden_layers=1, hidden_size=16, num_attention_heads=2)
    save_pretrained(general, tmp_path / "g")
    student = student_from_pretrained(teacher, str(tmp_path / "g"))
    assert type(student).__name__ == "BertForSequenceClassification"
    encoder = {k: v for k, v in general.state_dict().items() if k.startswith("bert.")}
    assert all(torch.equal(student.state_dict()[k], v) for k, v in encoder.items())
    with pytest.raises(DistillError, match="project_embeddings is not a BERT config setting"):
        student_from_pretrained(teacher, str(tmp_path / "g"), project_embeddings=True)


def test_project_embeddings_keeps_the_top_principal_directions():
    teacher = _ours("sequence")  # hidden 32
    words = teacher.bert.embeddings.word_embeddings.weight.detach()
    centred = words - words.mean(0)
    sigma2 = torch.linalg.svdvals(centred) ** 2
    full = student_from_config(teacher, 1, 32, 2, project_embeddings=True)  # a rotation: distances kept
    w = full.bert.embeddings.word_embeddings.weight.detach()
    assert torch.allclose(torch.cdist(w, w), torch.cdist(words, words), atol=1e-4)
    narrow = student_from_config(teacher, 1, 8, 2, project_embeddings=True)
    w8 = narrow.bert.embeddings.word_embeddings.weight.detach()
    captured = ((w8 - w8.mean(0)) ** 2).sum()
    assert torch.allclose(captured, sigma2[:8].sum(), rtol=1e-4)  # the largest 8 of 32 variances
    assert captured < 0.99 * sigma2.sum()
    pos_t = teacher.bert.embeddings.position_embeddings.weight.detach()
    pos_s = narrow.bert.embeddings.position_embeddings.weight.detach()
    basis = torch.linalg.lstsq(centred, w8 - w8.mean(0)).solution  # (32, 8): the map words went through
    assert torch.allclose(pos_s, pos_t @ basis, atol=1e-4)  # positions share the words' projection
    directions = basis.T  # (8, 32): each one's largest entry is positive, whatever sign LAPACK returned
    assert (directions.gather(1, directions.abs().argmax(1, keepdim=True)) > 0).all()
    with pytest.raises(DistillError, match="no wider"):
        student_from_config(teacher, 1, 64, 2, project_embeddings=True)


def _one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_errors_are_one_clear_line(tmp_path):
    teacher = _ours("sequence")
    with pytest.raises(DistillError) as e:
        student_from_teacher(teacher, layers=[9])
    _one_line(e, "layers=[9]", "2-layer", "0..1")
    with pytest.raises(DistillError) as e:
        student_from_config(teacher, 1, 16, 2, init_embeddings=True)
    _one_line(e, "init_embeddings")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError) as e:
        from_pretrained(tmp_path / "empty")
    _one_line(e, "config.json")
    with pytest.raises(DistillError) as e:
        from_pretrained(tmp_path / "missing")
    _one_line(e, "does not exist")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(DistillError) as e:
        from_pretrained(tmp_path / "gpt")
    _one_line(e, "gpt2", "BERT")
    with pytest.raises(DistillError) as e:
        from_pretrained("some-org/some-bert")  # HF_HUB_OFFLINE=1 in tests: no network here
    _one_line(e, "some-org/some-bert", "neither a local dir", "local checkpoint dir")


def test_mismatched_and_corrupt_checkpoints(tmp_path):
    save_pretrained(_ours("sequence"), tmp_path / "m")
    with pytest.raises(DistillError) as e:
        from_pretrained(tmp_path / "m", num_labels=5)
    _one_line(e, "3 labels", "num_labels=3")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["hidden_size"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DistillError) as e:
        from_pretrained(tmp_path / "m")
    _one_line(e, "does not match its weights")
    save_pretrained(_ours("sequence"), tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DistillError) as e:
        from_pretrained(tmp_path / "c")
    _one_line(e, "corrupt")


def test_save_is_atomic_over_an_existing_dir(tmp_path, monkeypatch):
    save_pretrained(_ours("sequence", seed=0), tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("distill.models.hub.save_file", crash)
    with pytest.raises(OSError):
        save_pretrained(_ours("sequence", seed=1), tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_a_head_in_another_label_order_is_mapped_by_name(tmp_path, task, caplog):
    """Issue 19 #1: the data's names were written over the checkpoint's, swapping the predictions."""
    torch.manual_seed(0)
    model = heads.TASK_CLASSES[task](tiny_config(num_labels=3, id2label={0: "positive", 1: "negative", 2: "neutral"}))
    model.init_weights()
    save_pretrained(model.eval(), tmp_path / "m")
    with caplog.at_level("INFO", logger="distill.models.hub"):
        loaded = from_pretrained(tmp_path / "m", task=task, id2label={0: "negative", 1: "neutral", 2: "Positive"})
    assert "rows reordered to the data's" in caplog.text
    assert loaded.config.id2label == {0: "negative", 1: "neutral", 2: "Positive"}
    ids, mask = padded_batch(0)
    with torch.no_grad():
        own, mapped = model(ids, mask).logits, loaded(ids, mask).logits
    assert torch.allclose(mapped, own[..., [1, 2, 0]], atol=1e-6)  # output i is still label i by name
    same = from_pretrained(tmp_path / "m", task=task, id2label={0: "positive", 1: "negative", 2: "neutral"})
    with torch.no_grad():
        assert torch.allclose(same(ids, mask).logits, own, atol=1e-6)


def test_a_checkpoint_without_its_tokenizer_or_with_a_bigger_one_is_one_line(tmp_path):
    """Issue 19 #2: no tokenizer files gave a 5-token tokenizer (every input [UNK]); a tokenizer larger
    than the model's vocabulary gave an IndexError mid-run."""
    save_pretrained(_ours("sequence"), tmp_path / "bare")  # no tokenizer saved beside it
    with pytest.raises(DistillError) as e:
        load_tokenizer(tmp_path / "bare")
    _one_line(e, "has no tokenizer files", "tokenizer.save_pretrained")
    save_pretrained(_ours("sequence"), tmp_path / "small", load_tokenizer(minilm_l6_path()))  # vocab_size 99
    with pytest.raises(DistillError) as e:
        load_tokenizer(tmp_path / "small")
    _one_line(e, "30,522 tokens but the model's vocab_size is 99", "another model")
