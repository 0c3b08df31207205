"""One writer per export format, each checked against the PyTorch model on inputs of other shapes.

``export_hf`` / ``export_onnx`` / ``export_int8`` / ``export_torchscript`` write one format and return
``{"path", "size_bytes", "max_abs_diff", ...}``; :func:`distill.export.export` chooses and chains them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from distill import evaluate as ev
from distill.errors import DistillError
from distill.models.hub import save_pretrained
from distill.outputs import MODEL_INPUTS
from distill.tables import fused_ops_text
from distill.vocab_trim import write_vocab

log = logging.getLogger(__name__)

TOLERANCE = {"hf": 1e-5, "onnx": 1e-4, "torchscript": 1e-5}
INPUTS = list(MODEL_INPUTS)  # torch.onnx.export takes input_names as a list
FALLBACK_TEXTS = [
    "a gripping, beautifully shot film.", "dull.", "the plot never finds its footing, but the cast is superb",
    "I would watch it again tomorrow", "an uneven, overlong and strangely moving drama about two brothers",
    "not bad", "Paris in the spring, 1962: a story told with wit.", "what a waste of a great premise!",
]


class LogitsOnly(nn.Module):
    """Our model with a plain-tensor signature for tracing: (ids, mask, types) (B, T) → logits.

    The copy runs without padding packing (``skip_padding=False``): packing branches on the mask's
    content, which a trace would freeze to the example's case.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        getattr(self.model, "bert", self.model).skip_padding = False

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.model(input_ids, attention_mask, token_type_ids=token_type_ids).logits


def task_of(config) -> str:
    arch = (config.architectures or ["BertForSequenceClassification"])[0]
    return "token" if "TokenClassification" in arch else "sequence"


# ---------------------------------------------------------------- parity


# parity texts: ~33 batches of other shapes catch a wrong axis or op; every training text (the old
# default) made each format's check take a minute on MR
CHECK_ROWS = 96


