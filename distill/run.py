"""One training run from a composed config: build → train → evaluate → write the run dir.

Reads top to bottom like the recipe it runs: data, teacher, student, tokenizer, losses, loaders,
engine; then the student (HF format) and ``metrics.json`` land in the run dir.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill import launch
from distill.config_check import augment_config, trainer_config
from distill.data.collate import Collator, make_dataloader
from distill.data.corpus import train_texts
from distill.data.tokenize import summarize, tokenize, write_trained_tokens
from distill.engine import train
from distill.errors import DistillError
from distill.evaluate import bootstrap, predict, torch_forward
from distill.evaluate import metrics as task_metrics
from distill.model_card import write_student_card
from distill.models.foreign import is_foreign, teacher_tokenizer
from distill.models.hub import load_tokenizer, save_pretrained
from distill.models.projected_table import word_table
from distill.models.student import count_parameters
from distill.teacher_cache import CACHEABLE

log = logging.getLogger(__name__)


def model_task(cfg: DictConfig, data) -> str:
    """The models' head: the data's task; raw text: the bare encoder, or the masked-LM with data.mlm."""
    if cfg.data.get("mlm") and data.task != "raw":
        raise DistillError(f"data.mlm masks raw text, but {data.name} is a {data.task} task; drop data.mlm or use "
                           "a raw-text data node (data=imdb_raw)")
    if data.task != "raw":
        return data.task
    if not cfg.data.get("mlm"):
        return "base"
    return "pretraining" if cfg.data.mlm.get("nsp") else "mlm"


def build_models(cfg: DictConfig, data):
    """Teacher (if any) and student; label names and task come from the data."""
    task = model_task(cfg, data)
    labels = {"id2label": dict(enumerate(data.label_names))} if data.label_names else {}
    teacher = None
    if cfg.get("teacher") is not None:
        log.info("Instantiating teacher <%s>", cfg.teacher._target_)
        node = OmegaConf.to_container(cfg.teacher, resolve=True)
        node.pop("allow_untrained", None)  # read by check_teacher_head, not a loader argument
        teacher = hydra.utils.instantiate(node, task=task, **labels)
        if cfg.data.get("mlm"):  # the head it teaches with, before a student built from it copies it
            teacher = with_masked_lm_head(cfg, teacher, data)
    log.info("Instantiating student <%s>", cfg.student._target_)
    builder = _builder_parameters(cfg.student._target_)
    if teacher is not None and "texts" in builder:  # student=pruned_* ranks the teacher's parts on them
        student = _with_texts(cfg.student, teacher, train_texts(data))
    elif teacher is not None:
        student = hydra.utils.instantiate(cfg.student, teacher=teacher)
    elif "teacher" in builder:
        raise DistillError(f"the student <{cfg.student._target_}> is built from a teacher, and there is none; "
                           "add teacher=..., or train a model of its own: student=pretrained student.name_or_path=DIR")
    else:
        student = hydra.utils.instantiate(cfg.student, task=task, **labels)
    return teacher, student


def _builder_parameters(target: str):
    """The student builder's parameters, or one line when ``student._target_`` does not import."""
    try:
        return inspect.signature(hydra.utils.get_method(target)).parameters
    except ImportError:
        raise DistillError(f"student._target_={target} cannot be imported; pick a student config "
                           "(`distill train --help` lists them) or fix the path") from None


def _with_texts(node: DictConfig, teacher, texts: list[str]):
    """The builder called with the training text, outside instantiate (which would copy every text
    into the config: 12 s for 50k rows); a key it does not take is one line, as instantiate's are."""
    build = hydra.utils.instantiate(node, _partial_=True)
    try:
        return build(teacher=teacher, texts=texts)
    except TypeError as e:
        if "argument" not in str(e):
            raise
        raise DistillError(f"student: {e}; remove or rename that key") from None


