"""The same distillation driven by our engine and by the libraries users run it with, in one process.

MiniLM-L6 teacher -> 2-layer student (teacher layers 0 and 5), logits KL (T=1) + hidden MSE
(embeddings and layers, uniform map 0-0, 1-3, 2-6) + attention MSE (maps 1-3, 2-6) at real
tokens, batch 32, AdamW (lr 1e-4, weight decay 0.01 except biases and LayerNorm) with a linear
schedule (10% warm-up) and gradient clipping at 1.0. How each peer library is told this: peer_libs.py.

Per step (default): real MR sentences (max_length 64, padded per batch, length-grouped), the same
batches in the same order for everyone, same teacher and student weights:

  * ours         `distill.engine.train` on our BERT (per-step times from the loop's own samples/s log);
  * TextBrewer   its `GeneralDistiller.train()` over transformers' BertForSequenceClassification (eager
                 attention); it cannot be driven one step at a time, so its own step hook times it: the
                 scheduler's step() (called right after optimizer.step()) stamps the clock, step i runs
                 from stamp i-1 to stamp i (step 0 from the train() call);
  * torchdistill its `DistillationBox` (forward hooks read the hidden states and maps) over the same
                 transformers models, one `forward_process` + `post_forward_process` per batch, as its
                 examples' loop; timed like the hand loop;
  * hand loop    a clean hand-written PyTorch loop over the same transformers models;
  * and, for reference only, our model in that same hand-written loop (engine overhead vs model).

Interleaved rounds in alternating order (one discarded warm-up round), the first step of each run
left out (optimizer state allocation); a step time is the mean over the timed batches of each
batch's median over the rounds. Last line is JSON with "speedup_vs_fastest_other" = fastest of
{TextBrewer, torchdistill, hand loop} step time / ours (>1: we are faster; target >= 1.3) and "peers"
(names -> versions timed). A peer that does not import is reported as "skipped: why".

Whole run (--run): a KD run on MR (default 3 epochs) from the packaged MiniLM fine-tuned on MR (the
pipeline's teacher stage, fine-tuned once and reused) into the 2-layer student, the losses above,
each run timed end to end (models loaded, data tokenized, trained, the best validation epoch kept):

  * ours         what `distill train recipe=mr_tinybert` runs (`distill.run.run_training`) at its defaults:
                 padding per batch, length grouping, the teacher cache on (fresh), validation every epoch;
                 its wall time also holds the teacher pre-flight and the final test scoring it does;
  * TextBrewer   its documented set-up (sst2 notebook): every row padded to max_seq_length, a
                 RandomSampler, the teacher run on every step of every epoch; its checkpoint callback scores
                 the validation split after every epoch and the best epoch is kept;
  * torchdistill its documented GLUE set-up (examples/hf_transformers, sample configs): truncation at
                 max_seq_length, DataCollatorWithPadding (padding per batch, no length grouping), a
                 RandomSampler, the teacher every step; validation after every epoch, best epoch kept.

max_seq_length is 64 for everyone (their examples use 128; 64 is MR's and ours, so no peer pays for
padding ours does not have). Then every student is scored on the test split by the same code, with a
McNemar paired test of ours against each peer. Last line is JSON: "run_speedup_vs_fastest_peer"
(fastest peer's wall time / ours; target >= 2 at equal or better test accuracy: ours at least the
peer's, or McNemar p >= 0.05), "peers", "test_accuracy", "mcnemar_vs_ours", "wall_s", "steps".
The runs go one after another (ours first), once each: repeat the command to see the spread.

    python benchmarks/peers.py [--repeats 4] [--steps 12] [--no-wait]
    python benchmarks/peers.py --run [--epochs 3] [--max-steps N] [HYDRA_OVERRIDE ...]
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
from peer_libs import (
    CLIP,
    MAPS,
    T,
    adamw,
    masked_attention_mse,
    masked_hidden_mse,
    model_inputs,
    schedule_args,
    textbrewer_distiller,
    textbrewer_train,
    textbrewer_version,
    to_transformers,
    torchdistill_box,
    torchdistill_config,
    torchdistill_release,
    torchdistill_step,
    torchdistill_version,
)
from transformers import get_linear_schedule_with_warmup

HAND = "hand loop (transformers)"
REFERENCE = "our model, hand loop"  # not a peer: what our model costs outside our engine
PEER_VERSIONS = {"TextBrewer": textbrewer_version, "torchdistill": torchdistill_version}


def described(timed: dict[str, str]) -> str:
    """'name version, ...' for the output, saying where torchdistill runs over the torchvision stand-in."""
    import peer_shims

    shim = " (torchvision: run-time stand-in, peer_shims.py)"
    return ", ".join(f"{name} {version}{shim if name == 'torchdistill' and peer_shims.used else ''}"
                     for name, version in timed.items())


def scratch() -> str | None:
    """Memory-backed temp dir where there is one: a peer's checkpoint write must not slow the next run."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def hand_loss(s_out, t_out, mask, hidden_pairs, attention_pairs):
    """Logits KL + masked hidden MSE + masked attention MSE, written out as a peer's user would."""
    kl = F.kl_div(F.log_softmax(s_out.logits / T, -1), F.softmax(t_out.logits / T, -1), reduction="batchmean") * T * T
    hidden = sum(masked_hidden_mse(s_out.hidden_states[i], t_out.hidden_states[j], mask) for i, j in hidden_pairs)
    attention = sum(masked_attention_mse(s_out.attentions[i - 1], t_out.attentions[j - 1], mask)  # L maps: i - 1
                    for i, j in attention_pairs)
    return kl + hidden + attention


