"""What one distillation step costs in our loop, next to the compute it cannot avoid.

MiniLM-L6 teacher (6 layers, hidden 384, 12 heads) -> 2-layer student built from teacher layers 0
and 5, batch 32, real MR training sentences tokenized with the packaged tokenizer at max_length 64,
padded per batch with length grouping (the `data=mr` defaults: batch 32, group_by_length). Every
train-step time below is measured by `distill.engine.train` itself (log_every=1: each logged
samples/s covers exactly one step, data loading included), so it is the real loop, not a copy:

  (a) KD step: teacher forward (no_grad, hidden states + attention maps) + student forward with
      logits KL + hidden MSE + attention MSE + backward + clipping + AdamW + scheduler;
  (b) student-only step: the same student on the hard-label loss alone, no teacher (SDPA path);
  (c) teacher forward alone (no_grad, with the hidden states and maps the losses read), timed here;
  (d) KD / (b + c): the loop's cost over the unavoidable compute. Target <= 1.10.

Then the teacher cache (logits-only KD): two epochs through `train` with the cache on, so epoch 2
reads the teacher's logits from the cache, vs two epochs of student-only training on the same
batches; the ratio of the epoch-2 times. Target <= 1.05. Then the same for a hidden-state recipe
(`mr_tinybert`'s terms: logits KL + hidden MSE + attention MSE), whose cache holds the mapped layers'
hidden states and attention maps too: epoch 2 vs student-only epoch 2. Target <= 1.10.

Runs are interleaved (KD, student-only, teacher in turn, in alternating order, R rounds) after one
discarded warm-up round; each batch's time is the median over the R rounds, and a step time is the mean of those
per-batch medians over the same batches for every variant (the first step of each run, which
also allocates AdamW's state, is left out everywhere). The last line is JSON:
{"kd_over_unavoidable": d, "cached_over_student_only": e, "layer_cached_over_student_only": f}.

    python benchmarks/kd_step.py [--repeats 4] [--steps 12] [--batch 32] [--cache-rows 256] [--no-wait]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from distill.data.collate import Collator, make_dataloader
from distill.data.sources import mr
from distill.data.tokenize import tokenize
from distill.engine import MODEL_INPUTS, TrainerConfig, flags, train
from distill.losses.attention import AttentionMSE
from distill.losses.base import CompositeLoss
from distill.losses.hard import HardCrossEntropy
from distill.losses.hidden import HiddenMSE
from distill.losses.logits import LogitsKL
from distill.models.hub import load_packaged_minilm, load_tokenizer, minilm_l6_path
from distill.models.ops import packed_while_frozen
from distill.models.student import student_from_teacher
from distill.teacher_cache import fingerprint

BATCH, MAX_LEN, LAYERS = 32, 64, [0, 5]


class Setup:
    """Teacher, a student prototype (copied for every run) and MR training rows, built once."""

    def __init__(self, rows: int, batch: int = BATCH, max_length: int = MAX_LEN):
        self.batch, self.max_length = batch, max_length
        self.tokenizer = load_tokenizer(minilm_l6_path())
        self.teacher = load_packaged_minilm(task="sequence", num_labels=2).eval().requires_grad_(False)
        self.student = student_from_teacher(self.teacher, layers=LAYERS)  # the from_teacher student config
        tokenized = tokenize(mr(), self.tokenizer, max_length)["train"]
        self.rows = tokenized.select(range(min(rows, len(tokenized))))  # idx = 0..rows-1 (cache rows)

    def loader(self):
        """A fresh loader (seed 0, epoch 0): every run sees the same batches in the same order."""
        return make_dataloader(self.rows, Collator(self.tokenizer), self.batch, shuffle=True, seed=0,
                               group_by_length=True, drop_last=True)

    def batches(self, n: int) -> list[dict]:
        """The first ``n`` batches a run's first epoch sees (for timing outside the engine)."""
        out = []
        for batch in self.loader():
            out.append(batch)
            if len(out) == n:
                break
        return out

    def cache_key(self) -> str:
        return fingerprint(self.teacher, self.tokenizer, self.rows._fingerprint, self.max_length)