def check_compatible(teacher, student) -> None:
    """Vocab and labels must agree for the logits (and embeddings) to mean the same thing."""
    if teacher is None:
        return
    for key in ("num_labels",) if is_foreign(teacher) else ("vocab_size", "num_labels"):  # its own vocab
        t, s = getattr(teacher.config, key), getattr(student.config, key)
        if t != s:
            raise DistillError(f"teacher {key}={t} but student {key}={s}; build the student from the teacher")
    if teacher.config.id2label != student.config.id2label:
        raise DistillError("teacher and student label names differ; fine-tune the teacher on this data first")


def teacher_terms(loss) -> list:
    """The loss terms that read the teacher (a CompositeLoss's active ones, or the loss itself)."""
    terms = loss.active().values() if hasattr(loss, "active") else [loss]
    return [t for t in terms if t.uses_teacher]


def check_foreign_teacher(teacher, loss) -> None:
    """A teacher with its own tokenizer gives logits in the student's layout, nothing layer-wise."""
    layered = sorted({n for t in teacher_terms(loss) for n in t.needs} - {"logits"})
    if layered and getattr(teacher, "logits_only", False) and not is_foreign(teacher):  # an ensemble
        raise DistillError(f"a loss term reads the teacher's {layered[0]}, but an ensemble of teachers gives logits "
                           "only; use losses=logits, or one teacher (teacher=hf_dir) for layer losses")
    if is_foreign(teacher) and layered:
        raise DistillError(f"a loss term reads the teacher's {layered[0]}, but this teacher is a "
                           f"{teacher.config.model_type} with its own tokenizer: only its logits map onto the student; "
                           "use losses=logits, or a BERT teacher of the student's vocabulary (teacher=hf_dir)")


def check_mask_share(node: DictConfig, teacher, tokenizer) -> None:
    """Masked words are written as the student's mask token, which a teacher of another tokenizer reads as text."""
    if node.get("mask_share") and teacher is not None and is_foreign(teacher):
        raise DistillError(f"data.augment.mask_share={node.mask_share} writes the student's {tokenizer.mask_token}, "
                           f"which this {teacher.config.model_type} teacher's tokenizer reads as plain text; set it "
                           "to 0 for a teacher with its own tokenizer")


def check_teacher_head(cfg: DictConfig, teacher, loss) -> None:
    """A teacher whose checkpoint has no classifier (the packaged MiniLM) teaches noise through its logits."""
    fresh = [k for k in getattr(teacher, "newly_initialised", []) if k.startswith("classifier")]
    reads_logits = any("logits" in t.needs for t in teacher_terms(loss))  # not hard labels' student logits
    if fresh and reads_logits and not cfg.teacher.get("allow_untrained", False):
        raise DistillError(f"the teacher's classifier was never trained (its checkpoint has no {fresh[0]}); "
                           "fine-tune it first with `distill pipeline recipe=NAME`, or pass teacher=hf_dir "
                           "teacher.name_or_path=<fine-tuned dir>; teacher.allow_untrained=true distils from it anyway")


def check_classes(data) -> None:
    """A classifier learns nothing from one class: a 1-label head (a regression in transformers'
    reading) would report accuracy 1.0. Stop instead, naming the class."""
    train = data.splits.get("train")
    if data.task not in ("sequence", "token") or train is None or len(train) == 0:
        return
    if data.task == "sequence":
        present = sorted(set(train["label"]))
        if len(present) < 2:
            found = data.label_names[present[0]] if present and data.label_names else "none"
            raise DistillError(f"the train split holds one class ({found!r}, {len(train)} rows); a classifier needs "
                               "at least two: check data.label_column and the file's labels")
    elif not any(data.label_names[t] != "O" for tags in train["tags"] for t in tags):
        raise DistillError(f"every word of the train split ({len(train)} rows) is tagged O; a tagger needs entity "
                           "tags: check data.label_column and the file's tags")


