"""Predictions, task metrics with bootstrap intervals, paired tests, and CPU latency.

Everything here works on a *forward*: a callable ``batch dict → logits`` (B, C) or (B, T, C), so a
PyTorch model and an onnxruntime session are evaluated and timed the same way.

Units: a sequence task is scored per row; a token task per word (first sub-token of each word, the
positions whose label is not -100), with entity-level F1 from seqeval. The bootstrap resamples rows
or sentences; McNemar pairs rows or words.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from distill.errors import DistillError
from distill.outputs import IGNORE_INDEX, MODEL_INPUTS, TEACHER_INPUTS

Forward = Callable[[dict[str, Tensor]], Tensor]
MLM_INPUTS = (*MODEL_INPUTS, "mlm_positions")  # masked-LM batches: only the masked positions are decoded
EXACT_MCNEMAR_BELOW = 25  # discordant pairs; below this the χ² approximation is poor


# validation metrics that can pick the best checkpoint (higher is better), the task's main one first
SELECTABLE = {"sequence": ("accuracy", "macro_f1"), "token": ("entity_f1", "token_accuracy"),
              "mlm": ("mlm_accuracy",)}


def main_metric(task: str) -> str:
    """The metric retention is computed on (same convention as training)."""
    return {"token": "entity_f1", "mlm": "mlm_accuracy"}.get(task, "accuracy")


def metric_for_best(choice: str | None, task: str) -> str:
    """``trainer.metric_for_best`` checked against the task (None: the task's main metric)."""
    options = SELECTABLE.get(task, (main_metric(task),))
    if choice is None:
        return options[0]
    if choice not in options:
        raise DistillError(f"trainer.metric_for_best={choice!r} is not a validation metric of a {task} task; use one "
                           f"of {', '.join(options)}")
    return choice


def masked_lm_stats(model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Per row (B, 5): masked positions predicted right (top-1), masked positions, summed NLL there;
    with NSP pairs and a pre-training model, next sentence predicted right and 1 (else 0, 0).
    ``batch`` comes from ``MaskingCollator`` (labels −100 except at the masked positions)."""
    out = model(**{k: batch[k] for k in MLM_INPUTS if k in batch})
    keep = batch["labels"] != IGNORE_INDEX  # (B, T)
    logits = out.logits.float()
    logits = logits if logits.dim() == 2 else logits[keep]  # (N, V)
    targets = batch["labels"][keep]  # (N,)
    row = keep.nonzero()[:, 0]  # (N,) which row each masked position belongs to
    stats = torch.zeros(keep.shape[0], 5, device=logits.device)
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    values = torch.stack([(logits.argmax(-1) == targets).float(), torch.ones_like(nll), nll], dim=1)
    stats[:, :3].index_add_(0, row, values)
    nsp = getattr(out, "nsp_logits", None)
    if nsp is not None and "next_sentence_label" in batch:
        stats[:, 3] = (nsp.argmax(-1) == batch["next_sentence_label"]).float()
        stats[:, 4] = 1.0
    return stats


def masked_lm_totals(model: torch.nn.Module, batches: Iterable[dict[str, Tensor]], gather=None) -> Tensor:
    """``masked_lm_stats`` summed over ``batches`` (on the model's device): (5,). ``gather``: each batch's
    rows from every process (accelerate's ``gather_for_metrics``); None: this process's only."""
    totals = torch.zeros(5)
    for batch in batches:
        stats = masked_lm_stats(model, batch)
        totals = totals.to(stats.device) + (gather(stats) if gather else stats).sum(0)
    return totals


def masked_lm_metrics(totals: Tensor) -> dict[str, float]:
    """{mlm_accuracy, mlm_perplexity[, nsp_accuracy]} from summed ``masked_lm_stats`` (5,)."""
    correct, count, nll, nsp_correct, pairs = (float(v) for v in totals)
    out = {"mlm_accuracy": correct / max(count, 1), "mlm_perplexity": math.exp(nll / max(count, 1))}
    if pairs:
        out["nsp_accuracy"] = nsp_correct / pairs
    return out


# ---------------------------------------------------------------- forwards and batches


def torch_forward(model: torch.nn.Module) -> Forward:
    """Our BERT (or anything returning ``.logits``) in eval mode, no grad."""
    model.eval()

    keys = getattr(model, "input_keys", MODEL_INPUTS)  # a teacher with its own tokenizer reads its own ids

    @torch.inference_mode()
    def forward(batch: dict[str, Tensor]) -> Tensor:
        out = model(**{k: batch[k] for k in keys if k in batch})
        return getattr(out, "logits", out)

    return forward


def onnx_forward(path: str, threads: int = 1) -> Forward:
    """An onnxruntime CPU session with ``threads`` intra-op threads; feeds only the graph's inputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def forward(batch: dict[str, Tensor]) -> Tensor:
        feed = {n: batch[n].numpy().astype(np.int64) for n in names}
        return torch.from_numpy(session.run(None, feed)[0])

    return forward


def pad_rows(rows: Sequence[dict]) -> dict[str, Tensor]:
    """Tokenized rows (lists of ids) → a right-padded batch; ids/masks pad with 0, labels with -100.

    Not data.Collator (a layer above): padded ids sit under attention_mask 0, so their value never
    reaches an unpadded position's output — these batches only compare models on the same rows.
    A teacher's own encoding (``teacher_*``) pads to its own length; its word index with -1."""
    batch = {}
    for key in (*MODEL_INPUTS, "labels", *TEACHER_INPUTS):
        if key not in rows[0]:
            continue
        if key == "labels" and not isinstance(rows[0][key], (list, tuple, np.ndarray, Tensor)):
            batch[key] = torch.tensor([int(r[key]) for r in rows])  # (B,) sequence labels
            continue
        fill = {"labels": IGNORE_INDEX, "teacher_word_index": -1}.get(key, 0)
        out = torch.full((len(rows), max(len(r[key]) for r in rows)), fill, dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            out[i, : len(r[key])] = torch.as_tensor(list(r[key]), dtype=torch.long)
        batch[key] = out
    if "token_type_ids" not in batch:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return batch


def batches(dataset, batch_size: int = 32) -> Iterator[dict[str, Tensor]]:
    """A tokenized dataset (datasets.Dataset or list of row dicts) in order, padded per batch."""
    for start in range(0, len(dataset), batch_size):
        chunk = dataset[start : start + batch_size]
        if isinstance(chunk, dict):  # datasets returns columns; turn them back into rows
            chunk = [dict(zip(chunk, vals)) for vals in zip(*chunk.values())]
        yield pad_rows(chunk)


# ---------------------------------------------------------------- predictions and metrics


@dataclass
class Predictions:
    """Gold and predicted label ids per unit: rows (sequence) or words (token).

    ``y_true``/``y_pred`` (U,); ``group`` (U,) is the row each unit came from (the bootstrap unit).
    """

    task: str
    y_true: np.ndarray
    y_pred: np.ndarray
    group: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred

    def sentences(self, label_names: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
        """Token task → per-row tag-name lists (gold, pred), as seqeval wants them."""
        cuts = np.flatnonzero(np.diff(self.group)) + 1
        gold = [[label_names[i] for i in s] for s in np.split(self.y_true, cuts)]
        pred = [[label_names[i] for i in s] for s in np.split(self.y_pred, cuts)]
        return gold, pred


def predict(forward: Forward, dataset, task: str, batch_size: int = 32) -> Predictions:
    """Run ``forward`` over a tokenized split with ``labels``: argmax per row, or per labelled word."""
    if task not in ("sequence", "token"):
        raise DistillError(f"task={task!r} cannot be evaluated; use sequence or token")
    if len(dataset) == 0 or "labels" not in dataset[0]:
        raise DistillError("the evaluation split is empty or has no 'labels' column; tokenize it with labels")
    trues, preds, groups, row = [], [], [], 0
    for batch in batches(dataset, batch_size):
        pred = forward(batch).argmax(-1)  # (B,) or (B, T)
        labels = batch["labels"]
        if task == "token":
            if pred.dim() != 2:
                raise DistillError("task=token but the model returns one label per row; load it with task=sequence")
            keep = labels != IGNORE_INDEX  # first sub-token of each word
            trues.append(labels[keep])
            preds.append(pred[:, : labels.shape[1]][keep])
            groups.append(keep.nonzero()[:, 0] + row)
        else:
            if pred.dim() != 1:
                raise DistillError("task=sequence but the model returns per-token logits; load it with task=token")
            trues.append(labels)
            preds.append(pred)
            groups.append(torch.arange(row, row + len(labels)))
        row += len(labels)
    cat = lambda xs: torch.cat(xs).numpy().astype(np.int64)  # noqa: E731
    return Predictions(task, cat(trues), cat(preds), cat(groups))


def metrics(pred: Predictions, label_names: Sequence[str]) -> dict[str, float]:
    """sequence: accuracy, macro_f1 (sklearn); token: entity_f1 (seqeval), token_accuracy."""
    # sklearn, scipy and seqeval are imported where they score (~2 s on 2 cores): a run stopped by a bad
    # setting, `distill --help` or `recipes` never pays for them
    from sklearn.metrics import accuracy_score, f1_score

    if pred.task == "token":
        from seqeval.metrics import f1_score as seqeval_f1

        gold, guess = pred.sentences(label_names)
        return {"entity_f1": float(seqeval_f1(gold, guess, zero_division=0)),
                "token_accuracy": float(pred.correct.mean())}
    return {"accuracy": float(accuracy_score(pred.y_true, pred.y_pred)),
            "macro_f1": float(f1_score(pred.y_true, pred.y_pred, average="macro", zero_division=0))}


def _group_stats(pred: Predictions, label_names: Sequence[str]) -> np.ndarray:
    """Per bootstrap unit, the counts every metric is a function of: (G, S)."""
    if pred.task == "token":
        from seqeval.metrics.sequence_labeling import get_entities

        rows = []
        for gold, guess in zip(*pred.sentences(label_names)):
            g, p = set(get_entities(gold)), set(get_entities(guess))
            rows.append((len(g), len(p), len(g & p), len(gold), sum(a == b for a, b in zip(gold, guess))))
        return np.asarray(rows, dtype=np.float64)  # true ents, pred ents, correct ents, words, words right
    C = len(label_names)
    onehot = np.eye(C)
    t, p = onehot[pred.y_true], onehot[pred.y_pred]  # (N, C)
    return np.concatenate([pred.correct[:, None], t * p, t, p], axis=1)  # (N, 1 + 3C)


def _from_stats(task: str, totals: np.ndarray) -> dict[str, np.ndarray]:
    """Totals (..., S) → the same metrics as :func:`metrics`, vectorised over resamples."""
    div = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)  # noqa: E731
    if task == "token":
        return {"entity_f1": div(2 * totals[..., 2], totals[..., 0] + totals[..., 1]),
                "token_accuracy": div(totals[..., 4], totals[..., 3])}
    C = (totals.shape[-1] - 1) // 3
    tp, true, guess = totals[..., 1:1 + C], totals[..., 1 + C:1 + 2 * C], totals[..., 1 + 2 * C:]
    present = (true + guess) > 0  # sklearn's macro average runs over labels seen in gold or pred
    f1 = div(2 * tp, true + guess)
    n = true.sum(-1)
    return {"accuracy": div(totals[..., 0], n), "macro_f1": div(f1.sum(-1), present.sum(-1).astype(float))}


def _resamples(units: int, n_boot: int, seed: int, chunk: int):
    """Resample counts of ``units`` units with replacement, ``chunk`` resamples at a time: (chunk, G)
    matrices keep memory bounded."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        yield rng.multinomial(units, np.full(units, 1.0 / units), size=min(chunk, n_boot - start))


def bootstrap(pred: Predictions, label_names: Sequence[str], n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile ``level`` interval of every metric, resampling rows (or sentences) with replacement.

    Not scipy.stats.bootstrap: its statistic sees resampled rows, so entity F1 would run seqeval per
    resample; here a resample is counts @ per-sentence (tp, fp, fn, ...) totals, all in one matmul."""
    stats = _group_stats(pred, label_names)  # (G, S)
    draws = [counts @ stats for counts in _resamples(len(stats), n_boot, seed, chunk=100)]  # (chunk, S) totals
    boot = _from_stats(pred.task, np.concatenate(draws))
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for k, v in boot.items()}


def paired_bootstrap(a: Predictions, b: Predictions, label_names: Sequence[str], n_boot: int = 10000,
                     seed: int = 0) -> dict:
    """Paired test of the main metric, A − B, resampling the same units for both (Koehn, 2004): rows,
    or sentences for token tasks — entity F1 is a property of whole sentences, and a word-level McNemar
    counts thousands of easy O words as evidence. Two-sided p: twice the share of resamples on the far
    side of 0 (floored at 1 / n_boot)."""
    sa, sb = _group_stats(a, label_names), _group_stats(b, label_names)  # (G, S) each, same units
    if sa.shape != sb.shape:
        raise DistillError("the paired bootstrap needs both models scored on the same rows; evaluate them on one split")
    key = main_metric(a.task)
    observed = float(_from_stats(a.task, sa.sum(0))[key] - _from_stats(b.task, sb.sum(0))[key])
    diffs = np.concatenate([_from_stats(a.task, counts @ sa)[key] - _from_stats(b.task, counts @ sb)[key]
                            for counts in _resamples(len(sa), n_boot, seed, chunk=500)])
    p = 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"diff": observed, "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
            "p_value": float(min(1.0, max(p, 1.0 / n_boot))), "n_boot": n_boot,
            "unit": "sentence" if a.task == "token" else "row"}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Paired test of two models on the same units: exact binomial when discordant pairs are few,
    else χ² with continuity correction. ``b`` = only A right, ``c`` = only B right."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b_.shape:
        raise DistillError("McNemar needs both models scored on the same rows; evaluate them on one split")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    if b + c == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "method": "no discordant pairs"}
    from scipy.stats import binomtest, chi2

    if b + c < EXACT_MCNEMAR_BELOW:
        p = binomtest(min(b, c), b + c, 0.5).pvalue
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": float(p), "method": "exact binomial"}
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(chi2.sf(stat, 1)),
            "method": "chi-square (continuity corrected)"}


def agreement(a: Predictions, b: Predictions) -> float:
    """Share of units where two models predict the same label."""
    if a.y_pred.shape != b.y_pred.shape:
        raise DistillError("agreement needs both models scored on the same rows; evaluate them on one split")
    return float((a.y_pred == b.y_pred).mean())


def chance(pred: Predictions) -> dict[str, float]:
    """How far above chance: majority-class rate and Cohen's κ (0 = chance, 1 = perfect)."""
    majority = np.bincount(pred.y_true).max() / len(pred.y_true)
    one_class = len(np.union1d(pred.y_true, pred.y_pred)) == 1  # κ is 0/0 there: call it perfect
    from sklearn.metrics import cohen_kappa_score

    kappa = 1.0 if one_class else float(cohen_kappa_score(pred.y_true, pred.y_pred))
    return {"majority_rate": float(majority), "kappa": kappa}


# ---------------------------------------------------------------- latency


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the body with ``n`` intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_inputs(rows: Iterable[dict], n_single: int = 64, batch_size: int = 32,
                   n_batches: int = 2) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Tokenized rows → (batch-1 inputs, batch-``batch_size`` inputs), rows cycled to fill them."""
    rows = [{k: r[k] for k in MODEL_INPUTS if k in r} for r in rows]
    if not rows:
        raise DistillError("latency needs at least one text; pass latency_texts or a non-empty split")
    pick = lambda i: rows[i % len(rows)]  # noqa: E731
    singles = [pad_rows([pick(i)]) for i in range(min(n_single, len(rows)))]
    big = [pad_rows([pick(b * batch_size + i) for i in range(batch_size)]) for b in range(n_batches)]
    return singles, big


def measure_latency(forward: Forward, singles: Sequence[dict], big: Sequence[dict], threads: int = 1,
                    warmup: int = 5, repeats: int = 50, big_repeats: int = 3) -> dict:
    """CPU timing: p50/p90 milliseconds of ``repeats`` batch-1 calls (cycling ``singles``) and
    rows/second over ``big_repeats`` passes of the batch-32 inputs, after one call on every input and
    ``warmup`` more each.

    Every input is run once first because each new sequence length pays one-off costs (oneDNN builds a
    kernel per shape): without that pass the first of two same-shape students in a report timed 1.5-2x
    slower at batch 1 than the second, whichever came first (WNUT-16, 4x128 KD vs no-KD twin)."""
    with torch_threads(threads):
        for batch in [*singles, *big]:
            forward(batch)
        for i in range(warmup):
            forward(singles[i % len(singles)])
            forward(big[i % len(big)])
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            forward(singles[i % len(singles)])
            times.append(time.perf_counter() - start)
        rows, start = 0, time.perf_counter()
        for _ in range(big_repeats):
            for batch in big:
                forward(batch)
                rows += len(batch["input_ids"])
        elapsed = time.perf_counter() - start
    ms = 1000 * np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "throughput_per_s": rows / elapsed, "batch_size": len(big[0]["input_ids"]),
            "threads": threads, "warmup": warmup, "repeats": repeats}
