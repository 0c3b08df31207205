"""The distillation loop, and nothing else: Accelerate does devices, DDP, AMP and checkpoints.

    batch ─┬─ teacher (frozen, eval, no_grad; or the teacher cache) ──┐
           └─ student ── ModelOutputs ──────────────── CompositeLoss ─┴→ backward → step

Fine-tuning is the same loop with a hard-label-only loss and ``teacher=None``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm
from transformers import get_scheduler

from distill.atomic import check_writable
from distill.checkpoint import resume, save_checkpoint
from distill.data.collate import Collator
from distill.data.tokenize import lengths
from distill.errors import DistillError
from distill.evaluate import (
    MLM_INPUTS,
    MODEL_INPUTS,
    Predictions,
    masked_lm_metrics,
    masked_lm_totals,
    metric_for_best,
    metrics,
)
from distill.interrupt import StopRequest
from distill.launch import cpu_only, resolve_precision
from distill.models.ops import packed_while_frozen
from distill.models.projected_table import projected_word_embeddings
from distill.models.used_rows import frozen_word_embeddings, used_rows_only
from distill.outputs import IGNORE_INDEX, ModelOutputs
from distill.schema import TrainerConfig
from distill.teacher_cache import CACHEABLE, Layers, TeacherCache

log = logging.getLogger(__name__)


def flat_scalars(config: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as ``{"trainer.lr": 1e-4, ...}``: what tensorboard's hparams and wandb accept
    (lists become their string form, None the string "None")."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


def flags(needs: frozenset[str], map_layers: frozenset[int] | None = None) -> dict:
    """What a model must return for losses that read ``needs`` (none → the SDPA fast path);
    ``map_layers`` (1-based) limits the attention maps to the layers the losses read."""
    maps = "attentions" in needs and (map_layers if map_layers is not None else True)
    return {"output_hidden_states": "hidden_states" in needs, "output_attentions": maps,
            "output_qkv": "qkv" in needs}


def trim_log(log_file: Path, step: int) -> None:
    """Drop the rows a resumed run will log again: those after the checkpoint it resumes from."""
    if not log_file.is_file():
        return
    def logged_at(line: str) -> int | None:  # a line torn by a kill mid-write is dropped with the rest
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            return None

    lines = log_file.read_text().splitlines()
    keep = [line for line in lines if (at := logged_at(line)) is not None and at <= step]
    if len(keep) != len(lines):
        tmp = log_file.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, log_file)


def make_accelerator(cfg: TrainerConfig, out: Path, find_unused: bool) -> Accelerator:
    """Mixed precision and accumulation from the launcher (``accelerate launch`` flags, ``accelerate
    config``, env) unless the trainer config sets them; CPU processes of one launch train together."""
    # a plugin, not gradient_accumulation_steps=: accelerate lets its env var override that argument
    accumulation = GradientAccumulationPlugin(num_steps=cfg.grad_accum) if cfg.grad_accum is not None else None
    # a pipeline runs its stages in one process, each with its own precision: accelerate keeps the first
    # one process-wide and refuses another; forget it (the process group, in PartialState, stays)
    AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=resolve_precision(cfg.mixed_precision), gradient_accumulation_plugin=accumulation,
        cpu=cpu_only(),
        log_with=cfg.log_with, project_dir=str(out),
        dataloader_config=DataLoaderConfiguration(split_batches=cfg.split_batches, use_seedable_sampler=True,
                                                  data_seed=cfg.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
    )


class StudentWithLoss(nn.Module):
    """Student + loss (with its projections) as one module, so DDP syncs both and export takes
    ``.student`` alone."""

    def __init__(self, student: nn.Module, loss: nn.Module):
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, batch: dict, teacher_out: ModelOutputs | None):
        out = self.student(**{k: batch[k] for k in MLM_INPUTS if k in batch}, **flags(self.loss.needs))
        return self.loss(out, teacher_out, batch)


def evaluate_masked_lm(accelerator: Accelerator, model: nn.Module, loader) -> dict:
    """Masked-LM top-1 accuracy and perplexity (and NSP accuracy on sentence pairs). The eval loader's
    MaskingCollator stays at epoch 0, so every evaluation scores the same masked positions."""
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        totals = masked_lm_totals(model, loader, accelerator.gather_for_metrics)
    model.train()
    return masked_lm_metrics(totals)


def evaluate(accelerator: Accelerator, model: nn.Module, loader, task: str, label_names) -> dict:
    """Main-metric evaluation over a (prepared) loader; padding duplicates dropped by gather."""
    if task == "mlm":
        return evaluate_masked_lm(accelerator, model, loader)
    model.eval()
    preds, labels = [], []
    for batch in loader:
        with torch.no_grad(), accelerator.autocast():
            logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits.float()
        p, y = logits.argmax(-1), batch["labels"]
        if task == "token":  # (B, T): equal T on every process before gathering
            p = accelerator.pad_across_processes(p, dim=1, pad_index=IGNORE_INDEX)
            y = accelerator.pad_across_processes(y, dim=1, pad_index=IGNORE_INDEX)
        p, y = accelerator.gather_for_metrics((p, y))
        preds += list(p.cpu().numpy()) if task == "token" else p.cpu().tolist()
        labels += list(y.cpu().numpy()) if task == "token" else y.cpu().tolist()
    model.train()
    if task == "token":  # one unit per labelled word; the row it came from is its bootstrap group
        keep = [np.asarray(y) != IGNORE_INDEX for y in labels]
        pred = Predictions(task, np.concatenate([np.asarray(y)[k] for y, k in zip(labels, keep)]),
                           np.concatenate([np.asarray(p)[k] for p, k in zip(preds, keep)]),
                           np.concatenate([np.full(k.sum(), i) for i, k in enumerate(keep)]))
    else:
        pred = Predictions(task, np.asarray(labels), np.asarray(preds), np.arange(len(labels)))
    return metrics(pred, label_names)


@dataclass
class LoopState:
    """Where the loop stands; saved with every checkpoint and restored on resume."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best: float | None = None  # best validation value of the main metric, and its step
    best_step: int | None = None
    bad_evals: int = 0  # evaluations in a row without a new best (early stopping)
    nonfinite: int = 0  # steps skipped for a non-finite loss
    teacher_calls: int = 0  # teacher forwards (the rest came from the teacher cache)
    eval_step: int | None = None  # the last evaluated step: the end does not evaluate it again

    @classmethod
    def restored(cls, saved: dict | None) -> LoopState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (saved or {}).items() if k in known})


