"""oneDNN's linear vs torch's F.linear in our BERT's fp32 CPU inference, side by side.

``distill.models.ops.linear`` runs every encoder linear through oneDNN (the GELU fused into the GEMM)
wherever autograd is off on a CPU in fp32: a teacher's forward in a KD step, evaluation, prediction;
inside ``ops.packed_while_frozen`` (the engine's teacher for a run) frozen weights are packed once.
``ops.ONEDNN_INFERENCE = False`` gives the F.linear (MKL) path it replaced. Timed on the same real MR
batches (batch 32, max_length 64, padded per batch, length-grouped), each variant in turn:

  * teacher forward  MiniLM-L6 (the packaged teacher) as the engine runs it: frozen, no_grad, packed for
                     the run, with the hidden states and the two attention maps ``benchmarks/kd_step.py``'s
                     KD losses read;
  * inference        the same weights as `distill predict` / evaluation hold them (not frozen, so read
                     live, unpacked, every call), logits only;
  * KD step          the whole ``distill.engine.train`` step of kd_step.py (teacher online: the student's
                     training is unchanged, only the teacher's forward takes the new path).

Interleaved rounds in alternating order (one discarded warm-up round), the first batch of each run left
out; a time is the mean over the batches of each batch's median over the rounds. Also checked: the
largest difference between the two paths' logits (fp32 rounding). Last line is JSON:
{"teacher_forward_speedup": a, "inference_speedup": b, "kd_step_speedup": c, "max_logit_diff": d}
(speedup: F.linear's time / oneDNN's; > 1: the new path is faster).

    python benchmarks/onednn_speed.py [--repeats 4] [--steps 12] [--batch 32] [--no-wait]
"""

from __future__ import annotations

import copy
import json
import statistics

import kd_step as bench  # the step-timing helpers every benchmark here shares
import torch

import distill.models.ops as ops
from distill.engine import MODEL_INPUTS


def switched(on: bool, run):
    """``run()`` with our BERT's inference linears on oneDNN (``on``) or on F.linear."""
    ops.ONEDNN_INFERENCE = on
    try:
        return run()
    finally:
        ops.ONEDNN_INFERENCE = True


def timed_pair(make_run, repeats: int) -> dict[str, float]:
    """Mean per-batch seconds of ``make_run()`` with oneDNN and with F.linear, interleaved."""
    runs = bench.interleave({"onednn": lambda: switched(True, make_run), "torch": lambda: switched(False, make_run)},
                            repeats, keep=lambda times: times[1:])
    return {name: statistics.fmean(bench.per_batch_median(times)) for name, times in runs.items()}


def max_logit_diff(teacher, batches: list[dict]) -> float:
    diffs = []
    for batch in batches:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        with torch.no_grad():
            new, old = (switched(on, lambda x=inputs: teacher(**x).logits) for on in (True, False))
        diffs.append((new - old).abs().max().item())
    return max(diffs)


def main() -> None:
    args = bench.bench_parser(__doc__, "batches (train steps) per run, the first one not timed").parse_args()
    bench.start(args)
    with torch.no_grad():
        available = ops.onednn_inference(torch.zeros(1))
    if not available:
        raise SystemExit("oneDNN's linear is not available in this torch build: nothing to compare")
    setup = bench.Setup(rows=args.steps * args.batch, batch=args.batch)
    teacher, batches = setup.teacher, setup.batches(args.steps)
    live = copy.deepcopy(teacher).requires_grad_(True)  # as hub.from_pretrained hands it to predict / compare
    probe = bench.kd_loss(setup.student, teacher)
    needs, maps = probe.needs, probe.teacher_map_layers()
    figures = {
        "teacher_forward": timed_pair(lambda: bench.teacher_times(teacher, batches, needs, maps), args.repeats),
        # weights that require grad are never packed, scope or not: read live every call, as predict does
        "inference": timed_pair(lambda: bench.teacher_times(live, batches, frozenset({"logits"})), args.repeats),
        "kd_step": timed_pair(lambda: bench.engine_step_times(setup, lambda s: bench.kd_loss(s, teacher),
                                                              teacher=teacher, max_steps=args.steps)[0], args.repeats),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; MiniLM-L6 teacher, MR train rows, batch "
          f"{args.batch}, max_len {bench.MAX_LEN}; {args.steps - 1} timed batches x {args.repeats} interleaved rounds")
    out = {}
    for name, t in figures.items():
        out[f"{name}_speedup"] = round(t["torch"] / t["onednn"], 3)
        print(f"  {name:16s} oneDNN {t['onednn'] * 1e3:7.1f} ms   F.linear {t['torch'] * 1e3:7.1f} ms   "
              f"({t['torch'] / t['onednn']:.3f}x)")
    out["max_logit_diff"] = max_logit_diff(teacher, batches)
    print(f"  largest logit difference between the paths: {out['max_logit_diff']:.2e}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
