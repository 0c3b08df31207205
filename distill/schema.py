"""Structured configs registered in Hydra's ConfigStore: OmegaConf checks their types while composing.

    trainer: schema  (conf/trainer/default.yaml: defaults [schema, _self_])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from distill.errors import DistillError


@dataclass
class TrainerConfig:
    """Every knob of the loop: the ``trainer`` node's schema (conf/trainer/default.yaml starts from it, so
    Hydra type-checks overrides while composing); ``OmegaConf.to_object`` builds it, checking values."""

    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "linear"  # any transformers.get_scheduler name
    grad_accum: int | None = None  # None: the launcher's (accelerate launch --gradient_accumulation_steps), else 1
    max_grad_norm: float | None = 1.0
    # train only the word-embedding rows the training rows use (the rest take AdamW's decay in closed form):
    # the same weights within float rounding, fewer rows to update each step (distill.models.used_rows)
    trim_embeddings: bool = True
    # the student's word embeddings keep their starting values (e.g. cut from the teacher): the layers learn on the
    # rows as every word has them, an unseen word's row included, not on rows only the training words moved
    freeze_word_embeddings: bool = False
    # the student's word embeddings are the teacher's table, frozen, times a trained (H_t, H_s) projection started
    # where the student's table is: every row moves with the layers, through all the teacher knows of its word
    # (distill.models.projected_table); folded back into a plain table after training
    project_word_embeddings: bool = False
    # no | bf16 | fp16 | auto (bf16 where this machine runs it natively, else no); None: the launcher's
    mixed_precision: str | None = None
    seed: int = 0
    split_batches: bool = False  # True: the loader's batch is the global batch, split over processes
    eval_every: int | None = None  # steps; None = at the end of every epoch
    save_every: int | None = None  # steps; None = at the end of every epoch
    keep_last: int = 2
    early_stopping_patience: int | None = None  # evaluations without improvement
    # the validation metric for the best checkpoint, early stopping and the sweep leaderboard: accuracy |
    # macro_f1 (sequence), entity_f1 | token_accuracy (token); None: the task's main one (accuracy, entity_f1)
    metric_for_best: str | None = None
    max_nonfinite: int = 5  # non-finite losses in a row before stopping
    log_every: int = 10
    teacher_cache: bool = True
    cache_dir: str | None = None  # default: <run dir>/teacher_cache
    cache_max_gb: float = 8.0  # a teacher cache larger than this (hidden states, maps) is not made: online teacher
    resume: str | None = "auto"
    load_best_at_end: bool = True
    # an exponential moving average of the weights, updated after every optimizer step (torch's AveragedModel):
    # validation scores it and the run keeps it, not the last step's weights; 0.999 averages about 1,000 steps
    ema_decay: float | None = None
    log_with: str | None = None  # wandb | tensorboard | None
    project: str = "distill"
    wandb_mode: str = "offline"
    run_name: str | None = None  # the tracker's run name (wandb); None: the run dir's name
    tags: list[str] = field(default_factory=list)  # wandb tags

    def __post_init__(self) -> None:
        """Impossible settings stop here, with the key to change, before anything is built."""
        from transformers import SchedulerType  # here: composing a config must not load transformers

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
            (number("cache_max_gb") >= 0, f"trainer.cache_max_gb={self.cache_max_gb} must be >= 0"),
            (self.grad_accum is None or (isinstance(self.grad_accum, int) and self.grad_accum >= 1),
             f"trainer.grad_accum={self.grad_accum!r} must be a positive integer (or null: the launcher's)"),
            (self.mixed_precision in (None, "no", "bf16", "fp16", "auto"),
             f"trainer.mixed_precision={self.mixed_precision!r}: use no, bf16, fp16, auto or null (the launcher's)"),
            (self.scheduler in {t.value for t in SchedulerType},
             f"trainer.scheduler={self.scheduler!r}: use one of {', '.join(t.value for t in SchedulerType)}"),
            (not (self.freeze_word_embeddings and self.project_word_embeddings),
             "trainer.freeze_word_embeddings and trainer.project_word_embeddings are both true: set one (projecting "
             "keeps the teacher's table frozen and trains a projection of it)"),
            (self.ema_decay is None or 0 < number("ema_decay") < 1,
             f"trainer.ema_decay={self.ema_decay} must be in (0, 1), e.g. 0.999 (or null: no average)"),
            (isinstance(self.max_nonfinite, int) and self.max_nonfinite >= 1,
             f"trainer.max_nonfinite={self.max_nonfinite!r} must be a positive integer"),
        ]
        for ok, message in checks:
            if not ok:
                raise DistillError(message)


ConfigStore.instance().store(group="trainer", name="schema", node=TrainerConfig)


@dataclass
class TargetConfig:
    """recipe=auto's ``target`` node: what the shipped student must meet (any subset; none: the most accurate)."""

    max_latency_ms: float | None = None  # p50 at batch 1 on this CPU
    max_params: float | None = None  # before vocabulary trimming (7e5 or 700000)
    min_retention: float | None = None  # share of the teacher's test metric, e.g. 0.99

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_params", "min_retention"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise DistillError(f"target.{name}={value!r} must be a positive number (or null)")
        if self.min_retention is not None and self.min_retention > 1.5:
            raise DistillError(f"target.min_retention={self.min_retention} is a share of the teacher's metric: "
                             "e.g. 0.99 for 99%")
