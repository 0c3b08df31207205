"""Build a student from a teacher: a fresh config, or a subset of the teacher's layers.

Every builder takes the teacher first, so a Hydra node ``{_target_: ..., layers: [0, 5]}`` is
completed at run time with ``instantiate(cfg.student, teacher=teacher)`` (a builder that also takes
``texts``, :mod:`distill.models.prune`, gets the training split too). The student inherits what must
match for distillation: vocab, max positions, task and label mapping.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from transformers import BertConfig

from distill.errors import DistillError
from distill.layer_map import SOURCE_LAYERS
from distill.models.bert import BertModel, BertPreTrainedModel
from distill.models.foreign import is_foreign
from distill.models.heads import TASK_CLASSES
from distill.models.hub import from_pretrained, load_tokenizer, minilm_l6_path

log = logging.getLogger(__name__)


def encoder_of(model: BertPreTrainedModel) -> BertModel:
    return model if isinstance(model, BertModel) else model.bert


def student_config(teacher: BertPreTrainedModel, **changes) -> BertConfig:
    """The teacher's config with ``changes`` applied (vocab, labels, positions carried over); a teacher of
    another architecture gives only its labels, the vocabulary is its ``student_tokenizer``'s."""
    teacher = single_teacher(teacher)
    config = _own_vocab_config(teacher) if is_foreign(teacher) else copy.deepcopy(teacher.config)
    if hasattr(config, SOURCE_LAYERS):  # a teacher that was itself a student: its layers are not this student's
        delattr(config, SOURCE_LAYERS)
    for key, value in changes.items():
        if value is not None:
            setattr(config, key, value)
    config.name_or_path = getattr(teacher, "student_tokenizer", "")  # "": the teacher's tokenizer
    return config


def single_teacher(teacher):
    """An ensemble of teachers builds its student from its first member."""
    return getattr(teacher, "primary", teacher)


def _own_vocab_config(teacher) -> BertConfig:
    tokenizer = load_tokenizer(teacher.student_tokenizer)
    labels = {int(i): n for i, n in teacher.config.id2label.items()}
    return BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id or 0, id2label=labels,
                      label2id={n: i for i, n in labels.items()})


def require_same_vocab(teacher, what: str, fix: str) -> None:
    if is_foreign(teacher):
        raise DistillError(f"{what} copies from a BERT teacher of the student's vocabulary, but this teacher is a "
                           f"{teacher.config.model_type} with its own tokenizer; {fix}")


def student_from_config(
    teacher: BertPreTrainedModel,
    num_hidden_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    intermediate_size: int | None = None,
    init_embeddings: bool = False,
    project_embeddings: bool = False,
    attention_probs_dropout_prob: float | None = None,
    hidden_dropout_prob: float | None = None,
) -> BertPreTrainedModel:
    """A randomly initialised student of the teacher's task (e.g. 4 layers × 128 hidden).

    ``init_embeddings`` copies the teacher's embeddings (word, position, type, LayerNorm); it needs
    ``hidden_size`` equal to the teacher's. ``project_embeddings`` works for a narrower student: the
    teacher's embeddings projected onto their top ``hidden_size`` principal directions.
    """
    teacher = single_teacher(teacher)
    for name, value in (("num_hidden_layers", num_hidden_layers), ("hidden_size", hidden_size),
                        ("num_attention_heads", num_attention_heads)):
        if int(value) < 1:
            raise DistillError(f"student {name}={value}; it must be a positive integer")
    config = student_config(
        teacher,
        num_hidden_layers=num_hidden_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        attention_probs_dropout_prob=attention_probs_dropout_prob,
        hidden_dropout_prob=hidden_dropout_prob,
    )
    student = TASK_CLASSES[teacher.task](config) if is_foreign(teacher) else type(teacher)(config)
    student.init_weights()
    if init_embeddings or project_embeddings:
        name = "init_embeddings" if init_embeddings else "project_embeddings"
        require_same_vocab(teacher, f"student.{name}", f"set student.{name}=false")
    if init_embeddings and project_embeddings:
        raise DistillError("set one of init_embeddings (copy, equal widths) and project_embeddings (PCA), not both")
    if init_embeddings:
        copy_embeddings(student, teacher)
    if project_embeddings:
        pca_embeddings(student, teacher)
    return student


def copy_embeddings(student: BertPreTrainedModel, teacher: BertPreTrainedModel) -> None:
    """Copy word/position/type embeddings and their LayerNorm; widths must match."""
    hs, ht = student.config.hidden_size, teacher.config.hidden_size
    if hs != ht:
        raise DistillError(
            f"init_embeddings needs equal widths but student hidden_size={hs}, teacher {ht}; "
            "set init_embeddings=false or hidden_size to the teacher's"
        )
    encoder_of(student).embeddings.load_state_dict(encoder_of(teacher).embeddings.state_dict())