@dataclass
class TeacherTargets:
    """The teacher's outputs for a batch: from the teacher cache when it holds them, else one no-grad
    forward (stored in the cache, and handed on fp16-rounded as the cache hands them back later, so a
    resumed run learns from the same targets whichever epoch it restarts in)."""

    teacher: nn.Module
    flags: dict  # what the teacher returns: only what the losses read
    cache: TeacherCache | None
    accelerator: Accelerator
    task: str

    def __call__(self, batch: dict, state: LoopState) -> ModelOutputs:
        mask = batch["attention_mask"]
        seq_len = batch["input_ids"].shape[1] if self.task == "token" else None
        if self.cache is not None and (hit := self.cache.get(batch["idx"], mask, seq_len)) is not None:
            return hit
        state.teacher_calls += 1
        with torch.no_grad(), self.accelerator.autocast():
            keys = getattr(self.teacher, "input_keys", MLM_INPUTS)  # a teacher with its own tokenizer: its ids
            out = self.teacher(**{k: batch[k] for k in keys if k in batch}, **self.flags)
        if self.cache is None:
            return out
        self.cache.put(batch["idx"], out, mask)
        return self.cache.get(batch["idx"], mask, seq_len)  # what a later epoch (or a resumed run) will read

    def flush(self) -> None:
        if self.cache is not None:
            self.cache.flush()


