"""benchmarks/peers.py's peers: TextBrewer and torchdistill, told our distillation, compute our loss and take
the hand loop's optimizer step on tiny random BERTs; the torchvision stand-in comes and goes.

The peer tests run only where the ``bench`` extra is installed (``pip install --no-deps textbrewer torchdistill``);
CI does not install it, so they skip there.
"""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

from tests.conftest import padded_batch, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the scripts import each other by name

import peer_libs  # noqa: E402
import peer_shims  # noqa: E402

PAIRS = (((0, 0), (1, 2), (2, 3)), ((1, 2), (2, 3)))  # (student, teacher) hidden states and maps, 0 = embeddings


def _models():
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_config(num_hidden_layers=3)).eval().requires_grad_(False)
    # no dropout: every loop then computes the same numbers from the same weights
    student = BertForSequenceClassification(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return teacher, student


def _batch():
    ids, mask = padded_batch()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _hand_loss(student, teacher, batch):
    inputs = peer_libs.model_inputs(batch)
    with torch.no_grad():
        t = teacher(**inputs, **peer_libs.MAPS)
    s = student(**inputs, **peer_libs.MAPS)
    kl = F.kl_div(F.log_softmax(s.logits, -1), F.softmax(t.logits, -1), reduction="batchmean")
    mask = batch["attention_mask"]
    hidden = sum(peer_libs.masked_hidden_mse(s.hidden_states[i], t.hidden_states[j], mask) for i, j in PAIRS[0])
    maps = sum(peer_libs.masked_attention_mse(s.attentions[i - 1], t.attentions[j - 1], mask) for i, j in PAIRS[1])
    return kl + hidden + maps, -(F.softmax(t.logits, -1) * F.log_softmax(t.logits, -1)).sum(-1).mean()


def _hand_step(student, teacher, batch):
    opt = peer_libs.adamw(student)
    sched = get_linear_schedule_with_warmup(opt, **peer_libs.schedule_args(1))
    _hand_loss(student, teacher, batch)[0].backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), peer_libs.CLIP)
    opt.step()
    sched.step()
    return student


def _same_weights(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_textbrewer_loss_and_step_match_the_hand_loop(tmp_path):
    pytest.importorskip("textbrewer")
    teacher, student = _models()
    batch = _batch()
    distiller = peer_libs.textbrewer_distiller(teacher, copy.deepcopy(student), PAIRS, str(tmp_path), ckpt_steps=1)
    with torch.no_grad():
        loss, _ = distiller.train_on_batch(batch, peer_libs.MAPS)
    hand, teacher_entropy = _hand_loss(student, teacher, batch)
    # its 'ce' KD term is the soft cross-entropy: our KL plus the teacher's entropy (a constant: same gradients)
    torch.testing.assert_close(loss, hand + teacher_entropy)
    peer_libs.textbrewer_train(distiller, [batch], steps=1)
    _same_weights(distiller.model_S, _hand_step(copy.deepcopy(student), teacher, batch))


def test_torchdistill_loss_and_step_match_the_hand_loop():
    pytest.importorskip("torchdistill")
    peer_libs.torchdistill_version()  # imports it (over the stand-in where needed), registers our terms
    teacher, student = _models()
    batch = _batch()
    box = peer_libs.torchdistill_box(teacher, copy.deepcopy(student), peer_libs.torchdistill_config(PAIRS, 1))
    box.pre_epoch_process(epoch=0)
    loss = peer_libs.torchdistill_step(box, batch)
    peer_libs.torchdistill_release(box)
    torch.testing.assert_close(loss.detach(), _hand_loss(student, teacher, batch)[0].detach())
    _same_weights(box.student_model, _hand_step(copy.deepcopy(student), teacher, batch))
    left = [h for m in teacher.modules() for h in m._forward_hooks.values() if h.__module__.startswith("torchdistill")]
    assert not left, "the box's hooks stay on the shared teacher"


def test_torchvision_stand_in_is_there_only_while_it_is_needed():
    if peer_shims.real_torchvision():
        pytest.skip("a real torchvision imports here: no stand-in is used")
    with peer_shims.torchvision_stand_in() as used:
        assert used
        from torchvision.models.resnet import BasicBlock

        with pytest.raises(ImportError, match="stand-in"):
            BasicBlock()
    assert "torchvision" not in sys.modules and "torchvision.models.resnet" not in sys.modules