def hand_loop_times(setup: Setup, teacher, student, steps: int, pairs) -> list[float]:
    """A plain loop: batch -> teacher (no_grad) -> student -> loss -> backward -> clip -> AdamW -> schedule."""
    student = copy.deepcopy(student).train()
    opt = adamw(student)
    sched = get_linear_schedule_with_warmup(opt, **schedule_args(steps))
    times, it = [], iter(setup.loader())
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        inputs = model_inputs(batch)
        with torch.no_grad():
            t_out = teacher(**inputs, **MAPS)
        s_out = student(**inputs, **MAPS)
        loss = hand_loss(s_out, t_out, batch["attention_mask"], *pairs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # what a user logs
        times.append(time.perf_counter() - t0)
    return times


def textbrewer_times(setup: Setup, teacher, student, steps: int, pairs) -> list[float]:
    """TextBrewer's own train() for ``steps`` steps, timed by its step hook (see the module doc)."""
    stamps = []

    def stamped_schedule(optimizer, **kwargs):
        sched = get_linear_schedule_with_warmup(optimizer, **kwargs)
        step = sched.step

        def step_and_stamp(*args, **kw):  # TextBrewer calls this once per step, right after optimizer.step()
            step(*args, **kw)
            stamps.append(time.perf_counter())

        sched.step = step_and_stamp
        return sched

    with tempfile.TemporaryDirectory(prefix="peers_", dir=scratch()) as out, \
            contextlib.redirect_stderr(io.StringIO()):  # its progress bar, not the table's lines
        distiller = textbrewer_distiller(teacher, copy.deepcopy(student), pairs, out, ckpt_steps=steps)
        begin = time.perf_counter()
        textbrewer_train(distiller, setup.loader(), steps, scheduler_class=stamped_schedule)
    return [b - a for a, b in zip([begin, *stamps], stamps)]


def torchdistill_times(setup: Setup, teacher, student, steps: int, pairs) -> list[float]:
    """A DistillationBox stepped batch by batch as torchdistill's examples loop, timed like the hand loop."""
    box = torchdistill_box(teacher, copy.deepcopy(student), torchdistill_config(pairs, steps))
    box.pre_epoch_process(epoch=0)
    times, it = [], iter(setup.loader())
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            torchdistill_step(box, model_inputs(next(it))).item()  # what its examples log
            times.append(time.perf_counter() - t0)
    finally:
        torchdistill_release(box)  # its hooks sit on the teacher every other variant shares
    return times


def peer_versions() -> tuple[dict[str, str], dict[str, str]]:
    """(name -> version of every peer that imports, name -> why the others are skipped); never raises."""
    versions, skipped = {}, {}
    for name, version_of in PEER_VERSIONS.items():
        try:
            versions[name] = version_of()
        except Exception as e:  # not installed, or a dependency that cannot load next to this torch
            lines = str(e).strip().splitlines()
            skipped[name] = f"does not import here ({type(e).__name__}: {(lines[-1] if lines else '')[:120]})"
    return versions, skipped


def step_mode(args) -> None:
    setup = Setup(rows=args.steps * BATCH)
    teacher = setup.teacher
    loss = kd_loss(copy.deepcopy(setup.student), teacher)
    pairs = (loss.terms["hidden"].layer_map.pairs, loss.terms["attention"].layer_map.pairs)
    hf_teacher = to_transformers(teacher).eval().requires_grad_(False)
    hf_student = to_transformers(setup.student)
    versions, skipped = peer_versions()
    peer_times = {"TextBrewer": textbrewer_times, "torchdistill": torchdistill_times}

    skip = 1
    variants = {
        "ours": lambda: engine_step_times(setup, lambda s: kd_loss(s, teacher), teacher=teacher,
                                          max_steps=args.steps)[0],
        HAND: lambda: hand_loop_times(setup, hf_teacher, hf_student, args.steps, pairs),
        REFERENCE: lambda: hand_loop_times(setup, teacher, setup.student, args.steps, pairs),
    }
    for name in versions:
        variants[name] = lambda fn=peer_times[name]: fn(setup, hf_teacher, hf_student, args.steps, pairs)
    runs = interleave(variants, args.repeats, keep=lambda times: times[skip:])
    step = {name: statistics.fmean(per_batch_median(times)) for name, times in runs.items()}
    others = {name: t for name, t in step.items() if name not in ("ours", REFERENCE)}
    fastest = min(others, key=others.get)
    speedup = others[fastest] / step["ours"]
    timed = {HAND: f"transformers {transformers.__version__}", **versions}
    report_steps(args, step, timed, skipped, fastest, speedup)


def report_steps(args, step: dict, timed: dict, skipped: dict, fastest: str, speedup: float) -> None:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}; "
          f"MiniLM-L6 teacher -> 2-layer student (teacher layers {LAYERS}), logits KL + hidden MSE + attention MSE, "
          f"MR batch {BATCH}, max_len {MAX_LEN} (padded per batch)")
    print(f"peers timed: {described(timed)}")
    print(f"{args.steps - 1} timed steps per run x {args.repeats} interleaved rounds; step time, and how much "
          f"slower than ours")
    for name, t in step.items():
        print(f"  {name:28s} {t * 1e3:8.1f} ms   {t / step['ours']:6.2f}x")
    for name, why in skipped.items():
        print(f"  {name:28s} skipped: {why}")
    print(f"speed-up of ours over the fastest other ({fastest}): {speedup:.2f}x (>1: ours is faster; "
          f"target >= 1.3: {'met' if speedup >= 1.3 else 'MISSED'})")
    result = {"speedup_vs_fastest_other": round(speedup, 3), "fastest_other": fastest, "peers": timed,
              "step_ms": {name: round(t * 1e3, 1) for name, t in step.items()}}
    result.update({name: f"skipped: {why}" for name, why in skipped.items()})
    print(json.dumps(result))


