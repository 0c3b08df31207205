"""Any transformers sequence- or token-classification checkpoint as a teacher, with its own tokenizer.

Logits-level distillation needs only the teacher's predictions on the same text, so a RoBERTa,
DistilBERT, ELECTRA … teacher (``AutoModelForSequenceClassification`` /
``AutoModelForTokenClassification``) teaches our BERT student: the data pipeline encodes every
example twice — the student's ids, and ``teacher_input_ids`` / ``teacher_attention_mask``
(``teacher_token_type_ids`` where the teacher's tokenizer makes them) with the teacher's tokenizer.

Token tasks: the teacher tags its own sub-tokens. ``teacher_word_index`` (B, T_s) names, for each
student position, the teacher position of the first sub-token of the same word (-1: special token,
or a word the teacher's truncation cut off), so the teacher's logits arrive in the student's layout
(B, T_s, C): the loss, the logits cache and the metrics read them as they read a BERT teacher's.
Positions with index -1 get zero logits (a uniform target); the student's labels skip specials.

Layer losses (hidden states, attention maps) need a BERT-family teacher of the student's vocabulary
and are refused here; use ``teacher=hf_dir`` for those.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.models.hub import check_head_task, label_order, load_tokenizer, minilm_l6_path, resolve, saved_heads
from distill.outputs import TEACHER_INPUTS, ModelOutputs

log = logging.getLogger(__name__)


class ForeignTeacher(nn.Module):
    """A transformers classification model behind distill's teacher interface.

    ``forward(teacher_input_ids (B, T_t), teacher_attention_mask (B, T_t), teacher_token_type_ids?,
    teacher_word_index? (B, T_s))`` → ``ModelOutputs(logits=(B, C) | (B, T_s, C))`` with the label
    axis in the data's order. ``config`` is the model's, its ``id2label`` the data's names.
    """

    own_tokenizer = True
    logits_only = True
    input_keys = TEACHER_INPUTS

    def __init__(self, model: nn.Module, task: str, order: list[int] | None, tokenizer_path: str,
                 student_tokenizer: str, pad_token_id: int = 0):
        super().__init__()
        self.model, self.task = model, task
        self.register_buffer("order", torch.tensor(order if order is not None else range(model.config.num_labels)))
        self.config = model.config
        self.tokenizer_path, self.student_tokenizer = tokenizer_path, student_tokenizer
        self.pad_token_id = pad_token_id

    def forward(self, teacher_input_ids: Tensor, teacher_attention_mask: Tensor,
                teacher_token_type_ids: Tensor | None = None, teacher_word_index: Tensor | None = None,
                **wanted) -> ModelOutputs:
        asked = sorted(k for k, v in wanted.items() if v)
        if asked:
            raise DistillError(f"a teacher of another architecture returns logits only, not {asked[0]}; distil "
                               "with logits losses (losses=logits), or use a BERT teacher (teacher=hf_dir)")
        ids = teacher_input_ids.masked_fill(teacher_attention_mask == 0, self.pad_token_id)  # RoBERTa counts
        extra = {} if teacher_token_type_ids is None else {"token_type_ids": teacher_token_type_ids}  # positions
        logits = self.model(input_ids=ids, attention_mask=teacher_attention_mask, **extra).logits[..., self.order]
        if self.task == "token":  # (B, T_t, C) → the student's positions (B, T_s, C)
            if teacher_word_index is None:
                raise DistillError("a token-task teacher of another architecture needs teacher_word_index in the "
                                   "batch; tokenize with teacher_tokenizer=")
            index = teacher_word_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
            logits = logits.gather(1, index) * (teacher_word_index >= 0).unsqueeze(-1)
        return ModelOutputs(logits=logits)


def from_pretrained(name_or_path: str | os.PathLike, task: str = "sequence", id2label: dict | None = None,
                    student_tokenizer: str | None = None, num_labels: int | None = None) -> ForeignTeacher:
    """A transformers classification checkpoint dir (or hub id) → a teacher with its own tokenizer.

    ``student_tokenizer``: the BERT tokenizer dir a student built from this teacher uses (default:
    the packaged MiniLM's uncased WordPiece vocabulary); a ``student=pretrained`` student keeps its own.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    classes = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}
    if task not in classes:
        raise DistillError(f"a teacher of another architecture distils sequence or token tasks, not task={task!r}")
    path = resolve(name_or_path)
    if not (path / "config.json").is_file():
        raise DistillError(f"{path} has no config.json; point to a transformers checkpoint dir")
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (ValueError, KeyError, json.JSONDecodeError, OSError) as e:
        raise DistillError(f"{path}/config.json is not a config transformers knows ({type(e).__name__}); "
                           "a model_type that needs remote code is not loaded") from None
    check_head_task(path, task)
    pad = load_tokenizer(path).pad_token_id  # its own tokenizer must be there (and fit its vocab) before any step
    wanted = {int(i): str(n) for i, n in dict(id2label).items()} if id2label is not None else None
    n = len(wanted) if wanted is not None else num_labels
    if n is not None and n != config.num_labels and saved_heads(path):
        raise DistillError(f"{path}: its classifier has {config.num_labels} labels but the data has {n}; "
                           "use a teacher fine-tuned on this data's labels")
    order = label_order(config.id2label, wanted) if wanted is not None else None
    if order is not None:
        log.info("%s: its head orders the labels %s; logits reordered to the data's", path, config.id2label)
    elif wanted is not None and saved_heads(path):
        _warn_other_names(config.id2label, wanted, path)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per small checkpoint; the log line below says what loaded
    try:
        model, info = classes[task].from_pretrained(str(path), num_labels=n or config.num_labels,
                                                    output_loading_info=True, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise DistillError(f"could not load {path} as a {task} classifier ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160]}); check the checkpoint") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if wanted is not None:
        model.config.id2label, model.config.label2id = wanted, {name: i for i, name in wanted.items()}
    model.config.name_or_path = str(path)
    teacher = ForeignTeacher(model.eval(), task, order, str(path), student_tokenizer or minilm_l6_path(),
                             pad if pad is not None else model.config.pad_token_id or 0)
    teacher.newly_initialised = sorted(info["missing_keys"])  # e.g. a head the checkpoint lacks
    log.info("teacher %s (%s, %d labels) with its own tokenizer", path, config.model_type, model.config.num_labels)
    return teacher.eval()


def _warn_other_names(own: dict, wanted: dict[int, str], path) -> None:
    """Names that are not the data's (and not transformers' generic LABEL_i): output i is read as the data's
    label i, which is right only if the teacher was trained with that order — say so loudly."""
    names = [str(own.get(i, own.get(str(i), ""))) for i in range(len(own))]
    same = [n.lower() for n in names] == [wanted[i].lower() for i in range(len(wanted))]
    if not same and not all(n.upper().startswith("LABEL_") for n in names):
        log.warning("%s: its head names the labels %s, the data %s; reading output i as the data's label i — if "
                    "the teacher was trained in another order, fix its config.json id2label", path, names,
                    [wanted[i] for i in range(len(wanted))])


def is_foreign(teacher) -> bool:
    return bool(getattr(teacher, "own_tokenizer", False))


def teacher_tokenizer(teacher, task: str):
    """The teacher's own tokenizer (word-split input gets a prefix space where byte-level BPE wants one)."""
    tokenizer = load_tokenizer(teacher.tokenizer_path)
    if task == "token" and getattr(tokenizer, "add_prefix_space", None) is False:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(teacher.tokenizer_path, add_prefix_space=True,
                                                  trust_remote_code=False)
    return tokenizer
