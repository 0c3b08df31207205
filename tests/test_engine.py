"""The loop: exact resume after SIGKILL, atomic checkpoints, teacher cache, NaNs (launches: test_launch.py)."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import distill.checkpoint
from distill.engine import train
from distill.errors import DistillError
from tests import cli_run, run_tiny_training
from tests import engine_helpers as H

ROOT = Path(__file__).resolve().parents[1]


def _run(out, *flags):
    """tests/run_tiny_training.py: in a process of its own where it kills itself, in this one otherwise (the same
    main(), without a fresh process's imports; tests/cli_run.py)."""
    if not any(flag.startswith("--kill") for flag in flags):
        return cli_run.run_main(run_tiny_training.main, ["run_tiny_training", str(out), *flags])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tests.run_tiny_training", str(out), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_sigkilled_run_resumes_to_identical_weights(tmp_path):
    full = _run(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _run(tmp_path / "resumed", "--kill-after-first-checkpoint")
    assert killed.returncode == -9  # SIGKILL, not a clean exit
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step_00000003"]
    resumed = _run(tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a = load_file(tmp_path / "full" / "final.safetensors")
    b = load_file(tmp_path / "resumed" / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigkill_with_the_teacher_cache_on_resumes_to_identical_weights(tmp_path):
    """Issue 19 #6: rows cached (fp16) after the checkpoint but before the kill were read back on resume
    where the uninterrupted run had used the teacher's fp32 logits: weights differed by 2.4e-7. Kills: epoch
    0 with the teacher cache filling, mid epoch 1, and halfway through writing the step-6 checkpoint; each
    killed run resumes to the one uninterrupted run's weights."""
    full = _run(tmp_path / "full", "--cache", str(tmp_path / "cache-full"))
    assert full.returncode == 0, full.stderr[-2000:]
    a = load_file(tmp_path / "full" / "final.safetensors")
    for n, kill in enumerate([("--kill-at-batch", "5"), ("--kill-at-batch", "8"),
                              ("--kill-in-second-checkpoint-write",)]):
        out, cache = tmp_path / f"resumed{n}", str(tmp_path / f"cache{n}")
        killed = _run(out, "--cache", cache, *kill)
        assert killed.returncode == -9, kill
        if kill[0] == "--kill-in-second-checkpoint-write":  # the torn write stays in its temp dir, step 3 is whole
            assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [".tmp-step_00000006", "step_00000003"]
        resumed = _run(out, "--cache", cache)
        assert resumed.returncode == 0, (kill, resumed.stderr[-2000:])
        assert "resumed from" in resumed.stderr, kill
        b = load_file(out / "final.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), kill


@pytest.mark.parametrize("fault", [OSError("power cut"), SafetensorError("IoError: No space left on device")])
def test_crash_during_checkpoint_write_keeps_previous_loadable(tmp_path, monkeypatch, fault):
    teacher, student = H.models()
    train_loader, val_loader = H.loaders()
    train(H.config(epochs=1), student, H.KDTestLoss(), train_loader, val_loader, tmp_path, "sequence", "ab",
          teacher=teacher)
    good = distill.checkpoint.checkpoints(tmp_path)
    assert [p.name for p in good] == ["step_00000006"]

    def crash_midway(self, output_dir, **kwargs):
        Path(output_dir, "model.safetensors").write_bytes(b"half a file")
        raise fault

    monkeypatch.setattr("accelerate.Accelerator.save_state", crash_midway)
    teacher, student = H.models()
    train_loader, val_loader = H.loaders()
    with pytest.raises(DistillError, match=rf"could not write checkpoint step_00000006 in .* \({type(fault).__name__}: "
                                           r".*\); the newest complete one, step_00000006, is intact; free disk space"):
        train(H.config(epochs=2, resume=None), student, H.KDTestLoss(), train_loader, val_loader, tmp_path,
              "sequence", "ab", teacher=teacher)
    monkeypatch.undo()
    assert distill.checkpoint.checkpoints(tmp_path) == good  # the torn write is not a checkpoint
    teacher, student = H.models()
    train_loader, val_loader = H.loaders()
    result = train(H.config(epochs=2), student, H.KDTestLoss(), train_loader, val_loader, tmp_path, "sequence",
                   "ab", teacher=teacher)
    assert result.steps == 12  # resumed at 6, finished the second epoch


class CountingTeacher(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.config, self.calls = teacher, teacher.config, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.teacher(*args, **kwargs)


def _epoch_losses(tmp_path, name, cache):
    teacher, student = H.models()
    counting = CountingTeacher(teacher)
    train_loader, val_loader = H.loaders()
    result = train(H.config(epochs=2, teacher_cache=cache, log_every=1, load_best_at_end=False), student,
                   H.KDTestLoss(), train_loader, val_loader, tmp_path / name, "sequence", "ab",
                   teacher=counting, cache_key="k1")
    kd = [h["train/kd"] for h in result.history if "train/kd" in h]
    return kd, counting.calls


def test_teacher_cache_skips_teacher_in_epoch_two_with_same_losses(tmp_path):
    online, online_calls = _epoch_losses(tmp_path, "online", cache=False)
    cached, cached_calls = _epoch_losses(tmp_path, "cached", cache=True)
    assert online_calls == 12 and cached_calls == 6  # 6 batches per epoch; epoch 2 reads the cache
    assert len(online) == len(cached) == 12
    assert max(abs(a - b) for a, b in zip(online, cached)) <= 1e-3


def test_sigkill_with_layer_outputs_cached_resumes_to_identical_weights(tmp_path):
    """Issue 18: hidden states, attention maps and Q/K/V in the cache: a run killed while epoch 0 fills it
    resumes to the uninterrupted run's weights (rows cached before the kill are read back as fp16 in both)."""
    full = _run(tmp_path / "full", "--cache", str(tmp_path / "cache-full"), "--layer-losses")
    assert full.returncode == 0, full.stderr[-2000:]
    assert "teacher cache" in full.stderr and "hidden_states, attentions, qkv" in full.stderr
    killed = _run(tmp_path / "resumed", "--cache", str(tmp_path / "cache"), "--layer-losses", "--kill-at-batch", "5")
    assert killed.returncode == -9
    resumed = _run(tmp_path / "resumed", "--cache", str(tmp_path / "cache"), "--layer-losses")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a = load_file(tmp_path / "full" / "final.safetensors")
    b = load_file(tmp_path / "resumed" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_layer_cache_hands_back_the_teachers_outputs_at_the_mapped_layers(tmp_path):
    """Issue 18: the cache keeps only the layers the losses map (hidden 0 and 2, map 2, Q/K/V 2 of a 2-layer
    teacher), ragged by row length; a hit equals the online teacher at real positions (fp16), zero at padding."""
    from accelerate import Accelerator

    from distill.engine import LoopState, TeacherTargets, flags, open_cache

    teacher, student = H.models()
    loss = H.LayerKDLoss(teacher, student)
    train_loader, _ = H.loaders()
    cache = open_cache(H.config(teacher_cache=True), loss, teacher, train_loader.dataset, "sequence", "k", tmp_path)
    layers = cache.layers
    assert (layers.hidden_states, layers.attentions, layers.qkv) == ((0, 2), (2,), (2,))
    n = sum(len(r) for r in train_loader.dataset["input_ids"])
    n2 = sum(len(r) ** 2 for r in train_loader.dataset["input_ids"])
    assert cache.arrays["hidden_states"].shape == (n, 2, 32) and cache.arrays["attentions"].shape == (n2, 1, 4)
    targets = TeacherTargets(teacher, flags(loss.needs), cache, Accelerator(cpu=True), "sequence")
    state = LoopState()
    first = [(b, targets(b, state)) for b in train_loader]
    assert state.teacher_calls == len(train_loader) and cache.filled.all()
    for batch, handed in first:
        again = targets(batch, state)  # epoch 2: from the cache, identical to what epoch 1 was handed
        with torch.no_grad():
            online = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                             **flags(loss.needs))
        real = batch["attention_mask"].bool()
        cells = real[:, None, :, None] & real[:, None, None, :]
        assert torch.equal(again.logits, handed.logits) and torch.equal(again.hidden_states[2], handed.hidden_states[2])
        assert again.hidden_states[1] is None and again.attentions[0] is None and again.qkv[0] is None
        torch.testing.assert_close(again.logits, online.logits.half().float())
        for j in (0, 2):
            torch.testing.assert_close(again.hidden_states[j], online.hidden_states[j].half().float() * real[..., None])
        torch.testing.assert_close(again.attentions[1], online.attentions[1].half().float() * cells)
        for got, want in zip(again.qkv[1], online.qkv[1]):
            torch.testing.assert_close(got, want.half().float() * real[:, None, :, None])
    assert state.teacher_calls == len(train_loader)


def test_layer_cache_over_its_size_limit_runs_the_teacher_online(tmp_path, caplog):
    teacher, student = H.models()
    counting = CountingTeacher(teacher)
    train_loader, val_loader = H.loaders()
    with caplog.at_level(logging.INFO):
        result = train(H.config(epochs=2, teacher_cache=True, cache_max_gb=1e-6), student,
                       H.LayerKDLoss(teacher, student), train_loader, val_loader, tmp_path, "sequence", "ab",
                       teacher=counting, cache_key="k")
    assert counting.calls == result.teacher_calls == 12  # no cache: the teacher every step of both epochs
    assert "teacher cache off: attentions/hidden_states/logits/qkv for 48 rows would take 0.0 GB > " \
           "trainer.cache_max_gb=1e-06" in caplog.text


def test_layer_cache_skips_the_teacher_in_epoch_two_with_the_same_losses(tmp_path):
    def losses(name, cache):
        teacher, student = H.models()
        counting = CountingTeacher(teacher)
        train_loader, val_loader = H.loaders()
        result = train(H.config(epochs=2, teacher_cache=cache, log_every=1, load_best_at_end=False), student,
                       H.LayerKDLoss(teacher, student), train_loader, val_loader, tmp_path / name, "sequence", "ab",
                       teacher=counting, cache_key="k1")
        return [h["train/loss"] for h in result.history if "train/loss" in h], counting.calls

    online, online_calls = losses("online", False)
    cached, cached_calls = losses("cached", True)
    assert online_calls == 12 and cached_calls == 6
    assert max(abs(a - b) / a for a, b in zip(online, cached)) <= 1e-3


class NaNOnBatches(H.KDTestLoss):
    def __init__(self, bad_steps):
        super().__init__()
        self.bad_steps, self.calls = set(bad_steps), 0

    def forward(self, student, teacher, batch):
        total, parts = super().forward(student, teacher, batch)
        self.calls += 1
        if self.calls in self.bad_steps:
            total = total * float("nan")
        return total, parts


def test_nonfinite_loss_is_skipped_then_stops(tmp_path, caplog):
    """A non-finite step's update is skipped on the device (AdamW's found_inf: no host sync per step); it is
    counted, warned about and checked against max_nonfinite at the next log step."""
    teacher, student = H.models()
    train_loader, val_loader = H.loaders()
    result = train(H.config(epochs=1), student, NaNOnBatches({2}), train_loader, val_loader, tmp_path / "one",
                   "sequence", "ab", teacher=teacher)
    assert result.nonfinite == 1 and result.steps == 6  # the skipped step still counts
    assert "1 non-finite loss(es) by step 2: those updates were skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in result.student.parameters())
    assert [row["train/nonfinite"] for row in result.history if "train/nonfinite" in row] == [1, 1, 1]
    teacher, student = H.models()
    with pytest.raises(DistillError, match="3 non-finite losses in a row by step 4"):
        train(H.config(epochs=1, max_nonfinite=3), student, NaNOnBatches({2, 3, 4}), train_loader, val_loader,
              tmp_path / "three", "sequence", "ab", teacher=teacher)


def test_a_skipped_update_leaves_weights_and_optimizer_as_they_were(tmp_path):
    """Two steps whose second loss is NaN end with the weights of one step: the skip is exact, AdamW's
    moments and step count untouched (linear schedule without warm-up: step 1's lr is the same in both)."""
    def weights(loss, steps, name):
        teacher, student = H.models()
        train_loader, _ = H.loaders()
        result = train(H.config(max_steps=steps, load_best_at_end=False), student, loss, train_loader, None,
                       tmp_path / name, "sequence", "ab", teacher=teacher)
        return result.student.state_dict()

    one, skipped = weights(H.KDTestLoss(), 1, "one"), weights(NaNOnBatches({2}), 2, "skipped")
    assert all(torch.equal(one[k], skipped[k]) for k in one)


def test_finetuning_without_teacher_learns_the_task(tmp_path):
    _, student = H.models()
    train_loader, val_loader = H.loaders(n=96)
    result = train(H.config(epochs=8, lr=3e-3), student, H.KDTestLoss(with_teacher=False), train_loader,
                   val_loader, tmp_path, "sequence", "ab")
    assert result.teacher_calls == 0
    assert result.best >= 0.8  # chance is 0.5


@pytest.mark.parametrize("changes, message", [
    ({"grad_accum": 0}, "trainer.grad_accum=0 must be a positive integer"),
    ({"lr": -1}, "trainer.lr=-1 must be >= 0"),
    ({"lr": "abc"}, "trainer.lr='abc' must be a finite number"),
    ({"scheduler": "bogus"}, "trainer.scheduler='bogus': use one of linear, cosine"),
    ({"warmup_ratio": 2}, "trainer.warmup_ratio=2 must be in [0, 1]"),
    ({"max_steps": -1}, "trainer.max_steps=-1 must be a positive number of steps"),
    ({"max_steps": -5}, "trainer.max_steps=-5 must be a positive number of steps"),
    ({"epochs": 0}, "trainer.epochs=0 must be > 0"),
    ({"mixed_precision": "fp8"}, "trainer.mixed_precision='fp8': use no, bf16, fp16, auto or null"),
    ({"ema_decay": 1}, "trainer.ema_decay=1 must be in (0, 1), e.g. 0.999"),
    ({"ema_decay": 0}, "trainer.ema_decay=0 must be in (0, 1), e.g. 0.999"),
])
def test_impossible_trainer_settings_stop_with_one_line(changes, message):
    from distill.engine import TrainerConfig
    from distill.errors import DistillError

    with pytest.raises(DistillError) as err:
        TrainerConfig(**changes)
    assert str(err.value).startswith(message)
    TrainerConfig(epochs=0.5, lr=0, max_steps=None)  # fractional epochs and a frozen run are fine


@pytest.mark.parametrize("choice, key", [(None, "accuracy"), ("macro_f1", "macro_f1")])
def test_metric_for_best_picks_the_kept_step(tmp_path, choice, key):
    """Issue 17: the best checkpoint (and early stopping, the leaderboard) can follow macro-F1."""
    teacher, student = H.models()
    train_loader, val_loader = H.loaders()
    result = train(H.config(epochs=3, eval_every=2, metric_for_best=choice), student, H.KDTestLoss(), train_loader,
                   val_loader, tmp_path, "sequence", "ab", teacher=teacher)
    evals = [row for row in result.history if f"eval/{key}" in row]
    assert len(evals) == 9 and result.best_metric == key
    best = max(evals, key=lambda row: row[f"eval/{key}"])  # the first step reaching the maximum is kept
    assert (result.best, result.best_step) == (best[f"eval/{key}"], best["step"])
    with pytest.raises(DistillError, match="trainer.metric_for_best='entity_f1' is not a validation metric of a "
                                           "sequence task; use one of accuracy, macro_f1"):
        train(H.config(metric_for_best="entity_f1"), student, H.KDTestLoss(), train_loader, val_loader,
              tmp_path / "x", "sequence", "ab", teacher=teacher)


@pytest.mark.parametrize(("grad_accum", "steps"), [(None, 3), (1, 6)])
def test_launcher_accumulation_applies_unless_the_config_sets_it(tmp_path, monkeypatch, grad_accum, steps):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")  # what accelerate launch / config sets
    teacher, student = H.models()
    train_loader, val_loader = H.loaders()  # 6 batches
    result = train(H.config(epochs=1, grad_accum=grad_accum), student, H.KDTestLoss(), train_loader, val_loader,
                   tmp_path, "sequence", "ab", teacher=teacher)
    assert result.steps == steps


def test_resumed_run_logs_each_step_once(tmp_path):
    teacher, student = H.models()
    train_loader, val_loader = H.loaders()
    train(H.config(epochs=2), student, H.KDTestLoss(), train_loader, val_loader, tmp_path, "sequence", "ab",
          teacher=teacher)
    first = (tmp_path / "metrics.jsonl").read_text()
    import shutil

    shutil.rmtree(distill.checkpoint.checkpoints(tmp_path)[-1])  # as if killed before the last checkpoint
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 12, "train/lo')  # ... and mid-way through writing a row
    teacher, student = H.models()
    train_loader, val_loader = H.loaders()
    train(H.config(epochs=2), student, H.KDTestLoss(), train_loader, val_loader, tmp_path, "sequence", "ab",
          teacher=teacher)  # resumes at step 6 and logs steps 8-12 again
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], "eval/accuracy" in r) for r in rows]
    assert len(keys) == len(set(keys)) == len(first.splitlines())
    assert [k for k in keys if k[1]] == [(6, True), (12, True)]


@pytest.mark.parametrize("ema_decay", [None, 0.8])
def test_ctrl_c_finishes_the_step_saves_a_checkpoint_and_resumes_exactly(tmp_path, ema_decay):
    """With ``trainer.ema_decay`` the kept weights are the moving average: restored from the checkpoint too."""
    def run(out, loss):
        teacher, student = H.models(dropout=0.1)
        train_loader, val_loader = H.loaders()
        return train(H.config(epochs=2, load_best_at_end=False, ema_decay=ema_decay), student, loss, train_loader,
                     val_loader, out, "sequence", "ab", teacher=teacher)

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started in the background
    message = r"interrupted at step 3: checkpoint saved in .*; run the same command"
    full, resumed = H.cut_by_ctrl_c_and_resumed(run, tmp_path, message)
    assert resumed.steps == 12
    assert all(torch.equal(full[k], v) for k, v in resumed.student.state_dict().items())
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_bf16_trains_within_tolerance_of_fp32_and_auto_follows_the_machine(tmp_path, monkeypatch):
    """bf16 autocast (teacher and student) moves the losses by little, not by nothing; ``auto`` is bf16
    exactly where the machine runs bf16 natively, and fp32 exactly where it does not."""
    import distill.launch

    def run(name, precision):
        teacher, student = H.models()
        train_loader, val_loader = H.loaders()
        result = train(H.config(epochs=1, log_every=1, mixed_precision=precision, load_best_at_end=False), student,
                       H.KDTestLoss(), train_loader, val_loader, tmp_path / name, "sequence", "ab", teacher=teacher)
        losses = torch.tensor([r["train/loss"] for r in result.history if "train/loss" in r])
        return losses, result.student.state_dict()

    fp32, fp32_weights = run("fp32", "no")
    bf16, bf16_weights = run("bf16", "bf16")
    assert len(fp32) == 6 and not torch.equal(fp32, bf16)  # autocast did run in bf16
    # bf16 keeps 8 bits of mantissa: here the first loss (before any update) moves by 2%; stay within 4%
    assert (bf16 - fp32).abs().max() < 0.04 * fp32.abs().max(), (fp32, bf16)
    monkeypatch.setattr(distill.launch, "fast_bf16", lambda: True)
    auto, auto_weights = run("auto_bf16", "auto")
    assert torch.equal(auto, bf16) and all(torch.equal(auto_weights[k], v) for k, v in bf16_weights.items())
    monkeypatch.setattr(distill.launch, "fast_bf16", lambda: False)
    auto, auto_weights = run("auto_fp32", "auto")
    assert torch.equal(auto, fp32) and all(torch.equal(auto_weights[k], v) for k, v in fp32_weights.items())


def test_a_real_composite_loss_asks_the_teacher_only_for_the_maps_it_reads(tmp_path):
    """engine.train with distill's own losses, not the stub: attention KL on student layer 1 ↔ teacher
    layer 2 plus hard CE. The teacher is asked for layer 2's attention maps only, and the attention term
    logged at step 1 equals the term computed by hand on the batch the teacher was given."""
    import copy

    from distill.engine import flags
    from distill.losses.attention import AttentionKL
    from distill.losses.base import CompositeLoss
    from distill.losses.hard import HardCrossEntropy

    teacher, student = H.models()
    initial = copy.deepcopy(student)
    loss = CompositeLoss(attention=AttentionKL(layer_map=[[1, 2]]), hard=HardCrossEntropy(weight=0.5))
    loss.setup(student.config, teacher.config)
    asked = []
    teacher.register_forward_pre_hook(lambda m, a, k: asked.append(k), with_kwargs=True)
    train_loader, val_loader = H.loaders()
    result = train(H.config(epochs=1, log_every=1, load_best_at_end=False), student, loss, train_loader,
                   val_loader, tmp_path, "sequence", "ab", teacher=teacher)
    assert len(asked) == result.teacher_calls == 6
    assert {k["output_attentions"] for k in asked} == {frozenset({2})} and not asked[0]["output_hidden_states"]
    first = {k: v for k, v in asked[0].items() if torch.is_tensor(v)}  # the step-1 batch's model inputs
    with torch.no_grad():  # the teacher is frozen; the student as it was before step 1
        t = teacher(**first, **flags(loss.needs, loss.teacher_map_layers()))
        s = initial(**first, **flags(loss.needs))
        expected = loss.terms["attention"](s, t, first).item()
    assert t.attentions[0] is None and t.attentions[1] is not None  # layer 1's map was never computed
    assert result.history[0]["train/attention"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("load_best_at_end, grad_accum", [(False, 1), (True, 1), (False, 2)])
def test_ema_keeps_the_moving_average_of_the_weights_every_step_reached(tmp_path, load_best_at_end, grad_accum):
    """Golden: with a constant learning rate the weights after optimizer step k do not depend on the run's length,
    so runs of 1, 2 and 3 steps give w1, w2, w3; ``trainer.ema_decay=0.6`` over 3 steps keeps e3, where e1 = w1 and
    e_k = 0.6 e_(k-1) + 0.4 w_k. Kept by copying the average in (no validation) or from the best checkpoint (the
    one validation at the end scored the average); with 2 batches a step, averaged once a step."""
    def run(steps, ema_decay=None, validate=False):
        teacher, student = H.models()
        train_loader, val_loader = H.loaders()
        cfg = H.config(max_steps=steps, scheduler="constant", ema_decay=ema_decay, load_best_at_end=load_best_at_end,
                       grad_accum=grad_accum)
        out = tmp_path / f"{steps}-{ema_decay}"
        return train(cfg, student, H.KDTestLoss(), train_loader, val_loader if validate else None, out, "sequence",
                     "ab", teacher=teacher).student.state_dict()

    w1, w2, w3 = (run(k) for k in (1, 2, 3))
    kept = run(3, ema_decay=0.6, validate=load_best_at_end)
    for key, last in w3.items():
        expected = 0.6 * (0.6 * w1[key] + 0.4 * w2[key]) + 0.4 * last
        assert torch.allclose(kept[key], expected, rtol=0, atol=1e-6), key
    assert max(float((kept[k] - w3[k]).abs().max()) for k in w3) > 1e-4  # not the last weights (lr 1e-3 a step)