# ---- whole run (--run) ----

@dataclass(frozen=True)
class Plan:
    """A peer run's length: optimizer steps in all, and per epoch (its loader's batches)."""

    steps: int
    per_epoch: int


@dataclass(frozen=True)
class Run:
    """Every run's trained student, wall seconds and optimizer steps, by name."""

    students: dict
    wall: dict[str, float]
    steps: dict[str, int]


def timed(fn, *args):
    begin = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - begin


def peer_models(teacher_dir: Path):
    """The fine-tuned teacher and the student built from its layers 0 and 5 (as ``distill train`` builds it),
    both as transformers' BERT, and the teacher's tokenizer."""
    from distill.models.hub import from_pretrained, load_tokenizer
    from distill.models.student import student_from_teacher

    ours = from_pretrained(teacher_dir, task="sequence").eval()
    student = to_transformers(student_from_teacher(ours, layers=LAYERS)).train()
    return to_transformers(ours).eval().requires_grad_(False), student, load_tokenizer(teacher_dir)


def peer_split(split, tokenizer, padding):
    """A split tokenized as the peers' examples do: truncated at MAX_LEN and padded to it
    (``padding="max_length"``) or left for a collator to pad per batch (``padding=False``)."""
    tokenized = split.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=MAX_LEN, padding=padding),
                          batched=True, remove_columns=["text"], load_from_cache_file=False)
    return tokenized.rename_column("label", "labels")


@torch.inference_mode()
def val_accuracy(model, loader) -> float:
    model.eval()
    right = total = 0
    for batch in loader:
        pred = model(**model_inputs(batch)).logits.argmax(-1)
        right, total = right + int((pred == batch["labels"]).sum()), total + len(pred)
    model.train()
    return right / total


class BestOnValidation:
    """Called with the student after each epoch: keeps the weights of its best validation accuracy."""

    def __init__(self, loader):
        self.loader, self.best, self.state = loader, -1.0, None

    def __call__(self, model, step=None):  # TextBrewer's callback signature
        accuracy = val_accuracy(model, self.loader)
        if accuracy > self.best:
            self.best, self.state = accuracy, copy.deepcopy(model.state_dict())

    def restore(self, model):
        model.load_state_dict(self.state)
        return model.eval()


