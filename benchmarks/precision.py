"""bf16 autocast vs fp32 for one KD step on this machine, side by side in one process.

    python benchmarks/precision.py

A step: the packaged MiniLM-L6 teacher's forward (no grad) + a 2-layer student from its layers 0 and 5,
forward/backward + fused AdamW, batch 32 × 28 tokens (MR's mean length). The two precisions alternate
(fp32, bf16, fp32, bf16) so drift on a noisy machine hits both. Last line JSON:
{"bf16_over_fp32": step-time ratio (< 1: bf16 faster), "fast_bf16": what trainer.mixed_precision=auto sees}.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time

import torch

from distill.launch import fast_bf16
from distill.models.hub import load_packaged_minilm
from distill.models.student import student_from_teacher


def main(steps: int = 15) -> None:
    torch.manual_seed(0)
    teacher = load_packaged_minilm("sequence").eval()
    student = student_from_teacher(teacher, layers=[0, 5]).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(1000, 20000, (32, 28))
    mask, labels = torch.ones_like(ids), torch.randint(0, 2, (32,))

    def step(context) -> None:
        with context():
            with torch.no_grad():
                target = teacher(input_ids=ids, attention_mask=mask).logits.float()
            logits = student(input_ids=ids, attention_mask=mask).logits.float()
            loss = torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.mse_loss(logits, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    contexts = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    times = {name: [] for name in contexts}
    for _ in range(2):
        for name, context in contexts.items():
            for _ in range(3):  # warm-up
                step(context)
            start = time.perf_counter()
            for _ in range(steps):
                step(context)
            times[name].append((time.perf_counter() - start) / steps)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    print(f"KD step: fp32 {ms['fp32']:.0f} ms, bf16 {ms['bf16']:.0f} ms (median of 2 rounds of {steps})")
    print(json.dumps({"bf16_over_fp32": round(ms["bf16"] / ms["fp32"], 3), "fast_bf16": fast_bf16()}))


if __name__ == "__main__":
    main()
