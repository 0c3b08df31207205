"""oneDNN's linear in no-grad fp32 CPU inference (``ops.linear``): the same results as F.linear, taken
only where it should be, packed weights kept only inside ``packed_while_frozen`` and never read stale."""

import pytest
import torch
from torch import nn

from distill.engine import train
from distill.models import heads, ops
from tests import engine_helpers as h
from tests.conftest import padded_batch, tiny_config

pytestmark = pytest.mark.skipif(not ops._onednn_works(), reason="this torch build has no oneDNN linear")


def _model(seed=0, **config):
    torch.manual_seed(seed)
    return heads.BertForSequenceClassification(tiny_config(**config)).eval()


def _forward(model, on: bool, **flags):
    ids, mask = padded_batch(1)
    ops.ONEDNN_INFERENCE = on
    try:
        with torch.no_grad():
            return model(ids, mask, **flags)
    finally:
        ops.ONEDNN_INFERENCE = True


def _packed(model) -> set:
    return {m for m in model.modules() if m in ops._PACKED}


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu"])
def test_same_outputs_as_f_linear_packed_or_not_with_every_activation(act):
    model = _model(hidden_act=act).requires_grad_(False)
    old = _forward(model, False, output_hidden_states=True, output_attentions=True)
    live = _forward(model, True, output_hidden_states=True, output_attentions=True)
    assert not _packed(model)  # outside the scope nothing is kept
    with ops.packed_while_frozen(model):
        packed = _forward(model, True, output_hidden_states=True, output_attentions=True)
        _forward(model, True)  # no maps: attention through SDPA, Q/K/V without 1/√d folded in
        layer = model.bert.encoder.layer[0]
        assert _packed(model) == {m for l in model.bert.encoder.layer for m in  # noqa: E741
                                  (l.attention.self, l.attention.output.dense, l.intermediate.dense, l.output.dense)}
        assert len(ops._PACKED[layer.attention.self]) == 2  # the maps path (1/√d folded in) and SDPA's
    assert not _packed(model)  # dropped on exit
    for new in (live, packed):
        assert torch.allclose(new.logits, old.logits, atol=1e-6)
        for a, b in zip(new.hidden_states + new.attentions, old.hidden_states + old.attentions, strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_a_frozen_weight_changed_in_place_inside_the_scope_is_packed_again():
    model = _model(0).requires_grad_(False)
    with ops.packed_while_frozen(model):
        _forward(model, True)  # packs seed 0's weights
        model.load_state_dict(_model(1).state_dict())  # copy_ into the same tensors: their version moves
        assert torch.allclose(_forward(model, True).logits, _forward(_model(1), False).logits, atol=1e-6)


def test_outside_the_scope_edits_the_version_does_not_see_are_read_live():
    # .data edits and fused AdamW move weights without moving their version: only live reads are safe
    model = _model(0).requires_grad_(False)
    before = _forward(model, True).logits
    for p in model.bert.encoder.parameters():
        p.data.mul_(1.5)
    assert not torch.allclose(before, _forward(model, True).logits, atol=1e-4)
    assert torch.allclose(_forward(model, True).logits, _forward(model, False).logits, atol=1e-6)


def test_weights_trained_by_fused_adamw_are_never_kept_even_inside_the_scope():
    model = _model(0)
    with ops.packed_while_frozen(model):
        before = _forward(model, True).logits
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        ids, mask = padded_batch(1)
        model.train()
        model(ids, mask).logits.sum().backward()
        optimizer.step()
        model.eval()
        after = _forward(model, True).logits
        assert not _packed(model)  # requires grad: never kept
    assert not torch.allclose(before, after, atol=1e-4)
    assert torch.allclose(after, _forward(model, False).logits, atol=1e-6)


def test_the_engine_packs_the_teacher_for_the_run_and_drops_it_after(tmp_path):
    teacher, student = h.models()
    train_loader, val_loader = h.loaders()
    seen = []
    teacher.bert.encoder.layer[0].attention.self.register_forward_hook(
        lambda module, args, out: seen.append(module in ops._PACKED))
    train(h.config(epochs=1), student, h.KDTestLoss(), train_loader, val_loader, str(tmp_path), "sequence",
          teacher=teacher)
    assert seen and all(seen)  # every teacher forward of the run read packed weights
    assert not _packed(teacher) and not any(m in ops._SCOPED for m in teacher.modules())


def test_hooked_or_replaced_linears_are_called_as_modules():
    model = _model(0).requires_grad_(False)
    calls = []
    model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(lambda *a: calls.append(1))
    with ops.packed_while_frozen(model):
        _forward(model, True)
    assert calls == [1]  # the hook ran: the layer was called, not read around

    class Doubled(nn.Linear):  # an adapter-like replacement whose forward is not F.linear of its weight
        def forward(self, x):
            return 2 * super().forward(x)

    output = model.bert.encoder.layer[0].output
    doubled = Doubled(output.dense.in_features, output.dense.out_features)
    doubled.load_state_dict(output.dense.state_dict())
    plain = _forward(model, True).logits
    output.dense = doubled.requires_grad_(False)
    with ops.packed_while_frozen(model):
        assert not torch.allclose(_forward(model, True).logits, plain, atol=1e-3)
        assert torch.allclose(_forward(model, True).logits, _forward(model, False).logits, atol=1e-6)


def test_training_autocast_and_disabled_onednn_keep_torchs_linear():
    model = _model(0).requires_grad_(False)
    x = torch.zeros(2, 32)
    assert not ops.onednn_inference(x)  # autograd on
    with torch.no_grad():
        assert ops.onednn_inference(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not ops.onednn_inference(x)
            ids, mask = padded_batch(1)
            assert model(ids, mask).logits.dtype == torch.bfloat16  # autocast still casts the GEMMs
        assert not ops.onednn_inference(x.double())
        with torch.backends.mkldnn.flags(enabled=False):
            assert not ops.onednn_inference(x)


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(ids, mask).logits


def test_graphs_for_export_hold_torchs_linear_not_onednns():
    # ONNX / TorchScript / torch.export need ops their converters know: inside them the path is F.linear
    model = _model(0).requires_grad_(False)
    ids, mask = padded_batch(1)
    with torch.no_grad(), ops.packed_while_frozen(model):
        traced = torch.jit.trace(lambda i, m: model(i, m).logits, (ids, mask))
        model.bert.skip_padding = False  # torch.export cannot trace the data-dependent packing
        exported = torch.export.export(_Logits(model), (ids, mask))
    assert "linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    assert "mkldnn" not in str(exported.graph)
