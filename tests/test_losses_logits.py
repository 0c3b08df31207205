"""Golden values for the logits losses and the hard-label loss, on (B, C) and padded (B, T, C)."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses.hard import HardCrossEntropy
from distill.losses.logits import LogitsKL, LogitsMSE, SoftCrossEntropy
from distill.losses.schedules import Linear
from distill.outputs import ModelOutputs
from tests.conftest import tiny_config

TOL = 1e-6


def outs(logits, mask=None):
    return ModelOutputs(logits=logits, attention_mask=mask)


def token_case(seed=0, batch=3, length=5, classes=4):
    """Token logits (B, T, C) in float64, row b padded after T - b tokens, a few real tokens labelled -100."""
    B, T, C = batch, length, classes
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 2
    t = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 2
    mask = torch.ones(B, T, dtype=torch.long)
    for b in range(B):
        mask[b, T - b:] = 0
    labels = torch.randint(0, C, (B, T), generator=g)
    labels[mask == 0] = -100
    labels[0, 1] = -100  # a real but unlabelled token (a sub-word, an unmasked MLM token)
    labels[2, 0] = -100
    scored = [(b, i) for b in range(B) for i in range(T) if mask[b, i] and labels[b, i] != -100]
    return s, t, mask, labels, scored


def kl_row(s_row, t_row, temp):
    """KL(softmax(t/T) ‖ softmax(s/T)) with Python floats, the textbook way."""
    def softmax(z):
        e = [math.exp(x / temp) for x in z]
        return [x / sum(e) for x in e]
    ps, pt = softmax(s_row.tolist()), softmax(t_row.tolist())
    return sum(q * math.log(q / p) for p, q in zip(ps, pt))


def test_logits_kl_by_hand():
    # p_t = softmax([0, ln 3]) = [1/4, 3/4], p_s = [1/2, 1/2]
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert abs(LogitsKL()(outs(s), outs(t), {}).item() - expected) < TOL


def test_logits_kl_at_t1_equals_torch_kl_div_batchmean():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ours = LogitsKL(temperature=1.0)(outs(s), outs(t), {"labels": torch.zeros(6, dtype=torch.long)})
    ref = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    assert abs(ours.item() - ref.item()) < TOL


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.5])
def test_logits_kl_on_tokens_averages_over_real_labelled_tokens_only(temp):
    T = temp
    s, t, mask, labels, scored = token_case()
    batch = {"attention_mask": mask, "labels": labels}
    expected = T * T * sum(kl_row(s[b, i], t[b, i], T) for b, i in scored) / len(scored)
    assert abs(LogitsKL(temperature=T)(outs(s, mask), outs(t, mask), batch).item() - expected) < TOL


def test_logits_kl_on_tokens_without_labels_uses_every_real_token():
    s, t, mask, _, _ = token_case(seed=3)
    real = [(b, i) for b in range(3) for i in range(5) if mask[b, i]]
    expected = sum(kl_row(s[b, i], t[b, i], 1.0) for b, i in real) / len(real)
    assert abs(LogitsKL()(outs(s, mask), outs(t, mask), {"attention_mask": mask}).item() - expected) < TOL


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_logits_kl_gradient_is_t_times_ps_minus_pt_over_n(temp):
    T = temp
    s, t, mask, labels, scored = token_case(seed=2)
    s.requires_grad_(True)
    LogitsKL(temperature=T)(outs(s, mask), outs(t, mask), {"attention_mask": mask, "labels": labels}).backward()
    expected = torch.zeros_like(s)
    for b, i in scored:
        expected[b, i] = T * (F.softmax(s[b, i] / T, -1) - F.softmax(t[b, i] / T, -1)).detach() / len(scored)
    assert (s.grad - expected).abs().max() < TOL


def test_soft_cross_entropy_is_kl_plus_teacher_entropy_with_the_same_gradient():
    s, t, mask, labels, scored = token_case(seed=4)
    batch, T = {"attention_mask": mask, "labels": labels}, 2.0
    entropy = sum(-(p * math.log(p)) for b, i in scored for p in F.softmax(t[b, i] / T, -1).tolist())
    expected = T * T * (sum(kl_row(s[b, i], t[b, i], T) for b, i in scored) + entropy) / len(scored)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    ce = SoftCrossEntropy(temperature=T)(outs(s1, mask), outs(t, mask), batch)
    kl = LogitsKL(temperature=T)(outs(s2, mask), outs(t, mask), batch)
    assert abs(ce.item() - expected) < TOL
    ce.backward()
    kl.backward()
    assert (s1.grad - s2.grad).abs().max() < TOL


def test_logits_mse_by_hand_and_on_tokens():
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 2.0], [3.0, 1.0]], dtype=torch.float64)
    assert abs(LogitsMSE()(outs(s), outs(t), {}).item() - (1 + 0 + 9 + 4) / 4) < TOL
    s, t, mask, labels, scored = token_case(seed=5)
    expected = sum(((s[b, i] - t[b, i]) ** 2).sum().item() for b, i in scored) / (len(scored) * 4)
    got = LogitsMSE()(outs(s, mask), outs(t, mask), {"attention_mask": mask, "labels": labels})
    assert abs(got.item() - expected) < TOL


def test_teacher_cache_fp16_logits_are_upcast():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]]).half()
    value = LogitsKL()(outs(s), outs(t), {})
    assert value.dtype == torch.float32
    assert abs(value.item() - (0.25 * math.log(0.5) + 0.75 * math.log(1.5))) < 1e-3  # fp16 rounding of ln 3


def test_scheduled_temperature_follows_progress():
    kl = LogitsKL(temperature=Linear(4.0, 1.0))
    kl.set_progress(0.5)
    assert kl.current_temperature() == 2.5
    assert kl.extras() == {"temperature": 2.5}


def test_logits_errors_are_one_line():
    with pytest.raises(DistillError, match="temperature is 0"):
        LogitsKL(temperature=0.0)
    with pytest.raises(DistillError, match="num_labels=2 but the teacher 3"):
        LogitsKL().setup(tiny_config(num_labels=2), tiny_config(num_labels=3))
    with pytest.raises(DistillError, match=r"student logits \(2, 3\) and teacher logits \(2, 4\) differ"):
        LogitsKL()(outs(torch.zeros(2, 3)), outs(torch.zeros(2, 4)), {})
    with pytest.raises(DistillError, match="teacher's logits"):
        LogitsKL()(outs(torch.zeros(2, 3)), ModelOutputs(), {})
    with pytest.raises(DistillError, match="no teacher is configured"):
        LogitsKL().setup(tiny_config(), None)


# --- hard labels ---------------------------------------------------------------------------------

def test_hard_cross_entropy_sequence_by_hand_with_ignored_row():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0], [5.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, -100])
    expected = (-math.log(0.75) - math.log(0.5)) / 2
    assert abs(HardCrossEntropy()(outs(logits), None, {"labels": labels}).item() - expected) < TOL


def test_hard_cross_entropy_tokens_count_real_labelled_tokens_only():
    s, _, mask, labels, scored = token_case(seed=6)
    labels = labels.clone()
    labels[2, 4] = 1  # a label on a padded token (a sloppy collator): still ignored
    expected = -sum(F.log_softmax(s[b, i], -1)[labels[b, i]].item() for b, i in scored) / len(scored)
    got = HardCrossEntropy()(outs(s, mask), None, {"attention_mask": mask, "labels": labels})
    assert abs(got.item() - expected) < TOL


def test_hard_regression_and_errors():
    got = HardCrossEntropy()(outs(torch.tensor([[1.0], [3.0]])), None, {"labels": torch.tensor([0.0, 1.0])})
    assert abs(got.item() - (1 + 4) / 2) < TOL
    with pytest.raises(DistillError, match="needs batch\\['labels'\\]"):
        HardCrossEntropy()(outs(torch.zeros(2, 3)), None, {})
    with pytest.raises(DistillError, match="labels run 0..3 but the model has 3 classes"):
        HardCrossEntropy()(outs(torch.zeros(2, 3)), None, {"labels": torch.tensor([0, 3])})
    with pytest.raises(DistillError, match="sequence tasks need labels"):
        HardCrossEntropy()(outs(torch.zeros(2, 3)), None, {"labels": torch.zeros(2, 4, dtype=torch.long)})
    assert HardCrossEntropy.uses_teacher is False
