"""Invariances on real (tiny) model outputs: a student equal to its teacher scores zero; padding is
invisible — whatever the padded tokens are, and however padded positions are shuffled or filled."""

import pytest
import torch

from distill.losses.attention import AttentionKL, AttentionMSE
from distill.losses.hard import HardCrossEntropy
from distill.losses.hidden import HiddenCosine, HiddenMSE, PatientKD
from distill.losses.logits import LogitsKL, LogitsMSE, SoftCrossEntropy
from distill.losses.relation import MiniLMRelation
from distill.models.heads import BertForSequenceClassification, BertForTokenClassification
from distill.outputs import ModelOutputs
from tests.conftest import padded_batch, tiny_config

TEACHER_TERMS = {
    "kl": lambda: LogitsKL(temperature=2.0),
    "mse": LogitsMSE,
    "hidden": HiddenMSE,
    "cosine": lambda: HiddenCosine(layer_map="uniform"),
    "pkd": PatientKD,
    "att_mse": AttentionMSE,
    "att_kl": AttentionKL,
    "relation": lambda: MiniLMRelation(layer_map="uniform"),
    "relation_v1": lambda: MiniLMRelation(relations=["qk", "vv"], relation_heads=4),
}
TASKS = {"sequence": BertForSequenceClassification, "token": BertForTokenClassification}
FLAGS = {"output_hidden_states": True, "output_attentions": True, "output_qkv": True}


def model(task, seed, **changes):
    torch.manual_seed(seed)
    # a wide init: peaked attention maps and logits, so every loss has a value well above 1e-6
    m = TASKS[task](tiny_config(initializer_range=0.3, **changes))
    m.init_weights()
    return m.eval()


def batch_for(task, ids, mask):
    g = torch.Generator().manual_seed(7)
    if task == "sequence":
        labels = torch.randint(0, 3, (ids.shape[0],), generator=g)
    else:
        labels = torch.randint(0, 3, ids.shape, generator=g).masked_fill(mask == 0, -100)
        labels[0, 2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("task", TASKS)
def test_student_identical_to_teacher_scores_zero(task):
    teacher = model(task, 0)
    ids, mask = padded_batch(0)
    batch = batch_for(task, ids, mask)
    with torch.no_grad():
        out = teacher(ids, mask, **FLAGS)
    for name, make in TEACHER_TERMS.items():
        loss = make()
        loss.setup(teacher.config, teacher.config)
        assert loss(out, out, batch).abs().item() < 1e-6, name
    # soft cross-entropy bottoms out at the teacher's entropy: at a match its gradient is zero
    logits = out.logits.clone().requires_grad_(True)
    SoftCrossEntropy(temperature=2.0)(ModelOutputs(logits=logits, attention_mask=mask), out, batch).backward()
    assert logits.grad.abs().max() < 1e-7


def scramble(out: ModelOutputs, mask: torch.Tensor, seed: int) -> ModelOutputs:
    """Shuffle the padded positions of every row among themselves and add noise there, on every time axis."""
    g = torch.Generator().manual_seed(seed)
    B, T = mask.shape
    perm = torch.arange(T).repeat(B, 1)  # (B, T)
    for b in range(B):
        pad = (mask[b] == 0).nonzero().squeeze(1)
        perm[b, pad] = pad[torch.randperm(len(pad), generator=g)]
    pad = mask == 0

    def noisy(x, time_dims):
        for dim in time_dims:  # permute along each time axis of (B, ..., T, ...)
            index = perm.view(B, *([1] * (dim - 1)), T, *([1] * (x.dim() - dim - 1))).expand_as(x)
            x = x.gather(dim, index)
        for dim in time_dims:
            where = pad.view(B, *([1] * (dim - 1)), T, *([1] * (x.dim() - dim - 1))).expand_as(x)
            x = torch.where(where, x + 10 * torch.randn(x.shape, generator=g), x)
        return x

    return ModelOutputs(
        logits=noisy(out.logits, [1]) if out.logits.dim() == 3 else out.logits,
        hidden_states=tuple(noisy(h, [1]) for h in out.hidden_states),
        attentions=tuple(noisy(a, [2, 3]) for a in out.attentions),
        qkv=tuple(tuple(noisy(x, [2]) for x in layer) for layer in out.qkv),
        attention_mask=mask,
    )


@pytest.mark.parametrize("task", TASKS)
def test_padding_never_changes_a_loss(task):
    teacher = model(task, 0)
    student = model(task, 1, hidden_size=16, num_hidden_layers=1, intermediate_size=20)
    for m in (teacher, student):
        m.bert.skip_padding = False  # compute at padded positions, as transformers does: real values there
    ids, mask = padded_batch(1)
    other_ids = torch.where(mask.bool(), ids, torch.randint(1, 99, ids.shape))  # different padded tokens
    batch = batch_for(task, ids, mask)
    with torch.no_grad():
        s, t = student(ids, mask, **FLAGS), teacher(ids, mask, **FLAGS)
        s2, t2 = student(other_ids, mask, **FLAGS), teacher(other_ids, mask, **FLAGS)
    assert (s2.hidden_states[-1] - s.hidden_states[-1]).abs().max() > 1e-3  # padding did change
    terms = {name: make() for name, make in TEACHER_TERMS.items()}
    terms["hard"] = HardCrossEntropy()
    for name, loss in terms.items():
        loss.setup(student.config, teacher.config)
        reference = loss(s, t, batch).item()
        assert reference > 1e-4, name  # a non-trivial value, so "unchanged" means something
        assert abs(loss(s2, t2, batch).item() - reference) < 1e-6, name
        assert abs(loss(scramble(s, mask, 1), scramble(t, mask, 2), batch).item() - reference) < 1e-6, name
