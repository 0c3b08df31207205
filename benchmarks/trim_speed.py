"""Training only the word-embedding rows the data uses (``trainer.trim_embeddings``, the default) vs every row.

A row no training token looks up only takes AdamW's weight decay, so ``distill.models.used_rows`` trains
the used rows alone and applies that decay to the rest at the end (the same weights within float
rounding: tests/test_used_rows.py). What that saves per step, through ``distill.engine.train`` itself, on
the hard labels of real MR sentences (the whole training split in the dataset, so the trained rows are
every id MR's 5,971 training sentences use; batch 32, max_length 64, padded per batch, length-grouped),
for the models a quickstart run trains:

  * student  the 2-layer student from MiniLM-L6's layers 0 and 5 (hidden 384);
  * compact  the 4-layer 128-wide student with PCA-projected teacher embeddings (``mr_compact``'s);
  * teacher  MiniLM-L6 itself being fine-tuned (the pipeline's teacher stage).

Interleaved rounds (one discarded warm-up round), the first step of each run left out; a step time is
the mean over the timed batches of each batch's median over the rounds; the precision ``auto`` gives this
machine (bf16 where the CPU has it natively, as the recipes run). Last line is JSON:
{"student_speedup": x, "compact_speedup": y, "teacher_speedup": z, "rows_trained": n, "rows": 30522,
"precision": "bf16" | "no"} (speedup: every row's step / the used rows' step; > 1: trimming is faster).

    python benchmarks/trim_speed.py [--repeats 4] [--steps 12] [--batch 32] [--no-wait]
"""

from __future__ import annotations

import copy
import json
import statistics

import kd_step as bench  # the step-timing helpers every benchmark here shares
import torch

from distill.engine import TrainerConfig, trained_rows
from distill.launch import resolve_precision
from distill.models.student import student_from_config


def step_time(setup: bench.Setup, steps: int, repeats: int, precision: str) -> dict[str, float]:
    """Mean per-step seconds of the hard-label step, per (model, trim) variant."""
    def run(trim: bool):
        return lambda: bench.engine_step_times(setup, bench.hard_loss, max_steps=steps, mixed_precision=precision,
                                               trim_embeddings=trim)[0]

    variants = {f"{trim}": run(trim) for trim in (True, False)}
    runs = bench.interleave(variants, repeats, keep=lambda times: times[1:])
    return {name: statistics.fmean(bench.per_batch_median(times)) for name, times in runs.items()}


def main() -> None:
    args = bench.bench_parser(__doc__, "train steps per run (first one not timed)").parse_args()
    bench.start(args)
    setup = bench.Setup(rows=10**9, batch=args.batch)  # every MR training row: the table trains the ids they use
    prototypes = {"student": setup.student,
                  "compact": student_from_config(setup.teacher, num_hidden_layers=4, hidden_size=128,
                                                 num_attention_heads=4, intermediate_size=512, project_embeddings=True),
                  "teacher": copy.deepcopy(setup.teacher).requires_grad_(True)}
    precision = resolve_precision("auto")
    used = len(torch.unique(trained_rows(TrainerConfig(), setup.loader(), "sequence")))
    vocab = setup.teacher.config.vocab_size
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, precision {precision}; hard CE on MR train "
          f"rows, batch {args.batch}, max_len {bench.MAX_LEN}; the table trains {used} of {vocab} rows; "
          f"{args.steps - 1} timed steps x {args.repeats} interleaved rounds")
    out = {}
    for name, prototype in prototypes.items():
        setup.student = prototype
        t = step_time(setup, args.steps, args.repeats, precision)
        out[f"{name}_speedup"] = round(t["False"] / t["True"], 3)
        print(f"  {name:8s}: used rows {t['True'] * 1e3:7.1f} ms   every row {t['False'] * 1e3:7.1f} ms "
              f"({t['False'] / t['True']:.3f}x)")
    print(json.dumps({**out, "rows_trained": used, "rows": vocab, "precision": precision}))


if __name__ == "__main__":
    main()