def parity_inputs(tokenizer, texts: Sequence[str], max_length: int = 128, max_rows: int = CHECK_ROWS):
    """→ (export example (2, T₀), checks, rows): checks are batches of 3 and 1 whose shapes differ
    from the example, from ``max_rows`` texts spread over the corpus plus its longest; rows are the
    tokenized texts (for batch-1 timing)."""
    texts = list(texts)
    spread = texts[:: max(1, len(texts) // max_rows)][:max_rows] + ([max(texts, key=len)] if texts else [])
    enc = tokenizer(spread, truncation=True, max_length=max_length)
    return parity_batches([dict(zip(enc, vals)) for vals in zip(*enc.values())])


def parity_batches(rows: Sequence[dict]):
    """Tokenized rows → (export example, checks, rows) as :func:`parity_inputs` describes them."""
    rows = [{k: r[k] for k in INPUTS if k in r} for r in rows]
    rows = (rows * 4)[: max(4, len(rows))]  # at least 4 rows: 2 for the example, more for checks
    example = ev.pad_rows(rows[:2])
    checks = [b for b in ev.batches(rows, 3) if tuple(b["input_ids"].shape) != tuple(example["input_ids"].shape)]
    checks.append(ev.pad_rows(rows[-1:]))
    return example, checks, rows


def max_diff(ref: ev.Forward, other: ev.Forward, checks: Sequence[dict]) -> float:
    """Largest |Δlogit| over real positions of every check batch."""
    worst = 0.0
    for batch in checks:
        a, b = ref(batch), other(batch)
        if a.dim() == 3:  # token logits: padded positions are not outputs anyone reads
            real = batch["attention_mask"].bool()
            a, b = a[real], b[real]
        worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst


def _verified(fmt: str, diff: float, shapes, tolerance: float | None = None) -> dict:
    tolerance = TOLERANCE[fmt] if tolerance is None else tolerance
    if diff > tolerance:
        raise DistillError(f"{fmt} export does not match PyTorch: max |Δlogit| {diff:.2e} > {tolerance:g}; "
                           f"do not ship it — drop {fmt} from formats and report the bug")
    return {"parity_max_abs_diff": diff, "parity_tolerance": tolerance, "checked_shapes": shapes}


def _size(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


# ---------------------------------------------------------------- formats


def export_hf(model, tokenizer, out: Path, checks) -> dict:
    """save_pretrained + tokenizer; reload with transformers' Auto* class and compare logits."""
    import transformers

    save_pretrained(model, out, tokenizer)
    write_vocab(tokenizer, out)
    auto = (transformers.AutoModelForTokenClassification if model.task == "token"
            else transformers.AutoModelForSequenceClassification)
    hf, info = auto.from_pretrained(str(out), output_loading_info=True)
    bad = info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]
    if bad:
        raise DistillError(f"transformers reloads {out} with mismatched keys ({sorted(bad)[:3]}); report the bug")
    hf_forward = lambda b: hf.eval()(**{k: b[k] for k in INPUTS}).logits  # noqa: E731
    with torch.inference_mode():
        diff = max_diff(ev.torch_forward(model), hf_forward, checks)
    shapes = [list(b["input_ids"].shape) for b in checks]
    return {"path": str(out), "size_bytes": _size(out / "model.safetensors"), **_verified("hf", diff, shapes),
            "loads_with": auto.__name__}


def export_onnx(model, path: Path, example: dict, checks, threads: int = 1, opset: int = 17,
                optimize: bool = True) -> dict:
    """ONNX with dynamic (batch, sequence) axes, with onnxruntime's transformer fusions when ``optimize``;
    the graph written is checked with onnxruntime against PyTorch on other shapes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _torch_onnx(model, path, example, opset)
    reference = ev.torch_forward(model)
    fused = _fused_copy(path, model.config) if optimize else None
    if fused is not None:  # the parity check runs on the graph that ships: the optimized one
        diff = max_diff(reference, ev.onnx_forward(str(fused[0]), threads), checks)
        if diff <= TOLERANCE["onnx"]:
            fused[0].replace(path)
        else:
            log.warning("export: the optimized graph is off by max |Δlogit| %.1e; keeping the unoptimized one", diff)
            fused[0].unlink()
            fused = None
    if fused is None:
        diff = max_diff(reference, ev.onnx_forward(str(path), threads), checks)
    shapes = [list(b["input_ids"].shape) for b in checks]
    return {"path": str(path), "size_bytes": _size(path, path.with_name(path.name + ".data")),
            **_verified("onnx", diff, shapes), "example_shape": list(example["input_ids"].shape), "opset": opset,
            "optimized": fused is not None, "fused_ops": fused[1] if fused else {}}


def _torch_onnx(model, path: Path, example: dict, opset: int) -> None:
    """torch.onnx.export of the logits, dynamic (batch, sequence) axes."""
    wrapped = LogitsOnly(model)
    args = tuple(example[k] for k in INPUTS)
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS}
    axes["logits"] = {0: "batch", 1: "sequence"} if model.task == "token" else {0: "batch"}
    try:  # the TorchScript-based exporter: fast, offline, and exact for this graph
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, args, str(path), input_names=INPUTS, output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
    except (TypeError, RuntimeError, AttributeError) as e:  # a torch without it: torch.export path
        log.info("legacy ONNX exporter unavailable (%s); using dynamo=True", type(e).__name__)
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        torch.onnx.export(wrapped, args, str(path), input_names=INPUTS, output_names=["logits"], dynamo=True,
                          dynamic_shapes={k: {0: batch, 1: seq} for k in INPUTS}, external_data=False)


def _fused_copy(path: Path, config) -> tuple[Path, dict[str, int]] | None:
    """onnxruntime's transformer optimizer (attention, Add + LayerNorm, GELU and embedding fusions) on
    ``path``, written beside it → (that file, fused-op counts); None, with one log line, when it fails."""
    from onnxruntime.transformers.optimizer import optimize_model

    fused_path = path.with_name(f"{path.stem}.optimized{path.suffix}")
    logging.disable(logging.INFO)  # it logs every fusion step at INFO; its warnings still show
    try:
        optimized = optimize_model(str(path), model_type="bert", hidden_size=getattr(config, "hidden_size", 0),
                                   num_heads=getattr(config, "num_attention_heads", 0))
        optimized.save_model_to_file(str(fused_path))
        counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    except Exception as e:  # a best-effort pass: the exported graph is exact without it
        log.warning("export: onnxruntime's transformer optimizer failed (%s: %s); keeping the unoptimized graph",
                    type(e).__name__, e)
        return None
    finally:
        logging.disable(logging.NOTSET)
    log.info("export: onnxruntime's optimizer fused %s", fused_ops_text(counts) or "nothing")
    return fused_path, counts


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime advises (on the root logger) a pre-processing step whose symbolic shape inference
    fails on BERT graphs with dynamic axes; the advice is noise to our users."""
    silence = logging.Filter("no-such-logger")  # a filter named after no logger drops every record
    root = logging.getLogger()
    root.addFilter(silence)
    try:
        yield
    finally:
        root.removeFilter(silence)


def quantize_int8(fp32_path: Path, path: Path) -> None:
    """onnxruntime dynamic int8 quantization of an fp32 ONNX file (optimized or not)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_root_logger():  # ONNX shape inference cannot type the outputs of fused (contrib) ops: float
        quantize_dynamic(str(fp32_path), str(path), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def export_int8(model, fp32_path: Path, path: Path, checks, rows, eval_split=None, label_names=None,
                threads: int = 1) -> dict:
    """onnxruntime dynamic int8 quantization; metric and latency change vs the fp32 PyTorch model."""
    quantize_int8(fp32_path, path)
    fp32, int8 = ev.torch_forward(model), ev.onnx_forward(str(path), threads)
    agree = [bool(torch.equal(fp32(b).argmax(-1), int8(b).argmax(-1))) for b in checks]
    result = {"path": str(path), "size_bytes": _size(path), "parity_max_abs_diff": max_diff(fp32, int8, checks),
              "parity_tolerance": None, "check_batches_same_predictions": sum(agree) / len(agree)}
    singles = [ev.pad_rows([r]) for r in rows[:16]]
    fast, slow = (ev.measure_latency(f, singles, checks, threads, warmup=3, repeats=20, big_repeats=2)
                  for f in (int8, fp32))
    result.update(latency_p50_ms=fast["p50_ms"], fp32_latency_p50_ms=slow["p50_ms"],
                  speedup_vs_fp32=slow["p50_ms"] / fast["p50_ms"], threads=threads)
    if eval_split is not None:
        key = ev.main_metric(model.task)
        before = ev.metrics(ev.predict(fp32, eval_split, model.task), label_names)[key]
        after = ev.metrics(ev.predict(int8, eval_split, model.task), label_names)[key]
        result.update(metric=key, metric_fp32=before, metric_int8=after, metric_change=after - before,
                      eval_rows=len(eval_split))
    else:
        log.warning("int8: no eval_data, so the metric change was not measured; pass eval_data")
    return result


def export_torchscript(model, path: Path, example: dict, checks) -> dict:
    """A traced TorchScript module, reloaded with torch.jit.load and compared on other shapes."""
    if not hasattr(torch.jit, "trace"):
        raise DistillError("this torch has no torch.jit.trace; drop torchscript from formats and use onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the portable C++ format
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(LogitsOnly(model), tuple(example[k] for k in INPUTS))
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        diff = max_diff(ev.torch_forward(model), lambda b: loaded(*(b[k] for k in INPUTS)), checks)
    shapes = [list(b["input_ids"].shape) for b in checks]
    return {"path": str(path), "size_bytes": _size(path), **_verified("torchscript", diff, shapes)}


# ---------------------------------------------------------------- the public entry point