def kd_loss(student, teacher, hidden: bool = True, attention: bool = True) -> CompositeLoss:
    """The anchors' recipe: logits KL + hidden MSE + attention MSE (uniform maps), set up."""
    terms = {"logits": LogitsKL(temperature=1.0)}
    if hidden:
        terms["hidden"] = HiddenMSE(layer_map="uniform")
    if attention:
        terms["attention"] = AttentionMSE(layer_map="uniform")
    loss = CompositeLoss(**terms)
    loss.setup(student.config, teacher.config)
    return loss


def hard_loss(student) -> CompositeLoss:
    loss = CompositeLoss(hard=HardCrossEntropy())
    loss.setup(student.config, None)
    return loss


def engine_step_times(setup: Setup, loss_of, teacher=None, max_steps: int | None = None, epochs: float = 1.0,
                      cache_key: str | None = None, mixed_precision: str = "no",
                      **settings) -> tuple[list[float], dict]:
    """One ``distill.engine.train`` run on a fresh copy of the student; per-step seconds from the loop's
    own samples/s log (one record per step), in step order, and the run's summary. ``cache_key``
    turns the teacher-logit cache on (a fresh cache dir per run: epoch 1 fills it); ``settings``: more
    ``TrainerConfig`` fields."""
    student = copy.deepcopy(setup.student)
    loss = loss_of(student)
    # checkpoints in memory (/dev/shm): the run's final save_state must not leave disk write-back
    # running into the next variant's timed steps
    scratch = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="kd_step_", dir=scratch) as out:
        cfg = TrainerConfig(epochs=epochs, max_steps=max_steps, lr=1e-4, log_every=1, save_every=10**9,
                            resume=None, teacher_cache=cache_key is not None, cache_dir=str(Path(out) / "cache"),
                            load_best_at_end=False, mixed_precision=mixed_precision, **settings)
        with contextlib.redirect_stderr(io.StringIO()):  # the engine's progress bar, not the table's lines
            summary = train(cfg, student, loss, setup.loader(), None, out, "sequence", ["negative", "positive"],
                            teacher=teacher, cache_key=cache_key)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/samples_per_s"] for r in records if "train/samples_per_s" in r]
    if len(rates) != summary.steps:
        raise RuntimeError(f"expected one throughput record per step, got {len(rates)} for {summary.steps}")
    return [setup.batch / r for r in rates], summary


def teacher_times(teacher, batches: list[dict], needs: frozenset[str], map_layers=None) -> list[float]:
    """The teacher's forward alone, as the engine calls it (no_grad, only what the losses read, its frozen
    linears packed for the run: the first batch packs them)."""
    times = []
    with packed_while_frozen(teacher):
        for batch in batches:
            inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
            t0 = time.perf_counter()
            with torch.no_grad():
                teacher(**inputs, **flags(needs, map_layers))
            times.append(time.perf_counter() - t0)
    return times


def interleave(variants: dict, repeats: int, keep=lambda times: times) -> dict[str, list[list[float]]]:
    """Run every variant (name -> fn returning per-step times) once per round, ``repeats`` rounds after a
    discarded warm-up round, in alternating order so no variant always follows the same one;
    ``keep`` picks the timed part of each run."""
    runs = {name: [] for name in variants}
    for r in range(repeats + 1):
        names = list(variants) if r % 2 else list(reversed(variants))
        for name in names:
            times = variants[name]()
            if r:  # round 0 warms up allocator, kernels and lazy imports
                runs[name].append(keep(times))
    return runs


def per_batch_median(runs: list[list[float]]) -> list[float]:
    """Runs (each a list of per-step times in step order) -> the median of every step over the runs."""
    return [statistics.median(step) for step in zip(*runs, strict=True)]