def teacher_targets(cfg: TrainerConfig, accelerator: Accelerator, loss: nn.Module, teacher: nn.Module | None,
                    dataset, task: str, cache_key: str | None, out: Path) -> TeacherTargets | None:
    """None when no loss reads the teacher; a cache when the losses read only what one can hold."""
    if teacher is None or not loss.uses_teacher:
        return None
    teacher = teacher.to(accelerator.device).eval().requires_grad_(False)  # never prepared: no DDP, no optimizer
    map_layers = getattr(loss, "teacher_map_layers", None)  # optional in a hand-made loss module
    cache = None
    if cfg.teacher_cache and cache_key and loss.needs <= CACHEABLE and task in ("sequence", "token"):
        with accelerator.main_process_first():
            cache = open_cache(cfg, loss, teacher, dataset, task, cache_key, out)
    return TeacherTargets(teacher, flags(loss.needs, map_layers() if map_layers else None), cache, accelerator, task)


def open_cache(cfg: TrainerConfig, loss: nn.Module, teacher: nn.Module, dataset, task: str, key: str,
               out: Path) -> TeacherCache | None:
    """The run's teacher cache: logits (token rows as long as the longest tokenized row) and the mapped
    layers' outputs; None, said in one line, when it would exceed ``trainer.cache_max_gb`` or the free disk."""
    needs = getattr(loss, "teacher_needs", loss.needs)
    layers = cached_layers(loss, teacher.config, needs)
    n = None
    if layers or task == "token":  # rows are addressed by the example's idx
        n = np.zeros(len(dataset), dtype=np.int64)
        n[np.asarray(dataset["idx"])] = lengths(dataset)
    c = teacher.config.num_labels
    shape = None if "logits" not in needs else (c,) if task == "sequence" else (int(n.max()), c)
    size = (len(dataset) * int(np.prod(shape)) * 2 if shape else 0) + (layers.bytes(n) if layers else 0)
    root = Path(cfg.cache_dir or out / "teacher_cache")
    free = shutil.disk_usage(next(p for p in (root, *root.parents) if p.exists())).free
    if size > min(cfg.cache_max_gb * 1e9, free):
        log.info("teacher cache off: %s for %d rows would take %.1f GB > trainer.cache_max_gb=%g or the %.1f GB free "
                 "there; the teacher runs every step (raise cache_max_gb or free disk to cache it)",
                 "/".join(sorted(needs)), len(dataset), size / 1e9, cfg.cache_max_gb, free / 1e9)
        return None
    return TeacherCache(root, key, len(dataset), shape, layers, None if n is None else n.tolist())


def cached_layers(loss: nn.Module, config, needs: frozenset[str]) -> Layers | None:
    """The teacher layers whose hidden states / maps / Q-K-V the losses read (a loss that does not say:
    every layer, or for maps the layers its ``teacher_map_layers`` names)."""
    wanted = [name for name in ("hidden_states", "attentions", "qkv") if name in needs]
    if not wanted:
        return None
    L, kept = config.num_hidden_layers, {}
    for name in wanted:
        if hasattr(loss, "teacher_layers"):
            layers = loss.teacher_layers(name)
        else:  # a hand-made loss module: the teacher computes maps only where teacher_map_layers says
            layers = getattr(loss, "teacher_map_layers", lambda: None)() if name == "attentions" else None
        every = range(L + 1) if name == "hidden_states" else range(1, L + 1)
        kept[name] = tuple(sorted(every if layers is None else layers))
    return Layers(L, config.hidden_size, config.num_attention_heads, **kept)


class MetricsLog:
    """Every logged row: kept for the summary, sent to the trackers, appended to ``metrics.jsonl``
    (main process) — which first loses the rows after the step a resumed run restarts from."""

    def __init__(self, accelerator: Accelerator, path: Path, start_step: int):
        self.accelerator, self.path, self.history = accelerator, path, []
        if accelerator.is_main_process:
            trim_log(path, start_step)

    def record(self, step: int, values: dict) -> None:
        values = {"step": step, **values}
        self.history.append(values)
        self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(values) + "\n")


