"""Training only the used word-embedding rows (trainer.trim_embeddings) gives the full table's weights."""

import logging

import pytest
import torch
from torch import nn

from distill.engine import train, trained_rows
from distill.errors import DistillError
from distill.models.hub import save_pretrained
from distill.models.used_rows import UsedRows, frozen_word_embeddings, used_rows_only
from tests import engine_helpers as H


def test_the_table_looks_up_what_the_full_table_does_for_any_id():
    torch.manual_seed(0)
    full = nn.Embedding(10, 4, padding_idx=0)
    table = UsedRows(full, torch.tensor([0, 3, 5, 3]))
    ids = torch.tensor([[0, 3, 5, 7], [9, 5, 1, 0]])  # 7, 9, 1: unused
    assert torch.equal(table(ids), full(ids))
    with torch.no_grad():
        table.weight[-1].fill_(0.5)  # what a step of weight decay does to every unused row
        table.weight[1].fill_(2.0)  # id 3 trained
    expected = full.weight.detach() * 0.5
    expected[[0, 5]] = full.weight.detach()[[0, 5]]
    expected[3] = 2.0
    assert torch.equal(table.full_weight(), expected)
    assert torch.equal(table(ids), expected[ids])
    table(ids).sum().backward()  # the unused ids and the padding row send no gradient
    assert table.weight.grad[-1].abs().sum() == 0 and table.weight.grad[0].abs().sum() == 0
    assert torch.equal(table.weight.grad[1], torch.ones(4)) and torch.equal(table.weight.grad[2], 2 * torch.ones(4))


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_training_the_used_rows_gives_the_weights_of_training_the_full_table(tmp_path, caplog, ema_decay):
    """Golden: the same run with trainer.trim_embeddings on and off (weight decay 0.01 on the table); with
    trainer.ema_decay, the moving averages of the two (an unused row's average is its start times the average of
    the decay factors, kept in the trimmed table's last row), which are not the last weights."""
    results = {}
    expected = sorted({0} | {i for row in H.dataset()["input_ids"] for i in row})  # the padding id and the data's
    unused = sorted(set(range(99)) - set(expected))
    assert len(unused) >= 5
    for trim in (False, True):
        teacher, student = H.models()
        initial = student.bert.embeddings.word_embeddings.weight.detach().clone()
        train_loader, val_loader = H.loaders()
        cfg = H.config(weight_decay=0.01, trim_embeddings=trim, ema_decay=ema_decay)
        if trim:
            used = torch.unique(trained_rows(cfg, train_loader, "sequence"))
            assert used.tolist() == expected
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="distill.models.used_rows"):
            train(cfg, student, H.KDTestLoss(), train_loader, val_loader, str(tmp_path / str(trim)), "sequence",
                  teacher=teacher)
        said = f"training the {len(expected)} of 99 rows"
        assert (said in caplog.text) == trim  # the trimmed run really trained the smaller table
        assert type(student.bert.embeddings.word_embeddings) is nn.Embedding  # the plain table is back
        results[trim] = {k: v.clone() for k, v in student.state_dict().items()}
    full, trimmed = results[False], results[True]
    assert full.keys() == trimmed.keys()
    table = "bert.embeddings.word_embeddings.weight"
    for key in full:  # here all but the table came out bit-identical; the table within 7.5e-9 (rounding the decay)
        torch.testing.assert_close(trimmed[key], full[key], rtol=1e-6 if key != table else 0, atol=1e-7 if
                                   key != table else 2e-8, msg=key)
    assert (full[table][unused] - initial[unused]).abs().max() > 1e-6  # what decay moved them by: the test can tell
    decay = full[table][unused] / initial[unused]  # the rows only weight decay moved: one factor, below 1
    assert decay.min() > 0.99 and decay.max() < 1 and decay.max() - decay.min() < 1e-6
    if ema_decay is not None:  # the average, not the last weights: a run without it ends elsewhere
        teacher, student = H.models()
        train_loader, val_loader = H.loaders()
        train(H.config(weight_decay=0.01), student, H.KDTestLoss(), train_loader, val_loader, str(tmp_path / "last"),
              "sequence", teacher=teacher)
        assert max(float((student.state_dict()[k] - trimmed[k]).abs().max()) for k in trimmed) > 1e-4


def test_a_model_saved_while_training_used_rows_is_a_plain_bert_dir(tmp_path):
    _, student = H.models()
    ids = torch.tensor([0, 1, 7, 8, 9])
    with used_rows_only(student, ids):
        assert isinstance(student.bert.embeddings.word_embeddings, UsedRows)
        with torch.no_grad():
            student.bert.embeddings.word_embeddings.weight[-1].fill_(0.9)
        save_pretrained(student, tmp_path / "saved")
        during = student.bert.embeddings.word_embeddings.full_weight()
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert saved.keys() == student.state_dict().keys()
    assert torch.equal(saved["bert.embeddings.word_embeddings.weight"], during)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight.detach(), during)


def test_masked_lm_and_other_collators_train_every_row():
    train_loader, _ = H.loaders()
    assert trained_rows(H.config(), train_loader, "mlm") is None
    assert trained_rows(H.config(trim_embeddings=False), train_loader, "sequence") is None
    train_loader.collate_fn = lambda rows: H.collate(rows)  # not the framework's collator: it may write other ids
    assert trained_rows(H.config(), train_loader, "sequence") is None


def test_a_table_that_renormalises_rows_trains_every_row():
    """max_norm rescales every looked-up row in the forward: not a zero-gradient-only update, so no trimming."""
    _, student = H.models()
    student.bert.embeddings.word_embeddings.max_norm = 1.0
    with used_rows_only(student, torch.tensor([0, 1, 7])):
        assert type(student.bert.embeddings.word_embeddings) is nn.Embedding


def test_frozen_word_embeddings_keep_their_start_while_the_rest_trains(tmp_path):
    """trainer.freeze_word_embeddings: the table comes out bit-identical (no step, no decay), every other matrix
    moves, requires_grad is back afterwards; a student without a BERT table is one line."""
    teacher, student = H.models()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    train_loader, val_loader = H.loaders()
    cfg = H.config(weight_decay=0.01, freeze_word_embeddings=True)
    assert trained_rows(cfg, train_loader, "sequence") is None  # nothing of the table trains: no UsedRows
    train(cfg, student, H.KDTestLoss(), train_loader, val_loader, str(tmp_path / "run"), "sequence", teacher=teacher)
    after = student.state_dict()
    table = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(after[table], before[table])
    moved = [k for k in after if k != table and after[k].ndim == 2 and not torch.equal(after[k], before[k])]
    assert len(moved) == sum(1 for k in after if k != table and after[k].ndim == 2)
    assert student.bert.embeddings.word_embeddings.weight.requires_grad
    message = "freeze_word_embeddings=true needs a student with a BERT word-embedding"
    refused = pytest.raises(DistillError, match=message)
    with refused, frozen_word_embeddings(nn.Linear(2, 2), True):
        pass