def busy_processes(sample_s: float = 2.0, threshold: float = 0.3) -> list[str]:
    """Other processes using more than ``threshold`` of a core over ``sample_s`` (Linux /proc)."""

    def cpu_ticks() -> dict[str, tuple[int, str]]:
        out = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                name = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                out[pid] = (int(fields[11]) + int(fields[12]), name)  # utime + stime
            except (OSError, ValueError, IndexError):
                continue
        return out

    if not Path("/proc/self/stat").exists():
        return []
    before = cpu_ticks()
    time.sleep(sample_s)
    after = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    me = str(os.getpid())
    return [f"{pid} ({name})" for pid, (ticks, name) in after.items()
            if pid != me and pid in before and (ticks - before[pid][0]) / hz / sample_s > threshold]


def wait_for_quiet_machine(max_wait_s: float = 900.0, poll_s: float = 30.0) -> None:
    """Timings on a machine busy with training, tests or notebooks mean nothing: wait until it is quiet
    (no `distill pipeline`/pytest process and no other process using more than a third of a core)."""
    import subprocess

    waited = 0.0
    while True:
        jobs = subprocess.run(["pgrep", "-f", "distill pipeline|pytest"], capture_output=True, text=True)
        others = [p for p in jobs.stdout.split() if int(p) != os.getpid()] + busy_processes()
        if not others:
            return
        if waited >= max_wait_s:
            print(f"WARNING: still busy after {max_wait_s:.0f} s ({', '.join(others)}); figures may be noisy",
                  flush=True)
            return
        if waited == 0:
            print(f"waiting for other heavy jobs to finish ({', '.join(others)}) ...", flush=True)
        time.sleep(poll_s)
        waited += poll_s


