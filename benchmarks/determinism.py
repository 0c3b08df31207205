"""What a seed reproduces: one training run repeated under each thing that may differ between machines.

    python benchmarks/determinism.py                       # tiny teacher/student/data, 20 steps
    python benchmarks/determinism.py student=bert_l4_h128 data=mr data.limit=256 trainer.max_steps=40

Runs ``distill train`` (one process each, the same seed and overrides) as is, again as is, with one
intra-op thread (``OMP_NUM_THREADS=1``), with PyTorch's AVX2 kernels on a CPU that has AVX-512
(``ATEN_CPU_CAPABILITY=avx2``), and with oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), then compares
each student's weights with the first run's. JSON last line: {"cpu_kernels", "threads",
"max_abs_diff": {variant: float}, "bit_identical": {variant: bool}}. Issue 19 #9: these differences,
1e-10 to 1e-8 after 20 steps here, grow over thousands of steps into different last digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

VARIANTS = {"same settings again": {}, "1 thread": {"OMP_NUM_THREADS": "1"},
            "AVX2 kernels (ATen)": {"ATEN_CPU_CAPABILITY": "avx2"},
            "AVX2 kernels (oneDNN)": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}


def train(out: Path, overrides: list[str], env: dict) -> dict:
    run = subprocess.run([sys.executable, "-m", "distill.cli", "train", *overrides, f"hydra.run.dir={out}"],
                         env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"error: the run with {env or 'no env change'} failed: {last}")
    return load_file(out / "student" / "model.safetensors")


def main(argv: list[str]) -> None:
    overrides = argv or ["teacher=tiny", "student=tiny", "data=tiny", "trainer.max_steps=20"]
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):  # already AVX2 kernels: nothing to vary
        for name in [n for n in VARIANTS if n.startswith("AVX2")]:
            del VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        first = train(Path(tmp, "first"), overrides, {})
        diffs = {}
        for i, (name, env) in enumerate(VARIANTS.items()):
            other = train(Path(tmp, f"v{i}"), overrides, env)
            diffs[name] = max((first[k].float() - other[k].float()).abs().max().item() for k in first)
            print(f"{name:24s} max |Δ| of the student's weights: {diffs[name]:.3g}")
    print(json.dumps({"cpu_kernels": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                      "overrides": overrides, "max_abs_diff": diffs,
                      "bit_identical": {k: v == 0.0 for k, v in diffs.items()}}))


if __name__ == "__main__":
    main(sys.argv[1:])
