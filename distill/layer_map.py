"""Which student layer learns from which teacher layer, and the table a run prints before training.

One numbering for every loss: layer 0 is the embeddings output, layer i (1..L) is the output of
transformer layer i. So ``hidden_states[i]`` is layer i (L+1 entries), while ``attentions[i - 1]``
and ``qkv[i - 1]`` are layer i (L entries, no layer 0). A pair ``[2, 6]`` means the same thing in
a hidden-state loss and in an attention loss.

The vocabulary a YAML ``layer_map`` accepts:
  * ``uniform`` — TinyBERT's g(i) = i · n_teacher / n_student, for i = 1..n_student
    (plus 0 ↔ 0 for losses that read the embeddings);
  * ``last`` — the last student layer ↔ the last teacher layer;
  * ``source`` — each layer of a student copied or pruned from teacher layers ↔ the layer it came from
    (``student=from_teacher`` or ``pruned_*``: layers [0, 2, 3, 5] give (1, 1), (2, 3), (3, 4), (4, 6));
  * an explicit list of ``[student_layer, teacher_layer]`` pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distill.errors import DistillError
from distill.tables import render

# the teacher layers (0-based) a student config was copied or pruned from; its builders set it
SOURCE_LAYERS = "distill_source_layers"


def source_layers(config) -> list[int] | None:
    """The teacher layers a student was built from, or None for a student of its own."""
    layers = getattr(config, SOURCE_LAYERS, None)
    return None if layers is None else [int(i) for i in layers]


@dataclass(frozen=True)
class LayerMap:
    """pairs: ((student_layer, teacher_layer), ...), 0 = embeddings, in the order given."""

    pairs: tuple[tuple[int, int], ...]

    @classmethod
    def uniform(cls, n_student: int, n_teacher: int, embeddings: bool = True) -> LayerMap:
        """TinyBERT-style: student layer i ↔ teacher layer round(i · n_teacher / n_student).

        4 → 12 layers gives (0, 0), (1, 3), (2, 6), (3, 9), (4, 12); without embeddings the first
        pair is dropped. The last layers always meet.
        """
        # integer round-half-up of i·n_t/n_s; at least 1 so a deeper student never maps onto embeddings
        pairs = [(i, max(1, (2 * i * n_teacher + n_student) // (2 * n_student))) for i in range(1, n_student + 1)]
        return cls(((0, 0), *pairs) if embeddings else tuple(pairs))

    @classmethod
    def last(cls, n_student: int, n_teacher: int) -> LayerMap:
        """Only the final layers: ((n_student, n_teacher),)."""
        return cls(((n_student, n_teacher),))

    @classmethod
    def source(cls, layers: Sequence[int], embeddings: bool = True) -> LayerMap:
        """Student layer i ↔ the teacher layer it was built from: [0, 2, 3, 5] → (1, 1), (2, 3), (3, 4), (4, 6),
        plus (0, 0) with ``embeddings`` (they were copied or pruned from the teacher's too)."""
        pairs = tuple((i, int(t) + 1) for i, t in enumerate(layers, start=1))
        return cls(((0, 0), *pairs) if embeddings else pairs)

    @classmethod
    def resolve(
        cls,
        spec: str | Sequence[Sequence[int]] | LayerMap,
        n_student: int,
        n_teacher: int,
        *,
        embeddings: bool,
        allow_embeddings: bool | None = None,
        source: Sequence[int] | None = None,
    ) -> LayerMap:
        """A YAML ``layer_map`` value → validated pairs.

        ``embeddings``: whether ``uniform`` and ``source`` include 0 ↔ 0; ``allow_embeddings`` (default: same):
        whether layer 0 is valid at all (False for attention maps and Q/K/V, which have no layer 0);
        ``source``: the student's teacher layers (``source_layers(student_config)``), for ``source``.
        """
        allow = embeddings if allow_embeddings is None else allow_embeddings
        if isinstance(spec, LayerMap):
            layer_map = spec
        elif spec == "uniform":
            layer_map = cls.uniform(n_student, n_teacher, embeddings=embeddings)
        elif spec == "last":
            layer_map = cls.last(n_student, n_teacher)
        elif spec == "source" and source is None:
            raise DistillError(
                "layer_map: source pairs each student layer with the teacher layer it was built from, and this "
                "student was not built from teacher layers (student=from_teacher or pruned_* are); use uniform, "
                "last or [student_layer, teacher_layer] pairs"
            )
        elif spec == "source":
            layer_map = cls.source(source, embeddings=embeddings)
        elif isinstance(spec, str):
            raise DistillError(
                f"layer_map={spec!r} is not understood; use 'uniform', 'last', 'source' or a list of "
                f"[student_layer, teacher_layer] pairs"
            )
        else:
            layer_map = cls(_pairs(spec))
        return layer_map.validate(n_student, n_teacher, allow_embeddings=allow)

    def validate(self, n_student: int, n_teacher: int, allow_embeddings: bool = True) -> LayerMap:
        """Every pair within range, at least one pair; returns self."""
        if not self.pairs:
            raise DistillError("layer_map is empty; give at least one [student_layer, teacher_layer] pair")
        low = 0 if allow_embeddings else 1
        meaning = "0 = embeddings" if allow_embeddings else "1 = first transformer layer, no embeddings here"
        for s, t in self.pairs:
            if not (low <= s <= n_student and low <= t <= n_teacher):
                raise DistillError(
                    f"layer_map pair [{s}, {t}] is out of range: student layers are {low}..{n_student}, "
                    f"teacher layers {low}..{n_teacher} ({meaning}); fix the pair or use layer_map: uniform"
                )
        return self

    def teacher_layers(self) -> tuple[int, ...]:
        """The distinct teacher layers read, sorted (what a teacher-output cache would keep)."""
        return tuple(sorted({t for _, t in self.pairs}))


def check_depth(loss: str, layer_map: LayerMap, n_student: int, n_teacher: int) -> None:
    """The outputs a loss receives are as deep as the configs it was set up with."""
    deepest_s = max(s for s, _ in layer_map.pairs)
    deepest_t = max(t for _, t in layer_map.pairs)
    if deepest_s > n_student or deepest_t > n_teacher:
        raise DistillError(
            f"{loss} maps student layer {deepest_s} and teacher layer {deepest_t}, but the outputs have "
            f"{n_student} and {n_teacher} layers; call setup() with the configs of the models you run"
        )


def _pairs(spec) -> tuple[tuple[int, int], ...]:
    """[[s, t], ...] (lists, tuples or OmegaConf ListConfig) → ((s, t), ...), or a one-line error."""
    try:
        pairs = tuple((int(s), int(t)) for s, t in spec)
    except (TypeError, ValueError):
        raise DistillError(
            f"layer_map={spec!r} is not understood; use 'uniform', 'last', 'source' or a list of "
            f"[student_layer, teacher_layer] pairs such as [[1, 3], [2, 6]]"
        ) from None
    return pairs


def layer_name(i: int) -> str:
    """0 → 'embeddings', i → 'layer i'."""
    return "embeddings" if i == 0 else f"layer {i}"


HEADER = ("term", "student", "teacher", "shapes (student → teacher)", "projection")


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> str:
    """Rows of strings → a left-aligned plain-text table with a header and a rule."""
    return render(header, rows, markdown=False).rstrip("\n")
