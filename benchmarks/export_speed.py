"""The compact student's ONNX exports vs the teacher's, all in onnxruntime at batch 1, with and without
onnxruntime's transformer fusions (``export.optimize``).

Models: the packaged teacher (all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, intermediate 1536) and a
random student of ``student=bert_l4_h128``'s shape (4 layers x 128, 2 heads, intermediate 512; weights
do not change speed). Each is written by ``distill.export_formats.export_onnx`` (parity checked) with
``optimize`` on and off, and quantized to int8 from that graph. Batch-1 calls on MR-like sentences
(~24 tokens) run at 1 and 2 intra-op threads, every model in turn in short blocks, for ``--rounds`` rounds
(noise hits all alike); the table shows each model's median over the teacher's fp32 ONNX median in the
same setting (same threads, same optimize), and what optimize gains per model. Last line is JSON:
{"fp32_speedup_vs_teacher": x, "int8_speedup_vs_teacher": y, ...} (optimized, 1 thread; the issue's
targets are 9.4x and 15x) and every setting under "settings".

    python benchmarks/export_speed.py [--rounds 15] [--block 10] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime

from distill import evaluate as ev
from distill.export_formats import export_onnx, parity_inputs, quantize_int8
from distill.models.hub import load_packaged_minilm, load_tokenizer, minilm_l6_path
from distill.models.student import student_from_config
from distill.tables import fused_ops_text

# MR-like: one-sentence movie reviews of ~20 words (MR's mean is ~21 words, ~24 WordPiece tokens)
TEXTS = [
    "a gripping , beautifully shot film that never quite earns its ending but keeps you watching all the way",
    "the plot never finds its footing , but the cast is superb and the dialogue crackles with wit and warmth",
    "an uneven , overlong and strangely moving drama about two brothers who cannot forgive each other",
    "what a waste of a great premise : the jokes fall flat and the story drags for most of its running time",
    "it 's the kind of movie you forget the moment you leave the theater , pleasant but utterly weightless",
    "director and cast find something honest in this small story , and the result is funny and heartbreaking",
    "too long , too loud and too pleased with itself , the sequel squanders everything the original got right",
    "a quiet triumph : patient , observant and acted with such restraint that the final scene hits very hard",
]


def exports(out: Path, models: dict, tokenizer) -> tuple[dict[str, Path], dict[str, dict]]:
    """fp32 (optimize on/off) and int8 from each → ({"teacher fp32 optimized": path, ...}, fused ops)."""
    example, checks, _ = parity_inputs(tokenizer, TEXTS)
    paths, fused = {}, {}
    for name, model in models.items():
        for optimize in (True, False):
            tag = "optimized" if optimize else "unoptimized"
            fp32 = out / f"{name}-{tag}" / "model.onnx"
            result = export_onnx(model, fp32, example, checks, optimize=optimize)
            quantize_int8(fp32, fp32.with_name("int8.onnx"))
            paths[f"{name} fp32 {tag}"], paths[f"{name} int8 {tag}"] = fp32, fp32.with_name("int8.onnx")
            fused[f"{name} {tag}"] = result["fused_ops"]
            print(f"{name:8s} {tag:12s} max|Δlogit| {result['parity_max_abs_diff']:.1e}  fused: "
                  f"{fused_ops_text(result['fused_ops']) or 'nothing'}")
    return paths, fused


def medians(paths: dict[str, Path], singles: list[dict], threads: int, rounds: int, block: int) -> dict[str, float]:
    """Median ms per batch-1 call of every model, timed in turn in blocks of ``block`` calls."""
    forwards = {name: ev.onnx_forward(str(p), threads) for name, p in paths.items()}
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, forward in forwards.items():
            forward(singles[0])  # one untimed call: the previous session's threads settle
            for i in range(block):
                start = time.perf_counter()
                forward(singles[i % len(singles)])
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    teacher = load_packaged_minilm(num_labels=2)
    models = {"teacher": teacher, "compact": student_from_config(
        teacher, num_hidden_layers=4, hidden_size=128, num_attention_heads=2, intermediate_size=512)}
    tokenizer = load_tokenizer(minilm_l6_path())
    enc = tokenizer(TEXTS)
    singles = [ev.pad_rows([dict(zip(enc, row))]) for row in zip(*enc.values())]
    lengths = [len(s["input_ids"][0]) for s in singles]
    print(f"onnxruntime {onnxruntime.__version__}, batch 1, {min(lengths)}-{max(lengths)} tokens "
          f"(mean {statistics.mean(lengths):.1f}), {args.rounds} rounds x {args.block} calls per model")
    settings = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths, fused = exports(Path(tmp), models, tokenizer)
        for threads in (int(t) for t in args.threads.split(",")):
            ms = medians(paths, singles, threads, args.rounds, args.block)
            for tag in ("optimized", "unoptimized"):
                ref = ms[f"teacher fp32 {tag}"]
                settings[f"{threads}t {tag}"] = {
                    "fp32_speedup_vs_teacher": round(ref / ms[f"compact fp32 {tag}"], 2),
                    "int8_speedup_vs_teacher": round(ref / ms[f"compact int8 {tag}"], 2),
                    "teacher_int8_speedup": round(ref / ms[f"teacher int8 {tag}"], 2)}
            gains = {name: round(ms[f"{name} unoptimized"] / ms[f"{name} optimized"], 2)
                     for name in ("teacher fp32", "teacher int8", "compact fp32", "compact int8")}
            settings[f"{threads}t optimize_gain"] = gains
            print(f"\n{threads} thread(s): speed-up over the teacher's fp32 ONNX in the same setting")
            print(f"{'':14s} {'compact fp32':>13s} {'compact int8':>13s} {'teacher int8':>13s}")
            for tag in ("optimized", "unoptimized"):
                r = settings[f"{threads}t {tag}"]
                print(f"{tag:14s} {r['fp32_speedup_vs_teacher']:12.2f}x {r['int8_speedup_vs_teacher']:12.2f}x "
                      f"{r['teacher_int8_speedup']:12.2f}x")
            print("optimized over unoptimized, same model: "
                  + ", ".join(f"{name} {gain:.2f}x" for name, gain in gains.items()))
    first = settings[f"{args.threads.split(',')[0]}t optimized"]
    print(json.dumps({"fp32_speedup_vs_teacher": first["fp32_speedup_vs_teacher"],
                      "int8_speedup_vs_teacher": first["int8_speedup_vs_teacher"],
                      "targets": {"fp32": 9.4, "int8": 15.0}, "settings": settings, "fused_ops": fused}))


if __name__ == "__main__":
    main()
