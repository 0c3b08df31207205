"""The distillation loop, and nothing else: Accelerate does devices, DDP, AMP and checkpoints.

    batch ─┬─ teacher (frozen, eval, no_grad; or the logits cache) ──┐
           └─ student ── ModelOutputs ──────────────── CompositeLoss ─┴→ backward → step

Fine-tuning is the same loop with a hard-label-only loss and ``teacher=None``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from distill.checkpoint import resume, save_checkpoint
from distill.data.tokenize import lengths
from distill.errors import DistillError
from distill.evaluate import Predictions, main_metric, metrics
from distill.interrupt import StopRequest
from distill.launch import cpu_only
from distill.outputs import ModelOutputs
from distill.teacher_cache import TeacherCache

log = logging.getLogger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TrainerConfig:
    """Every knob of the loop; a Hydra ``trainer`` node instantiates this dataclass."""

    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "linear"  # any transformers.get_scheduler name
    grad_accum: int | None = None  # None: the launcher's (accelerate launch --gradient_accumulation_steps), else 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str | None = None  # no | bf16 | fp16; None: the launcher's (accelerate launch / config)
    seed: int = 0
    split_batches: bool = False  # True: the loader's batch is the global batch, split over processes
    eval_every: int | None = None  # steps; None = at the end of every epoch
    save_every: int | None = None  # steps; None = at the end of every epoch
    keep_last: int = 2
    early_stopping_patience: int | None = None  # evaluations without improvement
    max_nonfinite: int = 5  # non-finite losses in a row before stopping
    log_every: int = 10
    teacher_cache: bool = True
    cache_dir: str | None = None  # default: <run dir>/teacher_cache
    resume: str | None = "auto"
    load_best_at_end: bool = True
    log_with: str | None = None  # wandb | tensorboard | None
    project: str = "distill"
    wandb_mode: str = "offline"
    run_name: str | None = None  # the tracker's run name (wandb); None: the run dir's name
    tags: list[str] = field(default_factory=list)  # wandb tags

    def __post_init__(self) -> None:
        """Impossible settings stop here, with the key to change, before anything is built."""
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise DistillError(f"trainer.{name}={value!r} must be a finite number")
            return value

        checks = [
            (self.max_steps is not None or number("epochs") > 0, f"trainer.epochs={self.epochs} must be > 0"),
            (self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
             f"trainer.max_steps={self.max_steps!r} must be a positive number of steps (or null for epochs)"),
            (number("lr") >= 0, f"trainer.lr={self.lr} must be >= 0"),
            (0 <= number("warmup_ratio") <= 1, f"trainer.warmup_ratio={self.warmup_ratio} must be in [0, 1]"),
            (number("weight_decay") >= 0, f"trainer.weight_decay={self.weight_decay} must be >= 0"),
            (self.grad_accum is None or (isinstance(self.grad_accum, int) and self.grad_accum >= 1),
             f"trainer.grad_accum={self.grad_accum!r} must be a positive integer (or null: the launcher's)"),
            (self.mixed_precision in (None, "no", "bf16", "fp16"),
             f"trainer.mixed_precision={self.mixed_precision!r}: use no, bf16, fp16 or null (the launcher's)"),
            (self.scheduler in {t.value for t in SchedulerType},
             f"trainer.scheduler={self.scheduler!r}: use one of {', '.join(t.value for t in SchedulerType)}"),
            (isinstance(self.max_nonfinite, int) and self.max_nonfinite >= 1,
             f"trainer.max_nonfinite={self.max_nonfinite!r} must be a positive integer"),
        ]
        for ok, message in checks:
            if not ok:
                raise DistillError(message)


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
    return Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_plugin=accumulation, cpu=cpu_only(),
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
        out = self.student(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, **flags(self.loss.needs))
        return self.loss(out, teacher_out, batch)


def evaluate(accelerator: Accelerator, model: nn.Module, loader, task: str, label_names) -> dict:
    """Main-metric evaluation over a (prepared) loader; padding duplicates dropped by gather."""
    model.eval()
    preds, labels = [], []
    for batch in loader:
        with torch.no_grad(), accelerator.autocast():
            logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits.float()
        p, y = logits.argmax(-1), batch["labels"]
        if task == "token":  # (B, T): equal T on every process before gathering
            p = accelerator.pad_across_processes(p, dim=1, pad_index=-100)
            y = accelerator.pad_across_processes(y, dim=1, pad_index=-100)
        p, y = accelerator.gather_for_metrics((p, y))
        preds += list(p.cpu().numpy()) if task == "token" else p.cpu().tolist()
        labels += list(y.cpu().numpy()) if task == "token" else y.cpu().tolist()
    model.train()
    if task == "token":  # one unit per labelled word; the row it came from is its bootstrap group
        keep = [np.asarray(y) != -100 for y in labels]
        pred = Predictions(task, np.concatenate([np.asarray(y)[k] for y, k in zip(labels, keep)]),
                           np.concatenate([np.asarray(p)[k] for p, k in zip(preds, keep)]),
                           np.concatenate([np.full(k.sum(), i) for i, k in enumerate(keep)]))
    else:
        pred = Predictions(task, np.asarray(labels), np.asarray(preds), np.arange(len(labels)))
    return metrics(pred, label_names)


def train(cfg: TrainerConfig, student: nn.Module, loss: nn.Module, train_loader, eval_loader, out_dir: str,
          task: str, label_names=(), teacher: nn.Module | None = None, cache_key: str | None = None,
          run_config: dict | None = None, final_metrics: Callable[[nn.Module], dict] | None = None) -> dict:
    """Train ``student`` on ``loss`` (distillation when ``teacher`` is given). Returns a summary.

    ``final_metrics(student)`` (main process only), called on the kept weights at the end: its flat
    scalars go to the trackers under ``test/`` and the dict into the summary as ``final``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(cfg, out, find_unused=any(True for _ in loss.parameters()))
    set_seed(cfg.seed)
    if loss.uses_teacher and teacher is None:
        raise DistillError("the losses read a teacher but none is configured; add teacher=... or use losses=hard_only")
    module = StudentWithLoss(student, loss)
    decay, no_decay = [], []  # weight decay on matrices only, not on biases or LayerNorm
    for name, p in module.named_parameters():
        (decay if p.ndim > 1 and "LayerNorm" not in name else no_decay).append(p)
    # fused: one kernel over all tensors instead of one per tensor — a quarter of a CPU KD step
    # otherwise goes to updating the word embeddings
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=True)
    accum = accelerator.gradient_accumulation_steps
    per_epoch = math.ceil(len(train_loader) / (accelerator.num_processes if not cfg.split_batches else 1) / accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
    module, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        module, optimizer, train_loader, eval_loader, scheduler)
    plain = accelerator.unwrap_model(module)
    log.info("device %s, %d process(es), mixed precision %s, batch %d per device, %d global x %d accumulation "
             "(distributed: %s)", accelerator.device, accelerator.num_processes, accelerator.mixed_precision,
             train_loader.total_batch_size // accelerator.num_processes, train_loader.total_batch_size, accum,
             accelerator.distributed_type.value)
    if teacher is not None:  # outside prepare: never wrapped by DDP, never in the optimizer
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    map_layers = getattr(plain.loss, "teacher_map_layers", None)  # optional in a hand-made loss module
    teacher_flags = flags(plain.loss.needs, map_layers() if map_layers else None)  # only the maps read
    cache = None
    if teacher is not None and cfg.teacher_cache and cache_key and plain.loss.needs <= {"logits"}:
        n, c = len(train_loader.dataset), teacher.config.num_labels
        # token rows: as long as the longest tokenized row, not max_position_embeddings
        shape = (c,) if task == "sequence" else (max(lengths(train_loader.dataset)), c)
        with accelerator.main_process_first():
            cache = TeacherCache(cfg.cache_dir or out / "teacher_cache", cache_key, n, shape)
    settings = flat_scalars(run_config or asdict(cfg))  # checked on resume, given to the trackers
    if accelerator.is_main_process and cfg.log_with:  # trackers take flat scalars as hyper-parameters
        wandb = {"mode": cfg.wandb_mode, "dir": str(out), "name": cfg.run_name or out.name, "tags": list(cfg.tags)}
        accelerator.init_trackers(cfg.project, config=settings,
                                  init_kwargs={"wandb": wandb})
    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "best": None, "best_step": None,
             "bad_evals": 0, "nonfinite": 0, "teacher_calls": 0}
    state.update(resume(accelerator, out, cfg.resume, settings) or {})
    history, in_a_row, stop = [], 0, False
    log_file = out / "metrics.jsonl"
    if accelerator.is_main_process:
        trim_log(log_file, state["global_step"])

    def teacher_outputs(batch):
        if not plain.loss.uses_teacher:
            return None
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        if cache is not None:
            hit = cache.get(batch["idx"], batch["input_ids"].shape[1] if task == "token" else None)
            if hit is not None:
                return ModelOutputs(logits=hit.to(accelerator.device), attention_mask=batch["attention_mask"])
        state["teacher_calls"] += 1
        with torch.no_grad(), accelerator.autocast():
            t_out = teacher(**inputs, **teacher_flags)
        if cache is not None:
            cache.put(batch["idx"], t_out.logits)
            # learn from what the cache hands back later (fp16): the same targets whichever epoch or resume
            t_out = replace(t_out, logits=t_out.logits.half().float())
        return t_out

    def evaluate_and_track():
        if eval_loader is None:
            return False
        state["eval_step"] = state["global_step"]
        metrics = evaluate(accelerator, plain.student, eval_loader, task, label_names)
        key = main_metric(task)
        if state["best"] is None or metrics[key] > state["best"]:
            state.update(best=metrics[key], best_step=state["global_step"], bad_evals=0)
            if accelerator.is_main_process:
                from distill.models.hub import save_pretrained
                save_pretrained(plain.student, out / "best")
        else:
            state["bad_evals"] += 1
        record({f"eval/{k}": v for k, v in metrics.items()})
        return cfg.early_stopping_patience is not None and state["bad_evals"] >= cfg.early_stopping_patience

    def record(values: dict):
        values = {"step": state["global_step"], **values}
        history.append(values)
        accelerator.log(values, step=state["global_step"])
        if accelerator.is_main_process:
            with open(log_file, "a") as f:
                f.write(json.dumps(values) + "\n")

    def checkpoint():
        if state.get("saved_step") != state["global_step"]:
            state["saved_step"] = state["global_step"]
            save_checkpoint(accelerator, out, state, cfg.keep_last, settings)

    module.train()
    bar = tqdm(total=total, initial=state["global_step"], disable=not accelerator.is_local_main_process,
               desc="distill" if teacher is not None else "fine-tune")
    sums, count, t0, seen = {}, 0, time.perf_counter(), 0
    with StopRequest() as stop_request:
        while state["global_step"] < total and not stop:
            train_loader.set_epoch(state["epoch"])
            loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"]) \
                if state["batches_in_epoch"] else train_loader
            for batch in loader:
                state["batches_in_epoch"] += 1
                plain.loss.set_progress(state["global_step"], total)
                with accelerator.accumulate(module):
                    teacher_out = teacher_outputs(batch)
                    loss_value, parts = module(batch, teacher_out)
                    finite = accelerator.reduce(torch.isfinite(loss_value.detach()).float(), "min")
                    if finite.item() == 0:  # every process skips the same step
                        state["nonfinite"] += 1
                        in_a_row += 1
                        log.warning("non-finite loss at step %d skipped (%d in a row)", state["global_step"], in_a_row)
                        optimizer.zero_grad(set_to_none=True)
                        if in_a_row >= cfg.max_nonfinite:
                            raise DistillError(
                                f"{in_a_row} non-finite losses in a row at step {state['global_step']}; lower "
                                "trainer.lr, use mixed_precision=bf16 instead of fp16, or check the data for empty "
                                "rows")
                        continue
                    in_a_row = 0
                    accelerator.backward(loss_value)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, value in {"loss": loss_value.detach(), **parts}.items():
                    sums[name] = sums.get(name, 0.0) + float(value)
                count += 1
                seen += batch["input_ids"].shape[0] * (1 if cfg.split_batches else accelerator.num_processes)
                if not accelerator.sync_gradients:
                    continue
                state["global_step"] += 1
                bar.update(1)
                step = state["global_step"]
                if step % cfg.log_every == 0 or step == total:
                    rate = seen / (time.perf_counter() - t0)
                    values = {f"train/{k}": v / count for k, v in sums.items()}
                    values.update({"train/lr": scheduler.get_last_lr()[0], "train/samples_per_s": rate,
                                   "train/nonfinite": state["nonfinite"]})
                    record(values)
                    bar.set_postfix(loss=f"{values['train/loss']:.4f}", sps=f"{rate:.0f}")
                    sums, count, t0, seen = {}, 0, time.perf_counter(), 0
                end_of_epoch = state["batches_in_epoch"] >= len(train_loader)
                if (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch):
                    stop = evaluate_and_track()
                if end_of_epoch:
                    state.update(epoch=state["epoch"] + 1, batches_in_epoch=0)
                if (cfg.save_every and step % cfg.save_every == 0) or (not cfg.save_every and end_of_epoch):
                    checkpoint()
                if stop or step >= total:
                    break
                if stop_request.agreed(accelerator):  # Ctrl-C / SIGTERM: a checkpoint at this step, then one line
                    if cache is not None:
                        cache.flush()
                    checkpoint()
                    raise DistillError(f"interrupted at step {step}: checkpoint saved in {out / 'checkpoints'}; "
                                       "run the same command again to resume")
            else:  # the loader ran out (possible when non-finite steps were skipped)
                if state["batches_in_epoch"]:
                    state.update(epoch=state["epoch"] + 1, batches_in_epoch=0)
    bar.close()
    if cache is not None:
        cache.flush()
    if state.get("eval_step") != state["global_step"]:
        evaluate_and_track()
    checkpoint()
    if cfg.load_best_at_end and (out / "best").is_dir():
        from distill.models.hub import load_state_dict, load_weights
        load_weights(plain.student, load_state_dict(out / "best"), str(out / "best"))
    final = final_metrics(plain.student) if final_metrics is not None and accelerator.is_main_process else None
    if final:
        accelerator.log({f"test/{k}": v for k, v in flat_scalars(final).items() if isinstance(v, int | float)},
                        step=state["global_step"])
    accelerator.end_training()
    return {"final": final, "steps": state["global_step"], "best": state["best"], "best_step": state["best_step"],
            "nonfinite": state["nonfinite"], "teacher_calls": state["teacher_calls"],
            "num_processes": accelerator.num_processes, "history": history, "student": plain.student}
