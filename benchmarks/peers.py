"""The same distillation driven by our engine and by the ways peers run it, in one process.

MiniLM-L6 teacher -> 2-layer student (teacher layers 0 and 5), logits KL (T=1) + hidden MSE
(embeddings and layers, uniform map 0-0, 1-3, 2-6) + attention MSE (maps 1-3, 2-6) at real
tokens, batch 32, real MR sentences (max_length 64, padded per batch, length-grouped), AdamW
(lr 1e-4, weight decay 0.01) with a linear schedule and gradient clipping at 1.0, the same batches
in the same order for everyone:

  * ours       `distill.engine.train` on our BERT (per-step times from the loop's own samples/s log);
  * hand loop  a clean hand-written PyTorch loop over transformers' BertForSequenceClassification
               (eager attention, output_hidden_states/output_attentions) for teacher and student,
               as TextBrewer/torchdistill users write it; same weights, same losses;
  * torchdistill: not timed yet, the output says why (see ``torchdistill_runner``);
  * and, for reference only, our model in that same hand-written loop (engine overhead vs model).

Interleaved rounds in alternating order (one discarded warm-up round), the first step of each run
left out (optimizer state allocation); a step time is the mean over the timed batches of each
batch's median over the rounds. Last line is JSON with "speedup_vs_fastest_other" = fastest other's step time / ours
(>1: we are faster; target >= 1.3).

    python benchmarks/peers.py [--repeats 4] [--steps 12] [--no-wait]
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from kd_step import (
    BATCH,
    LAYERS,
    MAX_LEN,
    Setup,
    bench_parser,
    engine_step_times,
    interleave,
    kd_loss,
    per_batch_median,
    start,
)
from transformers import get_scheduler

LR, WEIGHT_DECAY, CLIP, T = 1e-4, 0.01, 1.0, 1.0


def hf_pair(setup: Setup):
    """transformers' BERT (eager attention: the maps are needed) with our teacher's and student's weights."""

    def convert(ours):
        config = copy.deepcopy(ours.config)
        config._attn_implementation = "eager"
        model = transformers.BertForSequenceClassification(config)
        missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
        if [k for k in missing if "position_ids" not in k] or unexpected:
            raise RuntimeError(f"weights do not map onto transformers' BERT: {missing[:3]} {unexpected[:3]}")
        return model

    return convert(setup.teacher).eval().requires_grad_(False), convert(setup.student)


def hand_loss(s_out, t_out, mask, hidden_pairs, attention_pairs):
    """Logits KL + masked hidden MSE + masked attention MSE, written out as a peer's user would."""
    kl = F.kl_div(F.log_softmax(s_out.logits / T, -1), F.softmax(t_out.logits / T, -1), reduction="batchmean") * T * T
    real = mask.to(s_out.logits.dtype)  # (B, T)
    m = real[:, :, None]  # (B, T, 1)
    hidden = sum(((s_out.hidden_states[i] - t_out.hidden_states[j]) * m).pow(2).sum()
                 / (m.sum() * s_out.hidden_states[i].shape[-1]) for i, j in hidden_pairs)
    cells = (real[:, :, None] * real[:, None, :])[:, None]  # (B, 1, T, T): real query x real key
    attention = sum(((s_out.attentions[i - 1] - t_out.attentions[j - 1]) * cells).pow(2).sum()
                    / (cells.sum() * s_out.attentions[i - 1].shape[1]) for i, j in attention_pairs)
    return kl + hidden + attention