@torch.no_grad()
def pca_embeddings(student: BertPreTrainedModel, teacher: BertPreTrainedModel) -> None:
    """Initialise a narrower student's embeddings from the teacher's principal directions.

    With the teacher's word embeddings E (V, H_t), centred Ē = E − mean(E) and its top-H_s right
    singular vectors U (H_t, H_s), every table becomes X·U: word (V, H_s), position (P, H_s),
    token type (2, H_s). The projection is linear, so word + position + type sums project exactly;
    the student's LayerNorm keeps its fresh init (γ = 1, β = 0). Each direction's sign is fixed (its
    largest entry positive), so the same teacher gives the same student with any LAPACK.
    """
    es, et = encoder_of(student).embeddings, encoder_of(teacher).embeddings
    hs, ht = student.config.hidden_size, teacher.config.hidden_size
    if hs > ht:
        raise DistillError(f"project_embeddings needs a student no wider than the teacher ({hs} > {ht}); "
                           "use init_embeddings for equal widths")
    words = et.word_embeddings.weight.float()  # (V, H_t)
    _, _, vh = torch.linalg.svd(words - words.mean(0), full_matrices=False)  # vh: (H_t, H_t)
    top = vh[:hs]  # (H_s, H_t); a singular vector's sign is arbitrary (LAPACK builds differ): fix it
    basis = (top * top.gather(1, top.abs().argmax(1, keepdim=True)).sign()).T  # largest entry > 0; (H_t, H_s)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        table = getattr(et, name).weight.float()  # (rows, H_t)
        getattr(es, name).weight.copy_(table @ basis)  # (rows, H_s)


def teacher_layers(layers: Sequence[int], n_t: int) -> list[int]:
    """The student's teacher layers as ints (0-based), or one line when one is not in 0..n_t-1."""
    layers = [int(i) for i in layers]
    if not layers or any(not 0 <= i < n_t for i in layers):
        raise DistillError(f"student layers={layers} is impossible for a {n_t}-layer teacher; "
                           f"pick indices in 0..{n_t - 1}")
    return layers


def student_from_teacher(
    teacher: BertPreTrainedModel,
    layers: Sequence[int],
    copy_head: bool = True,
    attention_probs_dropout_prob: float | None = None,
    hidden_dropout_prob: float | None = None,
) -> BertPreTrainedModel:
    """DistilBERT-style: the teacher's embeddings + the chosen layers (0-based) (+ pooler/head).

    ``layers=[0, 5]`` of a 6-layer teacher gives a 2-layer student whose layer 1 is teacher layer 0
    and layer 2 is teacher layer 5.
    """
    teacher = single_teacher(teacher)
    require_same_vocab(teacher, "student=from_teacher", "pick a student of its own, e.g. student=bert_l4_h128")
    n_t = teacher.config.num_hidden_layers
    layers = teacher_layers(layers, n_t)
    config = student_config(
        teacher,
        num_hidden_layers=len(layers),
        attention_probs_dropout_prob=attention_probs_dropout_prob,
        hidden_dropout_prob=hidden_dropout_prob,
        **{SOURCE_LAYERS: layers},
    )
    student = type(teacher)(config)
    student.init_weights()
    enc_s, enc_t = encoder_of(student), encoder_of(teacher)
    enc_s.embeddings.load_state_dict(enc_t.embeddings.state_dict())
    for i_s, i_t in enumerate(layers):
        enc_s.encoder.layer[i_s].load_state_dict(enc_t.encoder.layer[i_t].state_dict())
    if copy_head:
        own = student.state_dict()
        head = {k: v for k, v in teacher.state_dict().items()
                if not k.startswith(("bert.embeddings", "bert.encoder", "embeddings", "encoder"))
                and k in own}
        student.load_state_dict(head, strict=False)
    log.info("student from teacher layers %s (%d of %d)", layers, len(layers), n_t)
    return student


def student_from_pretrained(teacher: BertPreTrainedModel, name_or_path: str, **config_overrides) -> BertPreTrainedModel:
    """A student that starts from a saved checkpoint (a HF BERT dir or hub id), for the teacher's task.

    E.g. the student of an earlier distillation stage (``distill pipeline`` with ``intermediate:``) or a
    task-agnostic distilled BERT. Its head takes the teacher's labels; vocab must match the teacher's.
    """
    teacher = single_teacher(teacher)
    task = getattr(teacher, "task", None)  # every distill BERT class names its task
    if task not in TASK_CLASSES:
        raise DistillError(f"the teacher is a {type(teacher).__name__}, not one of distill's BERT classes")
    student = from_pretrained(name_or_path, task=task, id2label=teacher.config.id2label, **config_overrides)
    log.info("student from %s (%d layers, hidden %d)", name_or_path, student.config.num_hidden_layers,
             student.config.hidden_size)
    return student.train()


def count_parameters(model: BertPreTrainedModel) -> dict[str, int]:
    """Total parameters and those outside the embeddings (tied weights counted once)."""
    if hasattr(model, "members"):  # an ensemble of teachers: all of them
        counts = [count_parameters(m) for m in model.members]
        return {k: sum(c[k] for c in counts) for k in ("total", "non_embedding")}
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    foreign = is_foreign(model)
    embeddings = getattr(model.model.base_model, "embeddings", None) if foreign else encoder_of(model).embeddings
    emb = sum(p.numel() for p in embeddings.parameters()) if embeddings is not None else 0
    return {"total": total, "non_embedding": total - emb}


def random_bert(
    task: str = "sequence",
    id2label: dict[int, str] | None = None,
    num_hidden_layers: int = 2,
    hidden_size: int = 32,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
) -> BertPreTrainedModel:
    """A randomly initialised BERT with the packaged MiniLM's vocabulary and tokenizer (for tests and
    smoke runs: ``teacher=tiny``)."""
    labels = dict(id2label or {0: "LABEL_0", 1: "LABEL_1"})
    config = BertConfig(vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                        max_position_embeddings=max_position_embeddings,
                        id2label=labels, label2id={v: k for k, v in labels.items()})
    if task not in TASK_CLASSES:
        raise DistillError(f"task={task!r} is unknown; use one of {sorted(TASK_CLASSES)}")
    model = TASK_CLASSES[task](config)
    model.init_weights()
    model.config.name_or_path = minilm_l6_path()  # where its tokenizer lives
    return model.eval()