class TrainWindow:
    """Mean training losses and samples/s since the last logged step. Sums stay on the device (a step
    never waits for the host); ``close`` reads them in one transfer."""

    def __init__(self):
        self.start()

    def start(self) -> None:
        self.sums, self.count, self.seen, self.t0 = {}, 0, 0, time.perf_counter()

    def add(self, values: dict, rows: int, finite: torch.Tensor) -> None:
        """A step's loss parts; ``finite`` (a 0/1 tensor) 0: the step was skipped and counts nowhere."""
        for name, value in values.items():
            value = torch.where(finite > 0, value.detach().float(), 0.0)  # a skipped step's NaN stays out
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count, self.seen = self.count + finite, self.seen + rows * finite

    def close(self) -> tuple[dict, float]:
        """The window's means and samples/s; a new window starts."""
        names = list(self.sums)
        count, seen, *sums = torch.stack([torch.as_tensor(self.count, dtype=torch.float32).reshape(()).cpu(),
                                          torch.as_tensor(self.seen, dtype=torch.float32).reshape(()).cpu(),
                                          *(self.sums[n].cpu() for n in names)]).tolist()
        means = {f"train/{n}": v / count if count else float("nan") for n, v in zip(names, sums)}
        rate = seen / (time.perf_counter() - self.t0)
        self.start()
        return means, rate


@dataclass
class NonFinite:
    """Steps with a non-finite loss, counted on the device and read (one host sync) at log and save
    steps. Such a step still counts, but its update is skipped on the device: AdamW's ``found_inf``, the
    flag AMP's GradScaler uses (without a scaler: with fp16 the scaler skips it itself)."""

    total: torch.Tensor  # non-finite micro-steps so far (since this process started)
    run: torch.Tensor  # ... in a row, now
    worst: torch.Tensor  # the longest run since the last read
    pending: torch.Tensor  # 1 when a micro-step since the last optimizer step was not finite

    @classmethod
    def on(cls, device) -> NonFinite:
        return cls(*(torch.zeros((), device=device) for _ in range(4)))

    def add(self, finite: torch.Tensor) -> None:
        bad = 1 - finite
        self.total += bad
        self.run.copy_((self.run + 1) * bad)
        self.worst.copy_(torch.maximum(self.worst, self.run))
        self.pending.copy_(torch.maximum(self.pending, bad))

    def read(self) -> tuple[int, int]:
        """(total, longest run since the last read) — a host sync."""
        total, worst = torch.stack([self.total, self.worst]).tolist()
        self.worst.copy_(self.run)
        return int(total), int(worst)


@dataclass
class Evaluation:
    """Validation: the best weights go to ``best_dir``; True when early stopping's patience ran out."""

    accelerator: Accelerator
    student: nn.Module
    loader: object
    task: str
    label_names: object
    best_dir: Path
    patience: int | None
    metric: str  # higher is better

    def __call__(self, state: LoopState, metrics_log: MetricsLog) -> bool:
        state.eval_step = state.global_step
        values = evaluate(self.accelerator, self.student, self.loader, self.task, self.label_names)
        key = self.metric
        if state.best is None or values[key] > state.best:
            state.best, state.best_step, state.bad_evals = values[key], state.global_step, 0
            if self.accelerator.is_main_process:
                from distill.models.hub import save_pretrained
                save_pretrained(self.student, self.best_dir)
        else:
            state.bad_evals += 1
        metrics_log.record(state.global_step, {f"eval/{k}": v for k, v in values.items()})
        return self.patience is not None and state.bad_evals >= self.patience


@dataclass
class Checkpoints:
    """Saves the loop at a step (once per step): weights, optimizer, scheduler, RNG, ``LoopState``, and
    ``modules`` outside the prepared ones (the weights' moving average)."""

    accelerator: Accelerator
    out: Path
    keep_last: int
    settings: dict  # the run's flat config, checked when a run resumes from it
    modules: dict[str, nn.Module]
    last_step: int | None = None

    def __call__(self, state: LoopState) -> None:
        if self.last_step != state.global_step:
            self.last_step = state.global_step
            save_checkpoint(self.accelerator, self.out, asdict(state), self.keep_last, self.settings, self.modules)


