"""Atomic, pruned training checkpoints on top of ``accelerator.save_state`` / ``load_state``.

A checkpoint is written into ``checkpoints/.tmp-step_N`` and renamed to ``checkpoints/step_N`` only
once complete (``os.replace`` is atomic on one filesystem), so a crash mid-write leaves the previous
checkpoint as the newest valid one. ``trainer_state.json`` holds the loop's own counters as JSON;
no pickles are written or read beyond accelerate's own (which it loads with ``weights_only``): modules
outside the prepared ones (the weights' moving average) go to ``<name>.safetensors``, not to accelerate's
``register_for_checkpointing``, whose pickles it loads with ``weights_only=False``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from distill.errors import DistillError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "run_config.json"  # the flat settings the run had: a resume with other settings is refused
# trainer settings that do not change what a run computes: where and how it logs, caches, keeps checkpoints
BOOKKEEPING = frozenset({"resume", "log_with", "project", "wandb_mode", "run_name", "tags", "cache_dir", "keep_last",
                         "log_every", "cache_max_gb"})
# settings a resumed run may change: the bookkeeping, and how long it trains (a new epochs / max_steps
# is honoured: the schedule is rebuilt for the new length), not what a step computes
FREE_TO_CHANGE = BOOKKEEPING | {"teacher_cache", "epochs", "max_steps", "allow_untrained"}  # last: a guard only
PIPELINE_ONLY = ("export.", "baseline.", "finetune.", "intermediate.", "control", "stage_root", "description",
                 "auto.", "target.")
# trainer and data.augment keys added after runs existed, with the value that computes what runs before them did:
# absent from an older checkpoint or stage key means that value, so those runs still resume (with it) and their
# stage dirs are reused
ADDED_WITH = {"metric_for_best": None, "trim_embeddings": False, "mask_share": 0.0, "entity_words": False,
              "freeze_word_embeddings": False, "project_word_embeddings": False, "ema_decay": None}


def checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root/checkpoints``, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(accelerator: Accelerator, root: str | os.PathLike, state: dict, keep_last: int,
                    config: dict | None = None, modules: dict[str, nn.Module] | None = None) -> Path:
    """Save model/optimizer/scheduler/RNG (+ ``state``, + the run's flat ``config``, + ``modules`` by name)
    atomically; keep the newest ``keep_last``."""
    folder = Path(root) / "checkpoints"
    final = folder / f"step_{state['global_step']:08d}"
    tmp = folder / f".tmp-{final.name}"
    try:
        return _write(accelerator, root, state, keep_last, config, final, tmp, modules or {})
    except (OSError, SafetensorError) as e:  # a full disk, a read-only dir: the last complete checkpoint stays
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = checkpoints(root)
        kept = f"the newest complete one, {kept[-1].name}, is intact" if kept else "there is no earlier one"
        raise DistillError(f"could not write checkpoint {final.name} in {folder} ({type(e).__name__}: {e}); {kept}; "
                           "free disk space or fix permissions, then run the same command again to resume") from None


def _write(accelerator: Accelerator, root, state: dict, keep_last: int, config: dict | None, final: Path,
           tmp: Path, modules: dict[str, nn.Module]) -> Path:
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        for name, module in modules.items():  # save_model: tied tensors (a masked-LM's decoder) stored once
            save_model(module, str(tmp / f"{name}.safetensors"))
        if config is not None:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str))
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        # pruned here: accelerate's total_limit prunes only its automatic checkpoint_N dirs, not atomic ones
        for old in checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def changed_settings(saved: dict, config: dict) -> list[str]:
    """``key=old (now new)`` for every setting that changes what the run computes."""
    keys = sorted(set(saved) | set(config))
    keep = [k for k in keys if k.rsplit(".", 1)[-1] not in FREE_TO_CHANGE and not k.startswith(PIPELINE_ONLY)]
    missing = "(unset)"
    added = {k: ADDED_WITH[k.rsplit(".", 1)[-1]] for k in keep if k not in saved and k.rsplit(".", 1)[-1] in ADDED_WITH}
    saved = {**{k: "None" if v is None else v for k, v in added.items()}, **saved}  # as flat_scalars writes them
    return [f"{k}={saved.get(k, missing)} (now {config.get(k, missing)})" for k in keep
            if not _same(saved.get(k, missing), config.get(k, missing))]


def _same(a, b) -> bool:
    """Equal as saved settings: numbers by value (an untyped node's ``0`` is the ``0.0`` it was), the rest as JSON."""
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
        return float(a) == float(b)
    return json.dumps(a, default=str) == json.dumps(b, default=str)


def _check_same_run(path: Path, root: str | os.PathLike, config: dict | None) -> None:
    if config is None or not (path / CONFIG_FILE).is_file():
        return
    changed = changed_settings(json.loads((path / CONFIG_FILE).read_text()), config)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise DistillError(f"{root} holds checkpoints of a run with other settings: {', '.join(changed[:3])}{more}; "
                           "resume with the old settings, or give this run a new hydra.run.dir")


def resume(accelerator: Accelerator, root: str | os.PathLike, spec: str | None,
           config: dict | None = None, modules: dict[str, nn.Module] | None = None) -> dict | None:
    """Restore the newest loadable checkpoint (``spec="auto"``) or the one at path ``spec``.

    Returns the loop state saved with it, or None when there is nothing to resume from. A corrupt
    newest checkpoint is skipped with a log line and the one before it is used. A checkpoint saved
    with other settings than ``config`` (flat) stops the run with one line naming them.
    """
    if not spec:
        return None
    if spec == "auto":
        candidates = list(reversed(checkpoints(root)))
    else:
        path = Path(spec)
        if not (path / STATE_FILE).is_file():
            raise DistillError(f"resume={spec!r} is not a complete checkpoint dir; use resume=auto or null")
        candidates = [path]
    for path in candidates:
        _check_same_run(path, root, config)
        try:
            accelerator.load_state(str(path))
            for name, module in (modules or {}).items():
                load_model(module, str(path / f"{name}.safetensors"))
            state = json.loads((path / STATE_FILE).read_text())
        except Exception as e:  # a truncated/corrupt file: fall back to the previous checkpoint
            log.warning("checkpoint %s is unreadable (%s: %s); trying an older one", path, type(e).__name__, e)
            continue
        log.info("resumed from %s (step %d)", path, state["global_step"])
        return state
    if spec != "auto" or candidates:
        raise DistillError(f"no loadable checkpoint under {Path(root) / 'checkpoints'}; delete it or set resume=null")
    return None