def load_data(cfg: DictConfig, seed: int):
    """The data node's corpus, with its transfer set appended when one is configured."""
    log.info("Instantiating data <%s>", cfg.data.source._target_)
    data = hydra.utils.instantiate(cfg.data.source)
    check_classes(data)
    if cfg.data.get("transfer"):
        from distill.data.transfer import with_transfer

        log.info("Instantiating transfer set <%s>", cfg.data.transfer.source._target_)
        data = with_transfer(data, hydra.utils.instantiate(cfg.data.transfer.source),
                             max_rows=cfg.data.transfer.get("max_rows"), seed=seed)
    return data


def augmented(node: DictConfig, data, tokenizer):
    """``data`` with the ``data.augment`` node's variants appended (type-checked; one process
    generates, the others read its cache)."""
    from distill.data.augment import augment

    settings, model_node, extra_node = augment_config(node)
    extra = []
    if extra_node is not None:  # more raw text for fitting the masked-LM head only
        source = hydra.utils.instantiate(extra_node)
        extra = list(source.splits["train"]["text"])  # its train split only: never held-out text
    log.info("Instantiating augmentation masked-LM <%s>", model_node.get("_target_"))
    with launch.state().main_process_first():
        return augment(data, tokenizer, settings, lambda: hydra.utils.instantiate(model_node, task="mlm"), extra,
                       device=launch.state().device)


def masked_lm_settings(node: DictConfig):
    """The ``data.mlm`` node, type-checked."""
    from distill.data.masking import MaskedLMData

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MaskedLMData), node))
    except OmegaConfBaseException as e:
        raise DistillError(f"data.mlm: {e.msg}") from None


def with_masked_lm_head(cfg: DictConfig, teacher, data):
    """The teacher with a masked-LM head to learn from: its checkpoint's own, or, when the checkpoint has
    none (the packaged MiniLM), one fitted once on the corpus and cached (one process fits, the rest read)."""
    from distill.data.mlm_head import headless, masked_lm

    settings = masked_lm_settings(cfg.data.mlm)
    fit = settings.teacher_head
    loaded = hasattr(teacher, "newly_initialised")  # False: built, not loaded (a random test model)
    if loaded and not headless(teacher):
        log.info("masked-LM: the teacher checkpoint's own head")
        fit = dataclasses.replace(fit, epochs=0)
    texts = list(data.splits["train"]["text"][:settings.head_texts])
    held = data.splits.get("validation")
    held_out = [] if held is None else list(held["text"][:500])
    tokenizer = load_tokenizer(teacher.config.name_or_path)
    with launch.state().main_process_first():
        teacher = masked_lm(teacher.to(launch.state().device), tokenizer, texts, held_out, fit)
    return teacher.cpu()


def check_next_sentence(cfg: DictConfig, loss) -> None:
    """Sentence pairs (data.mlm.nsp) and a next-sentence loss term come together."""
    mlm = cfg.data.get("mlm")
    pairs, nsp_loss = bool(mlm and mlm.get("nsp")), "nsp_logits" in loss.needs
    if pairs and not nsp_loss:
        raise DistillError("data.mlm.nsp=true trains the next-sentence head, but no loss term reads it; add "
                           "losses.nsp={_target_: distill.losses.mlm.NextSentence} (recipe=general_compact_nsp)")
    if nsp_loss and not pairs:
        raise DistillError("a NextSentence loss term needs sentence pairs; set data.mlm.nsp=true "
                           "(recipe=general_compact_nsp) or drop the term")


def loaders(cfg: DictConfig, tokenized, tokenizer, seed: int):
    collator = eval_collator = Collator(tokenizer)
    if cfg.data.get("mlm"):  # raw text → BERT's masking per batch; eval masks: seed 0, epoch 0, every run
        from distill.data.masking import MaskingCollator

        settings = masked_lm_settings(cfg.data.mlm)
        collator, eval_collator = (MaskingCollator(tokenizer, settings.probability, settings.whole_word, seed=s)
                                   for s in (seed, 0))
    train_loader = make_dataloader(tokenized["train"], collator, cfg.data.batch_size, shuffle=True, seed=seed,
                                   group_by_length=cfg.data.group_by_length)
    eval_loader = None
    if "validation" in tokenized and ("labels" in tokenized["validation"].column_names or cfg.data.get("mlm")):
        eval_loader = make_dataloader(tokenized["validation"], eval_collator, cfg.data.eval_batch_size
                                      if "eval_batch_size" in cfg.data else 2 * cfg.data.batch_size, shuffle=False)
    return train_loader, eval_loader