class WeightAverage(AveragedModel):
    """``trainer.ema_decay``: ``module``, a frozen copy of the student, whose trained tensors become ``decay ·
    average + (1 − decay) · weights`` at every ``update_parameters(student)`` (the first copies them). torch's
    AveragedModel (the copy, ``n_averaged``, the state_dict a checkpoint holds) with its own update over the tensors
    the optimizer trains only: torch's lerps frozen tables too (a vocabulary-sized one each step) and moves its
    counter to the device each step (a host sync on a GPU); frozen tensors and buffers do not change in a run."""

    def __init__(self, student: nn.Module, decay: float):
        super().__init__(student)
        self.requires_grad_(False)
        self.decay = decay
        log.info("validation scores, and the run keeps, a moving average of the weights (trainer.ema_decay=%g: "
                 "about the last %d steps)", decay, round(1 / (1 - decay)))

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        pairs = [(a, p) for a, p in zip(self.module.parameters(), model.parameters(), strict=True) if p.requires_grad]
        averages, weights = [a for a, _ in pairs], [p.detach() for _, p in pairs]
        if self.n_averaged == 0:  # on the CPU: no sync
            torch._foreach_copy_(averages, weights)
        else:
            torch._foreach_lerp_(averages, weights, 1 - self.decay)
        self.n_averaged += 1


def trained_rows(cfg: TrainerConfig, loader, task: str) -> torch.Tensor | None:
    """The word-embedding rows a step can look up (``UsedRows``): every id in the training rows, and the
    collator's padding. None (all rows) when ``trainer.trim_embeddings`` is off or the table is frozen
    (``trainer.freeze_word_embeddings``: nothing to train; ``project_word_embeddings``: every row moves), or where
    other ids reach the table: masked-LM (its decoder is the table; masking draws random ids) or a collator of
    another kind."""
    if not cfg.trim_embeddings or cfg.freeze_word_embeddings or cfg.project_word_embeddings or task == "mlm":
        return None
    if type(loader.collate_fn) is not Collator:
        return None
    dataset = loader.dataset
    if isinstance(dataset, datasets.Dataset):  # its arrow column (unselected rows too: a superset is as exact)
        import pyarrow.compute as pc

        ids = torch.from_numpy(pc.unique(pc.list_flatten(dataset.data.column("input_ids"))).to_numpy().astype(np.int64))
    else:
        ids = torch.tensor(sorted({int(i) for row in dataset for i in row["input_ids"]}), dtype=torch.long)
    return torch.cat([ids, torch.tensor([loader.collate_fn.pad_token_id])])


