"""The ONNX export with onnxruntime's transformer fusions: they fire on our BERT's graph, the optimized
graph keeps parity with PyTorch, int8 is quantized from it, and a failing or inexact optimizer leaves
the exported graph in place with one log line."""

import logging
from collections import Counter

import onnx
import pytest
import torch

from distill import evaluate as ev
from distill import export_formats
from distill.export_formats import export_onnx, max_diff, parity_inputs, quantize_int8
from tests.conftest import padded_batch
from tests.export_helpers import sentences, tiny_model, tiny_tokenizer

TEXTS = [" ".join(s) for s in sentences(12, seed=5)]


def ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def exported(tmp_path, task="sequence", optimize=True, seed=0):
    model = tiny_model(task, vocab_size=99, labels=("a", "b", "c"), initializer_range=0.2, seed=seed)
    example, checks, _ = parity_inputs(tiny_tokenizer(), TEXTS)
    return model, checks, export_onnx(model, tmp_path / "model.onnx", example, checks, optimize=optimize)


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_fusions_fire_on_our_bert_and_keep_parity(tmp_path, task):
    model, _, result = exported(tmp_path, task)
    layers = model.config.num_hidden_layers
    assert result["optimized"] and result["fused_ops"] == {
        "EmbedLayerNormalization": 1, "Attention": layers, "BiasGelu": layers, "SkipLayerNormalization": 2 * layers}
    graph_ops = ops(result["path"])
    assert graph_ops["Attention"] == layers and graph_ops["Softmax"] == 0 and graph_ops["LayerNormalization"] == 0
    assert result["parity_max_abs_diff"] <= 1e-4
    ids, mask = padded_batch(4, batch=5, length=13, vocab=34)  # a shape no check had
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    assert max_diff(ev.torch_forward(model), ev.onnx_forward(result["path"]), [batch]) <= 1e-4
    assert not (tmp_path / "model.optimized.onnx").exists()


def test_optimize_off_writes_the_graph_as_exported(tmp_path):
    _, _, result = exported(tmp_path, optimize=False)
    assert not result["optimized"] and result["fused_ops"] == {}
    assert ops(result["path"])["Attention"] == 0 and result["parity_max_abs_diff"] <= 1e-4


def test_int8_is_quantized_from_the_fused_graph(tmp_path):
    model, checks, result = exported(tmp_path)
    quantize_int8(tmp_path / "model.onnx", tmp_path / "int8.onnx")
    assert ops(tmp_path / "int8.onnx")["QAttention"] == model.config.num_hidden_layers
    fp32, int8 = ev.torch_forward(model), ev.onnx_forward(str(tmp_path / "int8.onnx"))
    same = [bool(torch.equal(fp32(b).argmax(-1), int8(b).argmax(-1))) for b in checks]
    # |logits| <= 0.9 here, another model's differ by 1.2; onnxruntime's u8s8 int8 kernels run through
    # VPMADDUBSW on CPUs without VNNI (AVX2), whose int16 sums can saturate (u8u8: 0.04): 0.12 there, < 0.05 with VNNI
    assert sum(same) >= 0.9 * len(same) and max_diff(fp32, int8, checks) < 0.2


def test_a_failing_optimizer_keeps_the_exported_graph(tmp_path, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise RuntimeError("no pattern today")

    monkeypatch.setattr("onnxruntime.transformers.optimizer.optimize_model", fail)
    with caplog.at_level(logging.WARNING, logger="distill.export_formats"):
        _, _, result = exported(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "distill.export_formats"]
    assert warnings == ["export: onnxruntime's transformer optimizer failed (RuntimeError: no pattern today); "
                        "keeping the unoptimized graph"]
    assert not result["optimized"] and result["parity_max_abs_diff"] <= 1e-4 and ops(result["path"])["Attention"] == 0


def test_an_inexact_optimized_graph_is_not_shipped(tmp_path, monkeypatch, caplog):
    other = tmp_path / "other"
    other.mkdir()
    exported(other, seed=1)  # another model's (fused) graph stands in for a broken fusion

    monkeypatch.setattr(export_formats, "_fused_copy", lambda path, config: (other / "model.onnx", {"Attention": 2}))
    with caplog.at_level(logging.WARNING, logger="distill.export_formats"):
        _, _, result = exported(tmp_path)
    mine = [r.getMessage() for r in caplog.records if r.name == "distill.export_formats"]
    assert len(mine) == 1 and mine[0].startswith("export: the optimized graph is off by max |Δlogit|")
    assert not result["optimized"] and result["fused_ops"] == {} and result["parity_max_abs_diff"] <= 1e-4
    assert not (other / "model.onnx").exists() and ops(result["path"])["Attention"] == 0