def run_training(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Train as ``cfg`` says; write student/, metrics.json, plots into ``out_dir``; return metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tcfg = trainer_config(cfg.trainer)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise
    from accelerate.utils import set_seed

    set_seed(tcfg.seed)  # student init (random layers, heads) is part of the experiment
    log.info("Instantiating losses <%s>", cfg.losses._target_)
    loss = hydra.utils.instantiate(cfg.losses)  # no parameters yet (setup makes projections): no RNG drawn
    check_next_sentence(cfg, loss)
    data = load_data(cfg, tcfg.seed)
    teacher, student = build_models(cfg, data)
    check_compatible(teacher, student)
    if teacher is not None:
        check_teacher_head(cfg, teacher, loss)
        check_foreign_teacher(teacher, loss)
    # the teacher's tokenizer defines the ids; a student built from it has no dir of its own yet
    source = getattr(teacher, "primary", teacher).config.name_or_path if teacher is not None and \
        not is_foreign(teacher) else ""  # an ensemble's members share its first member's tokenizer
    tokenizer = load_tokenizer(source or student.config.name_or_path)
    if cfg.data.get("augment"):
        check_mask_share(cfg.data.augment, teacher, tokenizer)
        data = augmented(cfg.data.augment, data, tokenizer)
    tokenized = tokenized_splits(cfg, data, tokenizer, teacher)
    log.info(summarize(data, tokenized))
    loss.setup(student.config, teacher.config if teacher is not None else None)
    if teacher is not None and loss.uses_teacher:
        log.info("layer map\n%s", loss.dry_run_table(student.config, teacher.config))
    engine_teacher = teacher if loss.uses_teacher else None
    if engine_teacher is not None and "validation" in tokenized and data.task != "raw":
        from distill.preflight import teacher_preflight

        # a teacher whose head was never fine-tuned teaches noise: say so before hours of training
        check = teacher_preflight(teacher, tokenized["validation"], task=data.task, label_names=data.label_names)
        log.info("teacher pre-flight on validation: %s", json.dumps(check.get("metrics", {})))
    train_loader, eval_loader = loaders(cfg, tokenized, tokenizer, tcfg.seed)
    cache_key = None
    if engine_teacher is not None and tcfg.teacher_cache and loss.needs <= CACHEABLE:
        from distill.teacher_cache import fingerprint
        cache_key = fingerprint(teacher, tokenizer, tokenized["train"]._fingerprint, cfg.data.max_length)
    task = "mlm" if cfg.data.get("mlm") else data.task
    result = train(tcfg, student, loss, train_loader, eval_loader, str(out), task, data.label_names,
                   teacher=engine_teacher, cache_key=cache_key, run_config=OmegaConf.to_container(cfg, resolve=True),
                   final_metrics=final_metrics(cfg, data, tokenized, teacher, eval_loader),
                   embedding_source=word_table(teacher) if tcfg.project_word_embeddings else None)
    if not launch.state().is_main_process:  # every process trained; one writes the results
        return {}
    summary = write_results(out, result, teacher, tokenizer)
    if "input_ids" in tokenized["train"].column_names:  # what trimming keeps (augmented rows' words too)
        write_trained_tokens(out / "student", tokenized["train"].with_format("arrow")["input_ids"])
    write_student_card(out / "student", result.student, list(data.label_names or []), summary,
                       engine_teacher.config.name_or_path if engine_teacher is not None else None, data.name,
                       *_recipe_and_command())
    return summary


def _recipe_and_command() -> tuple[str | None, str]:
    """The recipe and the command of this job as a shell line (one job of a sweep: its own overrides)."""
    if not HydraConfig.initialized():
        return None, "(Python API: distill.run.run_training)"
    hydra_cfg = HydraConfig.get()
    command = sys.argv[0] if sys.argv[0].startswith("distill ") else "distill train"
    return hydra_cfg.runtime.choices.get("recipe"), shlex.join([*command.split(), *hydra_cfg.overrides.task])


def tokenized_splits(cfg: DictConfig, data, tokenizer, teacher=None):
    """Token ids of every split: sentence pairs for next-sentence prediction, else ``tokenize``'s rows
    (with the teacher's own encoding beside when it has its own tokenizer)."""
    if cfg.data.get("mlm") and cfg.data.mlm.get("nsp"):
        from distill.data.pairs import sentence_pairs

        return sentence_pairs(data, tokenizer, cfg.data.max_length)
    own = teacher_tokenizer(teacher, data.task) if is_foreign(teacher) else None
    return tokenize(data, tokenizer, cfg.data.max_length, teacher_tokenizer=own)


def final_metrics(cfg: DictConfig, data, tokenized, teacher, eval_loader):
    """What the trained student (and the teacher) score at the end, for metrics.json and the trackers:
    the test split, or masked-LM figures on validation for raw text."""
    def measure(trained) -> dict:
        if cfg.data.get("mlm"):
            bf16 = launch.effective_precision(cfg.trainer.mixed_precision) == "bf16"  # as the in-loop evaluation
            return held_out_masked_lm({"student": trained, "teacher": teacher}, eval_loader, bf16)
        if "test" not in tokenized or data.task == "raw":
            return {}
        models = {"student": trained, "teacher": teacher}
        preds = {name: predict(torch_forward(m), tokenized["test"], data.task) for name, m in models.items()
                 if m is not None}
        scores = {name: task_metrics(p, data.label_names) for name, p in preds.items()}
        return {**scores, "ci95": {name: bootstrap(p, data.label_names) for name, p in preds.items()}}

    return measure


def write_results(out: Path, result, teacher, tokenizer) -> dict:
    """student/, metrics.json and the training curves; returns the metrics."""
    save_pretrained(result.student, out / "student", tokenizer)
    summary = {"steps": result.steps, "best_validation": result.best, "best_metric": result.best_metric,
               "nonfinite": result.nonfinite,
               "student_params": count_parameters(result.student), **result.final}
    if teacher is not None and "teacher" in summary:
        summary["teacher_params"] = count_parameters(teacher)
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    _plot_curves(out)
    log.info("metrics: %s", json.dumps({k: v for k, v in summary.items() if k in ("student", "teacher")}))
    return summary


def held_out_masked_lm(models: dict, loader, bf16: bool = False) -> dict:
    """Masked-LM accuracy and perplexity of each model on the validation split (raw text keeps no test
    split; ``split`` says so, and the trackers log them under ``validation/``), at the eval collator's
    epoch-0 masks — the same positions for every model."""
    import torch

    from distill.evaluate import masked_lm_metrics, masked_lm_totals

    if loader is None:
        return {}
    out = {}
    for name, model in models.items():
        if model is None or getattr(model, "task", None) not in ("mlm", "pretraining"):
            continue
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            totals = masked_lm_totals(model, ({k: v.to(device) for k, v in batch.items()} for batch in loader))
        out[name] = masked_lm_metrics(totals.cpu())
    if "teacher" in out:  # its NSP head is whatever the checkpoint had (the packaged one: none): not scored
        out["teacher"].pop("nsp_accuracy", None)
    return {"split": "validation", **out} if out else {}


def _plot_curves(out: Path) -> None:
    if (out / "metrics.jsonl").is_file():
        from distill.plots import training_curves

        training_curves({out.name: out / "metrics.jsonl"}, out / "training_curves.png")