def bench_parser(doc: str, steps_help: str, batch: bool = True) -> argparse.ArgumentParser:
    """The options every step-timing benchmark takes: --repeats, --steps, --no-wait; --batch where it times
    ``Setup``'s batches (the tests pass a small one: they check the script runs, not its figures)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=4, help="interleaved rounds (after one warm-up round)")
    ap.add_argument("--steps", type=int, default=12, help=steps_help)
    if batch:
        ap.add_argument("--batch", type=int, default=BATCH, help="rows per batch (the figures quoted: 32, data=mr's)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    return ap


def start(args: argparse.Namespace) -> None:
    """Quiet logging, wait for a quiet machine unless --no-wait, seed 0."""
    logging.basicConfig(level=logging.WARNING)
    if not args.no_wait:
        wait_for_quiet_machine()
    torch.manual_seed(0)


def cached_epoch_ratio(setup: Setup, repeats: int, layers: bool) -> tuple[float, float, float, set]:
    """Two epochs of KD with the teacher cache on (epoch 2 reads it) vs two student-only epochs on the same
    batches, interleaved: (epoch-2 ratio, KD epoch 2 s, student-only epoch 2 s, teacher calls per run)."""
    key, per_epoch, calls = setup.cache_key(), len(setup.loader()), set()

    def cached_run():
        times, summary = engine_step_times(setup, lambda s: kd_loss(s, setup.teacher, hidden=layers, attention=layers),
                                           teacher=setup.teacher, epochs=2, cache_key=key)
        calls.add(summary.teacher_calls)
        return times

    runs = interleave({"cached": cached_run, "plain": lambda: engine_step_times(setup, hard_loss, epochs=2)[0]},
                      repeats, keep=lambda times: times[per_epoch:])
    cached, plain = (sum(per_batch_median(runs[name])) for name in ("cached", "plain"))
    return cached / plain, cached, plain, calls


def main() -> None:
    ap = bench_parser(__doc__, "train steps per run in part 1 (first one not timed)")
    ap.add_argument("--cache-rows", type=int, default=256, help="MR rows per epoch in the cache part")
    args = ap.parse_args()
    start(args)
    setup = Setup(rows=max(args.cache_rows, args.steps * args.batch), batch=args.batch)
    teacher = setup.teacher
    probe = kd_loss(copy.deepcopy(setup.student), teacher)
    kd_needs, kd_maps = probe.needs, probe.teacher_map_layers()
    skip = 1  # step 1 of every run allocates the optimizer state and is left out of every figure

    # ---- part 1: KD step vs student-only step + teacher forward, on the same batches ----
    batches = setup.batches(args.steps)
    runs = interleave({
        "kd": lambda: engine_step_times(setup, lambda s: kd_loss(s, teacher), teacher=teacher, max_steps=args.steps)[0],
        "student": lambda: engine_step_times(setup, hard_loss, max_steps=args.steps)[0],
        "teacher": lambda: teacher_times(teacher, batches, kd_needs, kd_maps),
    }, args.repeats, keep=lambda times: times[skip:])
    kd_t, st_t, te_t = (statistics.fmean(per_batch_median(runs[name])) for name in ("kd", "student", "teacher"))
    ratio = kd_t / (st_t + te_t)

    # ---- parts 2 and 3: teacher cache, epoch 2 vs student-only epoch 2 (logits only; logits + layers) ----
    setup.rows = setup.rows.select(range(args.cache_rows))
    per_epoch = len(setup.loader())
    cached_ratio, cached_epoch, plain_epoch, calls = cached_epoch_ratio(setup, args.repeats, layers=False)
    layer_ratio, layer_epoch, layer_plain, layer_calls = cached_epoch_ratio(setup, args.repeats, layers=True)

    n_timed = args.steps - skip
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}; "
          f"MiniLM-L6 teacher -> 2-layer student (teacher layers {LAYERS}), MR train rows, batch {args.batch}, "
          f"max_len {MAX_LEN} (padded per batch, length-grouped)")
    print(f"part 1: {n_timed} timed steps per run x {args.repeats} interleaved rounds; "
          f"losses {sorted(kd_needs)} (logits KL + hidden MSE + attention MSE)")
    print(f"  (a) KD step (engine)                       {kd_t * 1e3:8.1f} ms")
    print(f"  (b) student-only step (engine, hard CE)    {st_t * 1e3:8.1f} ms")
    print(f"  (c) teacher forward alone (no_grad, maps)  {te_t * 1e3:8.1f} ms")
    print(f"      unavoidable (b) + (c)                  {(st_t + te_t) * 1e3:8.1f} ms")
    print(f"  (d) KD / (b + c)                           {ratio:8.3f}   (target <= 1.10: "
          f"{'met' if ratio <= 1.10 else 'MISSED'})")
    print(f"part 2: teacher cache, logits KL only, {args.cache_rows} rows = {per_epoch} steps/epoch, 2 epochs, "
          f"teacher forward calls per run {sorted(calls)} (expected [{per_epoch}])")
    print(f"  epoch 2, KD with cached teacher logits     {cached_epoch * 1e3:8.1f} ms")
    print(f"  epoch 2, student-only (hard CE)            {plain_epoch * 1e3:8.1f} ms")
    print(f"  cached / student-only                      {cached_ratio:8.3f}   (target <= 1.05: "
          f"{'met' if cached_ratio <= 1.05 else 'MISSED'})")
    print(f"part 3: teacher cache with hidden states + attention maps (logits KL + hidden MSE + attention MSE), "
          f"teacher forward calls per run {sorted(layer_calls)} (expected [{per_epoch}])")
    print(f"  epoch 2, KD with cached teacher outputs    {layer_epoch * 1e3:8.1f} ms")
    print(f"  epoch 2, student-only (hard CE)            {layer_plain * 1e3:8.1f} ms")
    print(f"  cached / student-only                      {layer_ratio:8.3f}   (target <= 1.10: "
          f"{'met' if layer_ratio <= 1.10 else 'MISSED'})")
    print(json.dumps({"kd_over_unavoidable": round(ratio, 3), "cached_over_student_only": round(cached_ratio, 3),
                      "layer_cached_over_student_only": round(layer_ratio, 3)}))


if __name__ == "__main__":
    main()