def textbrewer_run(teacher_dir: Path, data, pairs, plan: Plan):
    """TextBrewer at its sst2 notebook's set-up (rows padded to max_seq_length, RandomSampler, batch 32)."""
    from torch.utils.data import DataLoader, RandomSampler

    teacher, student, tokenizer = peer_models(teacher_dir)
    train, val = (peer_split(data.splits[s], tokenizer, "max_length").with_format("torch")
                  for s in ("train", "validation"))
    best = BestOnValidation(DataLoader(val, batch_size=BATCH))
    loader = DataLoader(train, sampler=RandomSampler(train), batch_size=BATCH)
    with tempfile.TemporaryDirectory(prefix="peers_textbrewer_") as out:
        distiller = textbrewer_distiller(teacher, student, pairs, out, ckpt_steps=plan.per_epoch)
        textbrewer_train(distiller, loader, plan.steps, callback=best)  # callback at every checkpoint: each epoch
    return best.restore(student)


def torchdistill_loader(dataset_id: str, sampler) -> dict:
    return {"dataset_id": dataset_id, "sampler": {"class_or_func": sampler, "kwargs": {}},
            "kwargs": {"batch_size": BATCH, "num_workers": 0, "drop_last": False},
            "collate_fn": "DataCollatorWithPadding", "requires_supp": False}


def torchdistill_run(teacher_dir: Path, data, pairs, plan: Plan):
    """torchdistill at its GLUE examples' set-up (DataCollatorWithPadding, RandomSampler, batch 32): the box
    builds the loaders from its registries; validation after every epoch, best epoch kept."""
    from torch.utils.data import RandomSampler, SequentialSampler
    from torchdistill.datasets.registry import register_collate_func
    from transformers import DataCollatorWithPadding

    teacher, student, tokenizer = peer_models(teacher_dir)
    register_collate_func(DataCollatorWithPadding(tokenizer))
    datasets = {f"mr/{s}": peer_split(data.splits[s], tokenizer, False) for s in ("train", "validation")}
    config = {**torchdistill_config(pairs, plan.steps),
              "train_data_loader": torchdistill_loader("mr/train", RandomSampler),
              "val_data_loader": torchdistill_loader("mr/validation", SequentialSampler)}
    box = torchdistill_box(teacher, student, config, datasets)
    best, done = BestOnValidation(box.val_data_loader), 0
    for epoch in range(math.ceil(plan.steps / plan.per_epoch)):
        box.pre_epoch_process(epoch=epoch)
        for batch in box.train_data_loader:
            torchdistill_step(box, batch).item()  # what its examples log
            done += 1
            if done == plan.steps:
                break
        best(box.student_model)
        box.post_epoch_process()
    torchdistill_release(box)
    return best.restore(student)


def ours_run(cfg, teacher_dir: Path, out: Path):
    """What ``distill train`` runs, with the fine-tuned teacher and a fresh teacher cache."""
    from omegaconf import OmegaConf

    from distill.models.hub import from_pretrained
    from distill.run import run_training

    cfg = OmegaConf.merge(cfg, {"teacher": None})
    cfg.teacher = {"_target_": "distill.models.hub.from_pretrained", "name_or_path": str(teacher_dir)}
    cfg.trainer.cache_dir = str(out / "cache")
    run_training(cfg, out / "run")
    return from_pretrained(out / "run" / "student", task="sequence").eval()


def run_config(args):
    """The composed ``recipe=mr_tinybert`` config with this run's length and overrides."""
    from distill.config_check import compose_checked

    length = [f"trainer.epochs={args.epochs}"] + ([f"trainer.max_steps={args.max_steps}"] if args.max_steps else [])
    return compose_checked(["recipe=mr_tinybert", *length, *args.overrides])


