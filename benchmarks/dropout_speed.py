"""Our CPU dropout vs torch's, in the same student-only training step, side by side.

The 2-layer student built from MiniLM-L6's layers 0 and 5 (dropout 0.1 at all 8 sites: embeddings,
attention probabilities, the two residual branches of each layer, the classifier), trained on the hard
labels of real MR sentences (batch 32, max_length 64, padded per batch, length-grouped) through
``distill.engine.train`` itself, in three variants on the same batches in the same order:

  * ours    ``distill.models.ops.dropout``: the keep mask cut from 64-bit random words, four 15-bit lanes
            each; attention on the explicit path (what a CPU training step with dropout takes now);
  * torch   the same path with ``F.dropout`` (``bernoulli_``: one double drawn per element) at every site;
  * before  ``F.dropout`` and attention through SDPA with ``dropout_p`` (the code before the change; on a
            CPU SDPA's math fallback, which upcasts bf16 to fp32).

Interleaved rounds (one discarded warm-up round), the first step of each run left out; a step time is
the mean over the timed batches of each batch's median over the rounds. Run in fp32 and in the
precision ``auto`` gives this machine (bf16 where the CPU has it natively). Last line is JSON:
{"fp32_speedup": x, "auto_speedup": y, "fp32_change_speedup": u, "auto_change_speedup": v,
"auto_precision": "bf16" | "no"} (speedup: torch's step / ours, the dropout alone; change_speedup:
before / ours, the whole change; > 1: ours faster).

    python benchmarks/dropout_speed.py [--repeats 4] [--steps 12] [--batch 32] [--no-wait]
"""

from __future__ import annotations

import json
import statistics

import kd_step as bench  # the step-timing helpers every benchmark here shares
import torch
import torch.nn.functional as F

import distill.models.bert as bert
import distill.models.ops as ops
from distill.launch import resolve_precision

OURS = ops.dropout


def torch_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return F.dropout(x, p, training=True)


def with_dropout(fn, run, explicit: bool = True):
    """``run()`` with every dropout site of our BERT calling ``fn``; ``explicit=False``: attention with
    dropout through SDPA as before the change."""
    ops.dropout = bert.dropout = fn
    bert.CPU_DROPOUT_EXPLICIT = explicit
    try:
        return run()
    finally:
        ops.dropout = bert.dropout = OURS
        bert.CPU_DROPOUT_EXPLICIT = True


def step_time(setup: bench.Setup, steps: int, repeats: int, precision: str) -> dict[str, float]:
    """Mean per-step seconds of the student-only step in ``precision``, per variant."""
    def run():
        return bench.engine_step_times(setup, bench.hard_loss, max_steps=steps, mixed_precision=precision)[0]

    variants = {"ours": lambda: with_dropout(OURS, run), "torch": lambda: with_dropout(torch_dropout, run),
                "before": lambda: with_dropout(torch_dropout, run, explicit=False)}
    runs = bench.interleave(variants, repeats, keep=lambda times: times[1:])
    return {name: statistics.fmean(bench.per_batch_median(times)) for name, times in runs.items()}


def main() -> None:
    args = bench.bench_parser(__doc__, "train steps per run (first one not timed)").parse_args()
    bench.start(args)
    setup = bench.Setup(rows=args.steps * args.batch, batch=args.batch)
    auto = resolve_precision("auto")
    out = {}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; 2-layer student (MiniLM-L6 layers "
          f"{bench.LAYERS}), hard CE, MR train rows, batch {args.batch}, max_len {bench.MAX_LEN}; "
          f"{args.steps - 1} timed steps x {args.repeats} interleaved rounds")
    for name, precision in (("fp32", "no"), ("auto", auto)):
        t = step_time(setup, args.steps, args.repeats, precision)
        out[f"{name}_speedup"] = round(t["torch"] / t["ours"], 3)
        out[f"{name}_change_speedup"] = round(t["before"] / t["ours"], 3)
        print(f"  {name:4s} ({precision}): ours {t['ours'] * 1e3:7.1f} ms   torch's dropout {t['torch'] * 1e3:7.1f} ms"
              f" ({t['torch'] / t['ours']:.3f}x)   before the change {t['before'] * 1e3:7.1f} ms "
              f"({t['before'] / t['ours']:.3f}x)")
    out["auto_precision"] = auto
    print(json.dumps(out))


if __name__ == "__main__":
    main()