def hand_loop_times(setup: Setup, teacher, student, steps: int, pairs) -> list[float]:
    """A plain loop: batch -> teacher (no_grad) -> student -> loss -> backward -> clip -> AdamW -> schedule."""
    student = copy.deepcopy(student).train()
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    no_decay = [p for n, p in student.named_parameters() if not (p.ndim > 1 and "LayerNorm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    sched = get_scheduler("linear", opt, num_warmup_steps=int(0.1 * steps), num_training_steps=steps)
    want = {"output_hidden_states": True, "output_attentions": True}
    times, it = [], iter(setup.loader())
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            t_out = teacher(**inputs, **want)
        s_out = student(**inputs, **want)
        loss = hand_loss(s_out, t_out, batch["attention_mask"], *pairs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # what a user logs
        times.append(time.perf_counter() - t0)
    return times


def torchdistill_runner(setup: Setup, pairs):
    """(a step-times function, None) for a torchdistill run, or (None, why it is skipped); never raises.

    No like-for-like torchdistill run is wired up yet: its DistillationBox builds loaders, collate and
    forward functions from its own registries and reads hidden states/maps through forward hooks, which
    takes a dedicated set-up. It would drive the same transformers models as the hand loop plus its
    io_dict bookkeeping, so it cannot beat the hand loop, which stays the bar to clear.
    """
    try:
        import torchdistill  # noqa: F401
        from torchdistill.core.distillation import DistillationBox  # noqa: F401
    except Exception as e:  # not installed, or its torchvision cannot load next to this torch build
        lines = str(e).strip().splitlines()
        return None, f"does not import here ({type(e).__name__}: {(lines[-1] if lines else '')[:120]})"
    return None, ("imports, but a like-for-like DistillationBox run (registered loader, collate, forward and "
                  "hook config for BERT hidden states and maps) is not wired up in this script")


def main() -> None:
    args = bench_parser(__doc__, "train steps per run (the first one is not timed)").parse_args()
    start(args)
    setup = Setup(rows=args.steps * BATCH)
    teacher = setup.teacher
    loss = kd_loss(copy.deepcopy(setup.student), teacher)
    pairs = (loss.terms["hidden"].layer_map.pairs, loss.terms["attention"].layer_map.pairs)
    hf_teacher, hf_student = hf_pair(setup)
    td_run, td_note = torchdistill_runner(setup, pairs)

    skip = 1
    variants = {
        "ours": lambda: engine_step_times(setup, lambda s: kd_loss(s, teacher), teacher=teacher,
                                          max_steps=args.steps)[0],
        "hand loop (transformers)": lambda: hand_loop_times(setup, hf_teacher, hf_student, args.steps, pairs),
        "our model, hand loop": lambda: hand_loop_times(setup, teacher, setup.student, args.steps, pairs),
    }
    if td_run is not None:
        variants["torchdistill"] = lambda: td_run(args.steps)
    runs = interleave(variants, args.repeats, keep=lambda times: times[skip:])
    step = {name: statistics.fmean(per_batch_median(times)) for name, times in runs.items()}
    others = {name: t for name, t in step.items() if name not in ("ours", "our model, hand loop")}
    fastest = min(others, key=others.get)
    speedup = others[fastest] / step["ours"]

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}; "
          f"MiniLM-L6 teacher -> 2-layer student (teacher layers {LAYERS}), logits KL + hidden MSE + attention MSE, "
          f"MR batch {BATCH}, max_len {MAX_LEN} (padded per batch)")
    print(f"{args.steps - skip} timed steps per run x {args.repeats} interleaved rounds; step time, and how much "
          f"slower than ours")
    for name, t in step.items():
        print(f"  {name:28s} {t * 1e3:8.1f} ms   {t / step['ours']:6.2f}x")
    if "torchdistill" not in step:
        print(f"  {'torchdistill':28s} skipped: {td_note}")
    print(f"speed-up of ours over the fastest other ({fastest}): {speedup:.2f}x (>1: ours is faster; "
          f"target >= 1.3: {'met' if speedup >= 1.3 else 'MISSED'})")
    result = {"speedup_vs_fastest_other": round(speedup, 3), "fastest_other": fastest,
              "step_ms": {name: round(t * 1e3, 1) for name, t in step.items()}}
    if "torchdistill" not in step:
        result["torchdistill"] = f"skipped: {td_note}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
