"""trainer.project_word_embeddings: a narrow student's table = the teacher's table (frozen) @ a trained projection."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from distill.engine import train, trained_rows
from distill.errors import DistillError
from distill.models import heads
from distill.models.hub import save_pretrained
from distill.models.projected_table import ProjectedTable, projected_word_embeddings, word_table
from distill.schema import TrainerConfig
from tests import engine_helpers as H
from tests.conftest import tiny_config

CHANNELS = torch.tensor([3, 0, 17, 9, 30, 12, 5, 21, 26, 1, 8, 14, 19, 28, 2, 11])  # 16 of the teacher's 32


def _narrow_pair(dropout: float = 0.0):
    """H's tiny teacher (hidden 32) and a 1-layer student of hidden 16 whose table is 16 of the teacher's
    channels, as pruning cuts it."""
    teacher, _ = H.models(dropout)
    torch.manual_seed(1)
    student = heads.BertForSequenceClassification(tiny_config(
        num_labels=2, num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=24,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))
    student.init_weights()
    with torch.no_grad():
        student.bert.embeddings.word_embeddings.weight.copy_(word_table(teacher)[:, CHANNELS])
    return teacher, student


def test_the_projection_starts_at_the_students_table_and_looks_up_source_times_projection():
    """Golden: a channel slice is fitted by its selection matrix exactly; lookups and the folded table are
    source[ids] @ projection; only the projection takes a gradient."""
    torch.manual_seed(0)
    source = torch.randn(10, 6)
    student = nn.Embedding(10, 3, padding_idx=0)
    with torch.no_grad():
        student.weight.copy_(source[:, [4, 1, 2]])
    table = ProjectedTable(student, source)
    selection = torch.zeros(6, 3)
    selection[4, 0] = selection[1, 1] = selection[2, 2] = 1.0
    torch.testing.assert_close(table.projection.detach(), selection, rtol=0, atol=1e-6)
    assert table.residual < 1e-6
    ids = torch.tensor([[0, 3, 9], [5, 5, 1]])
    torch.testing.assert_close(table(ids), student(ids), rtol=0, atol=1e-6)
    with torch.no_grad():
        table.projection.copy_(torch.arange(18.0).view(6, 3))
    assert torch.equal(table.full_weight(), source @ torch.arange(18.0).view(6, 3))
    assert torch.equal(table(ids), source[ids] @ torch.arange(18.0).view(6, 3))
    table(ids).sum().backward()
    assert table.source.grad is None and table.projection.grad is not None


def test_training_moves_every_row_inside_the_teachers_table_and_hands_back_a_plain_one(tmp_path):
    """After training: a plain nn.Embedding again, equal to the teacher's table times one (32, 16) matrix (the
    least-squares fit reproduces it), the teacher's table untouched, and the rows no training id looks up moved
    as much as the used ones (a trained table would only decay them)."""
    teacher, student = _narrow_pair()
    teacher_table = word_table(teacher).detach().clone()
    before = student.bert.embeddings.word_embeddings.weight.detach().clone()
    train_loader, val_loader = H.loaders()
    cfg = H.config(weight_decay=0.01, project_word_embeddings=True)
    assert trained_rows(cfg, train_loader, "sequence") is None  # no UsedRows: every row moves
    train(cfg, student, H.KDTestLoss(), train_loader, val_loader, str(tmp_path / "run"), "sequence", teacher=teacher,
          embedding_source=word_table(teacher))
    table = student.bert.embeddings.word_embeddings
    assert type(table) is nn.Embedding and table.weight.requires_grad
    after = table.weight.detach()
    assert torch.equal(word_table(teacher), teacher_table)
    fit = torch.linalg.lstsq(teacher_table.double(), after.double()).solution
    assert (teacher_table.double() @ fit - after.double()).abs().max() < 1e-5  # inside the teacher's table's span
    used = sorted({i for row in H.dataset()["input_ids"] for i in row} | {0})
    unused = sorted(set(range(99)) - set(used))
    moved = (after - before).norm(dim=1)
    assert moved[unused].mean() > 0.3 * moved[used].mean() > 0, (moved[unused].mean(), moved[used].mean())
    decay_only = after[unused] / before[unused]  # not one factor per table, as weight decay alone would give
    assert (decay_only.max() - decay_only.min()) > 1e-3


def test_a_model_saved_while_projecting_is_a_plain_bert_dir(tmp_path):
    teacher, student = _narrow_pair()
    with projected_word_embeddings(student, word_table(teacher)):
        table = student.bert.embeddings.word_embeddings
        assert isinstance(table, ProjectedTable)
        with torch.no_grad():
            table.projection.mul_(1.5)
        save_pretrained(student, tmp_path / "saved")
        during = table.full_weight()
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert saved.keys() == student.state_dict().keys()
    assert torch.equal(saved["bert.embeddings.word_embeddings.weight"], during)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight.detach(), during)


@pytest.mark.parametrize("ema_decay", [None, 0.8])
def test_ctrl_c_while_projecting_resumes_to_the_same_weights(tmp_path, ema_decay):
    def run(out, loss):
        teacher, student = _narrow_pair(dropout=0.1)
        train_loader, val_loader = H.loaders()
        cfg = H.config(epochs=2, load_best_at_end=False, project_word_embeddings=True, ema_decay=ema_decay)
        return train(cfg, student, loss,
                     train_loader, val_loader, out, "sequence", "ab", teacher=teacher,
                     embedding_source=word_table(teacher))

    message = r"interrupted at step 3: checkpoint saved in .*; run the same command"
    full, resumed = H.cut_by_ctrl_c_and_resumed(run, tmp_path, message)
    assert resumed.steps == 12
    table = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(full[table], _narrow_pair()[1].state_dict()[table])  # training did move the table
    assert all(torch.equal(full[k], v) for k, v in resumed.student.state_dict().items())


def test_projecting_without_a_teacher_table_or_with_the_table_frozen_is_one_line(tmp_path):
    teacher, student = _narrow_pair()
    train_loader, val_loader = H.loaders()
    with pytest.raises(DistillError, match="project_word_embeddings=true projects the teacher's word embeddings, "
                                           "and this run has no BERT teacher"):
        train(H.config(project_word_embeddings=True), student, H.KDTestLoss(with_teacher=False), train_loader,
              val_loader, str(tmp_path / "run"), "sequence")
    with pytest.raises(DistillError, match="trains a masked-LM, whose decoder is the table, or set it to false"):
        train(H.config(project_word_embeddings=True), student, H.KDTestLoss(), train_loader, val_loader,
              str(tmp_path / "mlm"), "mlm", teacher=teacher, embedding_source=word_table(teacher))
    with pytest.raises(DistillError, match="freeze_word_embeddings and trainer.project_word_embeddings are both true"):
        TrainerConfig(freeze_word_embeddings=True, project_word_embeddings=True)
    other_vocabulary = torch.zeros(50, 32)
    with pytest.raises(DistillError, match="project_word_embeddings=true needs a BERT student whose word-embedding"), \
            projected_word_embeddings(student, other_vocabulary):
        pass
