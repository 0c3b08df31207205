"""The loss protocol (:class:`DistillLoss`) and the weighted sum a run optimises (:class:`CompositeLoss`).

Life of a loss, as the engine drives it:

    loss = hydra.utils.instantiate(cfg.losses)          # CompositeLoss(logits=LogitsKL(...), ...)
    loss.setup(student.config, teacher.config)          # layer maps, projections: BEFORE the optimizer
    print(loss.dry_run_table(student.config, teacher.config))
    loss.to(device)                                     # projections are parameters of the loss
    for step ...:
        loss.set_progress(step, total_steps)            # weights and temperature are f(step) only
        total, parts = loss(student_out, teacher_out, batch)

Projections live inside the losses: the optimizer sees them (``loss.parameters()``), and an exported
student never carries them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from transformers import BertConfig

from distill.errors import DistillError
from distill.layer_map import format_table
from distill.losses.schedules import Constant, Schedule, as_schedule, progress_of
from distill.outputs import ModelOutputs

FIELDS = frozenset({"logits", "nsp_logits", "hidden_states", "attentions", "qkv"})
Row = tuple[str, str, str, str]  # student, teacher, shapes, projection


class DistillLoss(nn.Module):
    """One loss term. Subclasses set ``needs`` and implement ``forward`` (and ``setup`` if needed).

    ``weight`` (number or :class:`~distill.losses.schedules.Schedule`) is applied by
    :class:`CompositeLoss`; ``forward`` returns the UNweighted scalar. A constant weight of 0 turns the
    term off entirely: not computed, not in ``needs``, its labels or teacher outputs not required.
    """

    needs: frozenset[str] = frozenset()
    uses_teacher: bool = True

    def __init__(self, weight: float | Schedule = 1.0):
        super().__init__()
        self.weight = as_schedule(weight, f"{type(self).__name__}.weight")
        if isinstance(self.weight, Constant) and self.weight.value < 0:
            raise DistillError(f"{type(self).__name__}.weight={self.weight.value} is negative; use a weight >= 0")
        self.progress = 0.0  # plain float, not a buffer: a resumed run recomputes it from the step

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def is_off(self) -> bool:
        """True for a constant weight of 0."""
        return isinstance(self.weight, Constant) and self.weight.value == 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def current_weight(self) -> float:
        return self.weight(self.progress)

    def extras(self) -> dict[str, float]:
        """Scheduled values worth logging (e.g. the temperature)."""
        return {}

    def check_teacher(self, teacher_config: BertConfig | None) -> None:
        if self.uses_teacher and teacher_config is None:
            raise DistillError(
                f"{self.name} learns from a teacher, but no teacher is configured; "
                f"configure a teacher or use losses=hard_only"
            )

    def setup(self, student_config: BertConfig, teacher_config: BertConfig | None) -> None:
        """Resolve layer maps, create projections, validate the pair of configs. Default: check the teacher."""
        self.check_teacher(teacher_config)

    def describe(self, student_config: BertConfig, teacher_config: BertConfig | None) -> list[Row]:
        """Rows (student, teacher, shapes, projection) for the dry-run table."""
        return [("-", "-", "-", "-")]

    def teacher_map_layers(self) -> frozenset[int] | None:
        """The teacher layers (1-based) whose attention maps this term reads; None: all of them."""
        return None

    def teacher_layers(self, field: str) -> frozenset[int] | None:
        """The teacher layers whose ``field`` this term reads (hidden_states: 0 = embeddings; attentions and
        qkv: 1-based) — what a teacher cache keeps; None: all of them."""
        return self.teacher_map_layers() if field == "attentions" else None

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError


class CompositeLoss(nn.Module):
    """total = Σ_name weight_name(progress) · term_name(student, teacher, batch).

    Built from a Hydra node whose children are the terms::

        _target_: distill.losses.base.CompositeLoss
        logits: {_target_: distill.losses.logits.LogitsKL, temperature: 2.0, weight: 1.0}
        hard: {_target_: distill.losses.hard.HardCrossEntropy, weight: 0.5}

    ``forward`` returns (total, parts): parts[name] is the weighted term (detached) for logging,
    plus each term's extras (``temperature``; prefixed ``name.`` if two terms report the same key)
    and ``name.weight`` for scheduled weights.
    """

    def __init__(self, **terms: DistillLoss):
        super().__init__()
        if not terms:
            raise DistillError(
                "the losses node has no terms; add one, e.g. logits: {_target_: distill.losses.logits.LogitsKL}"
            )
        for name, term in terms.items():
            if not isinstance(term, DistillLoss):
                raise DistillError(
                    f"losses.{name} is a {type(term).__name__}, not a loss term; give it a _target_ such as "
                    f"distill.losses.logits.LogitsKL"
                )
        self.terms = nn.ModuleDict(terms)

    def active(self) -> dict[str, DistillLoss]:
        """The terms that are not switched off by a constant weight of 0."""
        return {name: term for name, term in self.terms.items() if not term.is_off}

    @property
    def needs(self) -> frozenset[str]:
        """Union of what the active terms read from ModelOutputs; models compute only these."""
        return frozenset().union(*(term.needs for term in self.active().values()))

    @property
    def uses_teacher(self) -> bool:
        return any(term.uses_teacher for term in self.active().values())

    @property
    def teacher_needs(self) -> frozenset[str]:
        """What the active terms read from the teacher's outputs (a teacher cache holds only these)."""
        return frozenset().union(*(term.needs for term in self.active().values() if term.uses_teacher))

    def teacher_map_layers(self) -> frozenset[int] | None:
        """Union of the active terms' teacher map layers (None: every layer, or no term reads maps)."""
        wanted = [term.teacher_map_layers() for term in self.active().values() if "attentions" in term.needs]
        if not wanted or any(layers is None for layers in wanted):
            return None
        return frozenset().union(*wanted)

    def teacher_layers(self, field: str) -> frozenset[int] | None:
        """Union of the active terms' teacher layers for ``field`` (empty: no term reads it; None: all)."""
        wanted = [term.teacher_layers(field) for term in self.active().values() if field in term.needs]
        return None if any(layers is None for layers in wanted) else frozenset().union(*wanted)

    def setup(self, student_config: BertConfig, teacher_config: BertConfig | None) -> None:
        if not self.active():
            raise DistillError("every loss term has weight 0; give at least one term a positive weight")
        for term in self.active().values():
            term.setup(student_config, teacher_config)

    def set_progress(self, step: int, total_steps: int) -> None:
        progress = progress_of(step, total_steps)
        for term in self.terms.values():
            term.set_progress(progress)

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        total, parts, extras = None, {}, {}
        for name, term in self.active().items():
            weight = term.current_weight()
            # computed even at a scheduled weight of 0: its projection must still get a (zero)
            # gradient, or multi-process training would find an unused parameter
            part = weight * term(student, teacher if term.uses_teacher else None, batch)
            total = part if total is None else total + part
            parts[name] = part.detach()
            if not isinstance(term.weight, Constant):
                parts[f"{name}.weight"] = torch.tensor(weight, device=part.device)
            for key, value in term.extras().items():
                extras.setdefault(key, []).append((name, value))
        for key, values in extras.items():
            for name, value in values:
                parts[key if len(values) == 1 else f"{name}.{key}"] = torch.tensor(value, device=total.device)
        return total, parts

    def dry_run_table(self, student_config: BertConfig, teacher_config: BertConfig | None) -> str:
        """Every active term's layer pairs, shapes and projections, as a run prints before training."""
        rows = []
        for name, term in self.active().items():
            term.check_teacher(teacher_config)
            label = f"{name} (w={term.weight})"
            rows += [(label, *row) for row in term.describe(student_config, teacher_config)]
        return format_table(rows)
