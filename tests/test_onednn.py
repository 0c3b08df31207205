"""oneDNN's linear in no-grad fp32 CPU inference (``ops.linear``): the same results as F.linear, taken
only where it should be, and never a stale packed weight."""

import pytest
import torch

from distill.models import heads, ops
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


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu"])
def test_same_outputs_as_f_linear_for_a_frozen_teacher_with_every_activation(act):
    model = _model(hidden_act=act).requires_grad_(False)
    new = _forward(model, True, output_hidden_states=True, output_attentions=True)
    old = _forward(model, False, output_hidden_states=True, output_attentions=True)
    assert torch.allclose(new.logits, old.logits, atol=1e-6)
    for a, b in zip(new.hidden_states + new.attentions, old.hidden_states + old.attentions, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # the packed path was really taken: every encoder linear of a frozen model keeps its packed weight
    layer = model.bert.encoder.layer[0]
    assert {layer.attention.self, layer.attention.output.dense, layer.intermediate.dense, layer.output.dense} \
        <= set(ops._PACKED)


def test_a_frozen_weight_changed_in_place_is_packed_again():
    model = _model(0).requires_grad_(False)
    _forward(model, True)  # packs seed 0's weights
    model.load_state_dict(_model(1).state_dict())  # copy_ into the same tensors: their version moves
    assert torch.allclose(_forward(model, True).logits, _forward(model, False).logits, atol=1e-6)
    assert torch.allclose(_forward(model, True).logits, _forward(_model(1), False).logits, atol=1e-6)


def test_weights_trained_by_fused_adamw_are_never_read_stale():
    # fused AdamW moves the weights without bumping their version: a cache keyed on it would be stale
    model = _model(0)
    before = _forward(model, True).logits
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    ids, mask = padded_batch(1)
    model.train()
    model(ids, mask).logits.sum().backward()
    optimizer.step()
    model.eval()
    after = _forward(model, True).logits
    assert not torch.allclose(before, after, atol=1e-4)
    assert torch.allclose(after, _forward(model, False).logits, atol=1e-6)
    assert model not in ops._PACKED and model.bert.encoder.layer[0].attention.self not in ops._PACKED


def test_training_autocast_and_export_keep_torchs_linear():
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
    with torch.no_grad():
        traced = torch.jit.trace(lambda i, m: model(i, m).logits, (ids, mask))
        model.bert.skip_padding = False  # torch.export cannot trace the data-dependent packing
        exported = torch.export.export(_Logits(model), (ids, mask))
    assert "linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    assert "mkldnn" not in str(exported.graph)