def run_mode(args) -> None:
    import hydra

    from distill.models.hub import from_pretrained
    from distill.models.student import student_from_teacher
    from distill.pipeline import stage, teacher_stage_config

    cfg = run_config(args)
    root = Path(hydra.utils.to_absolute_path(cfg.stage_root))
    teacher_dir = stage("teacher", teacher_stage_config(cfg), root) / "student"  # fine-tuned once, then reused
    data = hydra.utils.instantiate(cfg.data.source)
    teacher = from_pretrained(teacher_dir, task="sequence").eval()
    probe = kd_loss(student_from_teacher(teacher, layers=LAYERS), teacher)  # the layer maps ours resolves
    pairs = (probe.terms["hidden"].layer_map.pairs, probe.terms["attention"].layer_map.pairs)
    per_epoch = math.ceil(len(data.splits["train"]) / BATCH)
    plan = Plan(args.max_steps or max(1, round(args.epochs * per_epoch)), per_epoch)
    versions, skipped = peer_versions()
    students, wall = {}, {}
    with tempfile.TemporaryDirectory(prefix="peers_ours_") as out:
        torch.manual_seed(0)
        students["ours"], wall["ours"] = timed(ours_run, cfg, teacher_dir, Path(out))
        steps = {"ours": json.loads((Path(out) / "run" / "metrics.json").read_text())["steps"]}
    runners = {"TextBrewer": textbrewer_run, "torchdistill": torchdistill_run}
    for name in versions:
        torch.manual_seed(0)  # the peers' RandomSampler and dropout draw from the global generator
        students[name], wall[name] = timed(runners[name], teacher_dir, data, pairs, plan)
        steps[name] = plan.steps
    report_run(cfg, data, teacher, teacher_dir, Run(students, wall, steps), versions, skipped)


def report_run(cfg, data, teacher, teacher_dir, run: Run, versions: dict, skipped: dict) -> None:
    from distill import evaluate as ev
    from distill.models.hub import load_tokenizer
    from distill.preflight import eval_split

    rows, names, task = eval_split(data, load_tokenizer(teacher_dir), split="test", max_length=int(cfg.data.max_length))
    preds = {name: ev.predict(ev.torch_forward(model), rows, task) for name, model in run.students.items()}
    accuracy = {name: ev.metrics(p, names)["accuracy"] for name, p in preds.items()}
    teacher_acc = ev.metrics(ev.predict(ev.torch_forward(teacher), rows, task), names)["accuracy"]
    tests = {name: ev.mcnemar(preds["ours"].correct, preds[name].correct) for name in versions}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}; "
          f"MR train {len(data.splits['train'])} rows, batch {BATCH}, max_length {MAX_LEN}; optimizer steps "
          f"{run.steps}; teacher {teacher_dir} (test accuracy {teacher_acc:.4f}, {len(rows)} rows)")
    print(f"peers run: {described(versions)}")
    print(f"  {'run':28s} {'wall s':>8s} {'test acc':>9s}   McNemar vs ours")
    for name in run.students:
        label = "ours (distill train)" if name == "ours" else f"{name} {versions[name]}"
        test = tests.get(name)
        note = f"p = {test['p_value']:.3g} (only ours right {test['b']}, only {name} right {test['c']})" if test else ""
        print(f"  {label:28s} {run.wall[name]:8.1f} {accuracy[name]:9.4f}   {note}")
    for name, why in skipped.items():
        print(f"  {name:28s} skipped: {why}")
    result = {"run_speedup_vs_fastest_peer": None, "fastest_peer": None, "peers": versions,
              "wall_s": {k: round(v, 1) for k, v in run.wall.items()}, "test_accuracy": accuracy,
              "teacher_test_accuracy": teacher_acc, "mcnemar_vs_ours": tests, "steps": run.steps}
    if versions:
        fastest = min(versions, key=run.wall.get)
        speedup = run.wall[fastest] / run.wall["ours"]
        not_worse = accuracy["ours"] >= accuracy[fastest] or tests[fastest]["p_value"] >= 0.05
        print(f"whole-run speed-up of ours over the fastest peer ({fastest}): {speedup:.2f}x; test accuracy "
              f"{'equal or better' if not_worse else 'WORSE'} (paired); target >= 2x: "
              f"{'met' if speedup >= 2 and not_worse else 'MISSED'}")
        result.update(run_speedup_vs_fastest_peer=round(speedup, 3), fastest_peer=fastest)
    result.update({name: f"skipped: {why}" for name, why in skipped.items()})
    print(json.dumps(result))


def main() -> None:
    ap = bench_parser(__doc__, "train steps per run (the first one is not timed)", batch=False)
    ap.add_argument("--run", action="store_true", help="whole KD runs on MR instead of per-step timing")
    ap.add_argument("--epochs", type=float, default=3.0, help="--run: epochs of every run")
    ap.add_argument("--max-steps", type=int, default=None, help="--run: optimizer steps instead of epochs (smoke)")
    ap.add_argument("overrides", nargs="*", help="--run: Hydra overrides for ours and the teacher stage")
    args = ap.parse_args()
    start(args)
    if args.run:
        run_mode(args)
    else:
        step_mode(args)


if __name__ == "__main__":
    main()
