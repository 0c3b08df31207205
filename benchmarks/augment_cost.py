"""What augmentation costs: seconds per 1,000 training sentences, measured side by side in one run.

    python benchmarks/augment_cost.py            # MR, 1,000 training sentences, n=8, masked-LM (contextual) candidates
    python benchmarks/augment_cost.py method=neighbours   # embedding neighbours only, no head to fit (the quickstart's)
    python benchmarks/augment_cost.py rows=500 n=4
    python benchmarks/augment_cost.py precision=both   # generation in fp32 and bf16, side by side (the fit is fp32)

Times, in a fresh cache: fitting the masked-LM head (0 with method=neighbours), generating the variants
(candidates + sampling), the teacher labelling every augmented row (forward, batch 32, as the KD stage's first
epoch does), and one student KD step over the same rows, so the ratios (labelling / student training) hold on
any machine. JSON last line: {"mlm_fit_s_per_1k", "generate_s_per_1k", "label_s_per_1k_sentences",
"rows_per_sentence", "label_over_student_steps"}; with precision=both only generation (the head is
fitted in fp32 at any precision: bf16 fits collapsed), each precision twice in a fresh cache,
alternating: {"bf16_over_fp32_generate", "fit_s"}.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv)
    rows, n, precision = int(opts.get("rows", 1000)), int(opts.get("n", 8)), opts.get("precision", "auto")
    method = opts.get("method", "contextual")
    if precision == "both":
        return compare_precisions(rows, n)
    with fresh_cache():
        measure(rows, n, precision, method)


@contextlib.contextmanager
def fresh_cache():
    cache = tempfile.mkdtemp(prefix="augment-cost-")
    os.environ["DISTILL_CACHE"] = cache  # nothing reused
    try:
        yield
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def fit_and_generate(rows: int, n: int, precision: str, method: str = "contextual") -> tuple[float, float, object]:
    """Seconds to fit the masked-LM head (none for method=neighbours), seconds to generate the variants, the
    augmented data."""
    from distill.data.augment import Augment
    from distill.data.mlm_head import fingerprint, masked_lm
    from distill.data.sources import mr
    from distill.models.hub import load_packaged_minilm, load_tokenizer, minilm_l6_path

    if method == "neighbours":  # candidates from the teacher's embeddings alone: nothing to fit
        return (0.0, *generate(rows, n, precision, method))
    data = mr()
    data.splits["train"] = data.splits["train"].select(range(rows))
    tokenizer = load_tokenizer(minilm_l6_path())
    settings = Augment(n=n, max_length=64, precision=precision, method=method)
    texts = list(data.splits["train"]["text"])
    t0 = time.perf_counter()
    model = load_packaged_minilm(task="mlm")
    key = fingerprint(model, tokenizer, texts, settings.mlm)  # augment()'s key: fitted in fp32 at any precision
    masked_lm(model, tokenizer, texts, texts[:200], settings.mlm, key=key)
    fit_s = time.perf_counter() - t0
    gen_s, out = generate(rows, n, precision)  # the fitted head now comes from its cache: generation only
    return fit_s, gen_s, out


def compare_precisions(rows: int, n: int) -> None:
    from distill.launch import fast_bf16

    if not fast_bf16():  # emulated bf16 matmuls run hundreds of times slower: nothing worth timing
        print("this CPU has no native bf16 (AVX512-BF16 / AMX): precision=auto runs fp32 here; not timed")
        print(json.dumps({"fast_bf16": False}))
        return
    gen = {"no": [], "bf16": []}
    with fresh_cache():
        fit_s, _, _ = fit_and_generate(rows, n, "no")  # the head, fitted once (fp32) and cached
        for _ in range(2):
            for precision in gen:
                shutil.rmtree(Path(os.environ["DISTILL_CACHE"]) / "augment", ignore_errors=True)  # generate again
                gen[precision].append(generate(rows, n, precision)[0])
    gen = {p: statistics.median(ts) for p, ts in gen.items()}
    print(f"{rows} sentences, n={n}: masked-LM fit (fp32) {fit_s:.1f} s; generation fp32 {gen['no']:.1f} s, "
          f"bf16 {gen['bf16']:.1f} s (median of 2, alternating)")
    print(json.dumps({"bf16_over_fp32_generate": round(gen["bf16"] / gen["no"], 3), "fit_s": round(fit_s, 1)}))


def generate(rows: int, n: int, precision: str, method: str = "contextual") -> tuple[float, object]:
    """Seconds to generate the variants with the head already cached, and the augmented data."""
    from distill.data.augment import Augment, augment
    from distill.data.sources import mr
    from distill.models.hub import load_packaged_minilm, load_tokenizer, minilm_l6_path

    data = mr()
    data.splits["train"] = data.splits["train"].select(range(rows))
    t0 = time.perf_counter()
    settings = Augment(n=n, max_length=64, precision=precision, method=method)
    out = augment(data, load_tokenizer(minilm_l6_path()), settings, lambda: load_packaged_minilm(task="mlm"))
    return time.perf_counter() - t0, out


def measure(rows: int, n: int, precision: str, method: str) -> None:
    from distill.data.collate import Collator, make_dataloader
    from distill.data.tokenize import tokenize
    from distill.models.hub import load_packaged_minilm, load_tokenizer, minilm_l6_path
    from distill.models.student import student_from_teacher

    tokenizer = load_tokenizer(minilm_l6_path())
    fit_s, gen_s, out = fit_and_generate(rows, n, precision, method)
    train = tokenize(out, tokenizer, 64)["train"]
    loader = make_dataloader(train, Collator(tokenizer), 32, shuffle=False, group_by_length=True)
    teacher = load_packaged_minilm(id2label={0: "negative", 1: "positive"}).eval()
    student = student_from_teacher(teacher, [0, 5]).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    label_s = step_s = 0.0
    for batch in loader:
        inputs = {k: batch[k] for k in keys}
        t0 = time.perf_counter()
        with torch.no_grad():
            target = teacher(**inputs).logits
        label_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = student(**inputs).logits
        loss = torch.nn.functional.kl_div(logits.log_softmax(-1), target.softmax(-1), reduction="batchmean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_s += time.perf_counter() - t0
    per_k = 1000 / rows
    print(f"{rows} sentences ({method}) -> {len(train)} rows: masked-LM fit {fit_s:.1f} s, generation {gen_s:.1f} s, "
          f"teacher labelling {label_s:.1f} s, student KD steps {step_s:.1f} s")
    print(json.dumps({"mlm_fit_s_per_1k": round(fit_s * per_k, 1), "generate_s_per_1k": round(gen_s * per_k, 1),
                      "label_s_per_1k_sentences": round(label_s * per_k, 1),
                      "rows_per_sentence": round(len(train) / rows, 2),
                      "label_over_student_steps": round(label_s / step_s, 3)}))


if __name__ == "__main__":
    main(sys.argv[1:])