def make_optimizer(module: nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only (not biases or LayerNorm); fused: one kernel over all
    tensors instead of one per tensor — a quarter of a CPU KD step otherwise updates the word embeddings."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (decay if p.ndim > 1 and "LayerNorm" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=True)


@dataclass
class Loop:
    """The prepared objects of one training run; ``run(state)`` trains until ``total`` optimizer steps."""

    cfg: TrainerConfig
    accelerator: Accelerator
    module: nn.Module  # student + loss, prepared (DDP-wrapped with several processes)
    loss: nn.Module  # its loss, unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    total: int
    targets: TeacherTargets | None
    evaluation: Evaluation | None
    metrics_log: MetricsLog
    save: Checkpoints
    average: WeightAverage | None = None  # trainer.ema_decay's moving average of ``student``'s weights
    student: nn.Module | None = None
    nonfinite: NonFinite | None = None  # None: made on the accelerator's device
    nonfinite_seen: int = 0  # of nonfinite.total, already in LoopState.nonfinite

    def __post_init__(self) -> None:
        if self.nonfinite is None:
            self.nonfinite = NonFinite.on(self.accelerator.device)

    def step(self, batch: dict, state: LoopState) -> tuple[dict, torch.Tensor]:
        """Forward, backward and (at an accumulation boundary) an optimizer step; the loss parts and a
        0/1 tensor, 0 when the loss was not finite on some process (every process then skips the update)."""
        with self.accelerator.accumulate(self.module):
            teacher_out = self.targets(batch, state) if self.targets is not None else None
            loss, parts = self.module(batch, teacher_out)
            # 1 on every process when none had a non-finite loss (accelerate's reduce has max, not min); no host sync
            finite = 1 - self.accelerator.reduce((~torch.isfinite(loss.detach())).float(), "max")
            self.nonfinite.add(finite)
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and self.cfg.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
            if self.accelerator.scaler is None:
                inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper holds it
                inner.found_inf = self.nonfinite.pending  # read by fused AdamW's step: skipped when 1
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.accelerator.sync_gradients:
                self.nonfinite.pending.zero_()
                if self.average is not None:
                    self.average.update_parameters(self.student)
        return {"loss": loss.detach(), **parts}, finite

    def check_nonfinite(self, state: LoopState) -> None:
        """Read the device's non-finite count: warn, and stop after ``max_nonfinite`` in a row."""
        total, worst = self.nonfinite.read()
        new, state.nonfinite = total - self.nonfinite_seen, state.nonfinite + total - self.nonfinite_seen
        self.nonfinite_seen = total
        if new:
            log.warning("%d non-finite loss(es) by step %d: those updates were skipped (%d in a row at most)",
                        new, state.global_step, worst)
        if worst >= self.cfg.max_nonfinite:
            raise DistillError(f"{worst} non-finite losses in a row by step {state.global_step}; lower trainer.lr, "
                               "use mixed_precision=bf16 instead of fp16, or check the data for empty rows")

    def run(self, state: LoopState, bar: tqdm) -> None:
        cfg, stop, window = self.cfg, False, TrainWindow()
        rows = 1 if cfg.split_batches else self.accelerator.num_processes  # rows a batch holds, summed over processes
        with StopRequest() as stop_request:
            while state.global_step < self.total and not stop:
                self.loader.set_epoch(state.epoch)
                getattr(self.loader.collate_fn, "set_epoch", int)(state.epoch)  # masking draws per epoch too
                skip = state.batches_in_epoch  # a resumed epoch goes on where its checkpoint was
                for batch in self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader:
                    state.batches_in_epoch += 1
                    self.loss.set_progress(state.global_step, self.total)
                    parts, finite = self.step(batch, state)
                    window.add(parts, batch["input_ids"].shape[0] * rows, finite)
                    if not self.accelerator.sync_gradients:
                        continue
                    state.global_step += 1
                    bar.update(1)
                    stop = self.after_step(state, window, bar)
                    if stop or state.global_step >= self.total:
                        break
                    # Ctrl-C / SIGTERM: a checkpoint here, then one line (several processes agree at log steps:
                    # asking the others is a host sync)
                    single = self.accelerator.num_processes == 1
                    if (single or self.is_log_step(state)) and stop_request.agreed(self.accelerator):
                        self.interrupted(state)
                else:  # the loader ran out
                    if state.batches_in_epoch:
                        state.epoch, state.batches_in_epoch = state.epoch + 1, 0

    def is_log_step(self, state: LoopState) -> bool:
        return state.global_step % self.cfg.log_every == 0 or state.global_step == self.total

    def after_step(self, state: LoopState, window: TrainWindow, bar: tqdm) -> bool:
        """Log, evaluate, close the epoch, checkpoint — each when its setting says; True: stop early."""
        cfg, step, stop = self.cfg, state.global_step, False
        if self.is_log_step(state):
            self.check_nonfinite(state)
            values, rate = window.close()
            values.update({"train/lr": self.scheduler.get_last_lr()[0], "train/samples_per_s": rate,
                           "train/nonfinite": state.nonfinite})
            self.metrics_log.record(step, values)
            bar.set_postfix(loss=f"{values['train/loss']:.4f}", sps=f"{rate:.0f}")
        end_of_epoch = state.batches_in_epoch >= len(self.loader)
        if self.evaluation is not None and (step % cfg.eval_every == 0 if cfg.eval_every else end_of_epoch):
            stop = self.evaluation(state, self.metrics_log)
        if end_of_epoch:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        if step % cfg.save_every == 0 if cfg.save_every else end_of_epoch:
            self.check_nonfinite(state)
            self.save(state)
        return stop

    def interrupted(self, state: LoopState) -> None:
        self.check_nonfinite(state)
        if self.targets is not None:
            self.targets.flush()
        self.save(state)
        raise DistillError(f"interrupted at step {state.global_step}: checkpoint saved in "
                           f"{self.save.out / 'checkpoints'}; run the same command again to resume")


@dataclass
class TrainResult:
    student: nn.Module  # with the kept weights (the best validation step's when load_best_at_end)
    steps: int
    best: float | None  # best validation value of ``best_metric``, and its step
    best_step: int | None
    nonfinite: int
    teacher_calls: int
    num_processes: int
    history: list[dict]  # every logged row, as in metrics.jsonl
    final: dict | None  # final_metrics(student), main process only
    best_metric: str | None = None  # the validation metric ``best`` is (trainer.metric_for_best)


def train(cfg: TrainerConfig, student: nn.Module, loss: nn.Module, train_loader, eval_loader, out_dir: str,
          task: str, label_names=(), teacher: nn.Module | None = None, cache_key: str | None = None,
          run_config: dict | None = None, final_metrics: Callable[[nn.Module], dict] | None = None,
          embedding_source: torch.Tensor | None = None) -> TrainResult:
    """Train ``student`` on ``loss`` (distillation when ``teacher`` is given).

    ``final_metrics(student)`` (main process only), called on the kept weights at the end: its flat
    scalars go to the trackers under ``test/`` and the dict into the result as ``final``.
    ``embedding_source`` (V, H_t): the table ``trainer.project_word_embeddings`` projects (the teacher's)."""
    out = Path(out_dir)
    for folder in (out, out / "checkpoints") if (out / "checkpoints").is_dir() else (out,):  # before any step
        check_writable(folder, "make it writable, or train in another run dir")
    accelerator = make_accelerator(cfg, out, find_unused=any(True for _ in loss.parameters()))
    set_seed(cfg.seed)
    if loss.uses_teacher and teacher is None:
        raise DistillError("the losses read a teacher but none is configured; add teacher=... or use losses=hard_only")
    if cfg.project_word_embeddings and embedding_source is None:
        raise DistillError("trainer.project_word_embeddings=true projects the teacher's word embeddings, and this run "
                           "has no BERT teacher; add teacher=..., or set it to false")
    if cfg.project_word_embeddings and task == "mlm":
        raise DistillError("trainer.project_word_embeddings=true projects the teacher's word embeddings, and this run "
                           "trains a masked-LM, whose decoder is the table, or set it to false")
    # the frozen teacher's linears stay packed for oneDNN for the run (ops.packed_while_frozen says why only here)
    with frozen_word_embeddings(student, cfg.freeze_word_embeddings), \
            projected_word_embeddings(student, embedding_source if cfg.project_word_embeddings else None), \
            used_rows_only(student, trained_rows(cfg, train_loader, task)), packed_while_frozen(teacher):
        loop, state = run_loop(cfg, accelerator, student, loss, train_loader, eval_loader, out, task, label_names,
                               teacher, cache_key, run_config)
    return finish(loop, state, student, out, final_metrics)


def run_loop(cfg: TrainerConfig, accelerator: Accelerator, student: nn.Module, loss: nn.Module, train_loader,
             eval_loader, out: Path, task: str, label_names, teacher, cache_key, run_config) -> tuple[Loop, LoopState]:
    """Prepare, resume, train to the last step, evaluate and checkpoint it: the loop's part of ``train``."""
    best_metric = metric_for_best(cfg.metric_for_best, task)  # a wrong name stops here, before any step
    module = StudentWithLoss(student, loss)
    optimizer = make_optimizer(module, cfg)
    accum = accelerator.gradient_accumulation_steps
    per_epoch = math.ceil(len(train_loader) / (accelerator.num_processes if not cfg.split_batches else 1) / accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
    module, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        module, optimizer, train_loader, eval_loader, scheduler)
    plain = accelerator.unwrap_model(module)
    log.info("device %s, %d process(es), mixed precision %s, batch %d per device, %d global x %d accumulation "
             "(distributed: %s; CPU kernels %s, %d threads: both change the last digits a seed gives)",
             accelerator.device, accelerator.num_processes, accelerator.mixed_precision,
             train_loader.total_batch_size // accelerator.num_processes, train_loader.total_batch_size, accum,
             accelerator.distributed_type.value, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
    targets = teacher_targets(cfg, accelerator, plain.loss, teacher, train_loader.dataset, task, cache_key, out)
    settings = flat_scalars(run_config or asdict(cfg))  # checked on resume, given to the trackers
    if accelerator.is_main_process and cfg.log_with:  # trackers take flat scalars as hyper-parameters
        wandb = {"mode": cfg.wandb_mode, "dir": str(out), "name": cfg.run_name or out.name, "tags": list(cfg.tags)}
        accelerator.init_trackers(cfg.project, config=settings, init_kwargs={"wandb": wandb})
    average = WeightAverage(plain.student, cfg.ema_decay) if cfg.ema_decay is not None else None
    saved_too = {"weight_average": average} if average is not None else {}
    state = LoopState.restored(resume(accelerator, out, cfg.resume, settings, saved_too))
    evaluation = None if eval_loader is None else Evaluation(
        accelerator, plain.student if average is None else average.module, eval_loader, task, label_names,
        out / "best", cfg.early_stopping_patience, best_metric)
    loop = Loop(cfg, accelerator, module, plain.loss, optimizer, scheduler, train_loader, total, targets, evaluation,
                MetricsLog(accelerator, out / "metrics.jsonl", state.global_step),
                Checkpoints(accelerator, out, cfg.keep_last, settings, saved_too), average, plain.student)
    module.train()
    bar = tqdm(total=total, initial=state.global_step, disable=not accelerator.is_local_main_process,
               desc="distill" if teacher is not None else "fine-tune")
    loop.run(state, bar)
    bar.close()
    if loop.targets is not None:
        loop.targets.flush()
    if loop.evaluation is not None and state.eval_step != state.global_step:
        loop.evaluation(state, loop.metrics_log)
    loop.check_nonfinite(state)
    loop.save(state)
    if average is not None:  # the run keeps the average (a longer run resumed from the checkpoint trains on from
        plain.student.load_state_dict(average.module.state_dict())  # the weights it saved, not from these)
    return loop, state


def finish(loop: Loop, state: LoopState, student: nn.Module, out: Path, final_metrics) -> TrainResult:
    """The best weights back in ``student``, test metrics to the trackers."""
    accelerator = loop.accelerator
    if loop.cfg.load_best_at_end and (out / "best").is_dir():
        from distill.models.hub import load_state_dict, load_weights
        load_weights(student, load_state_dict(out / "best"), str(out / "best"))
    final = final_metrics(student) if final_metrics is not None and accelerator.is_main_process else None
    if final:  # under test/, or the split the metrics name (raw text: validation)
        split = final.get("split", "test")
        accelerator.log({f"{split}/{k}": v for k, v in flat_scalars(final).items() if isinstance(v, int | float)},
                        step=state.global_step)
    accelerator.end_training()
    return TrainResult(student, state.global_step, state.best, state.best_step, state.nonfinite, state.teacher_calls,
                       accelerator.num_processes, loop.metrics_log.history, final,
                       loop.evaluation.metric if loop.evaluation is not None else None)
