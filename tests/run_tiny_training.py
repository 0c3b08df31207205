"""Run a tiny distillation to completion, or SIGKILL itself part-way.

    python -m tests.run_tiny_training OUT_DIR [--kill-after-first-checkpoint] [--kill-at-batch N]
        [--kill-in-second-checkpoint-write] [--cache DIR] [--layer-losses]
Writes OUT_DIR/final.safetensors with the student's final weights. ``--kill-at-batch N`` dies in the
forward of batch N (counted from this process's start); ``--kill-in-second-checkpoint-write`` dies while
the second checkpoint is still in its temp dir (its weights file cut to half), before the rename that
would publish it; ``--cache DIR`` turns the teacher cache on; ``--layer-losses`` distils hidden states, attention
maps and Q/K/V relations too (which that cache then holds).
"""

import logging
import os
import signal
import sys

import accelerate
from safetensors.torch import save_file

import distill.engine
from tests import engine_helpers as H


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    out, args = sys.argv[1], sys.argv[2:]
    if "--kill-after-first-checkpoint" in args:
        real_save = distill.engine.save_checkpoint

        def save_then_die(*a, **kwargs):
            real_save(*a, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        distill.engine.save_checkpoint = save_then_die
    if "--kill-in-second-checkpoint-write" in args:
        real_state, calls = accelerate.Accelerator.save_state, []

        def die_halfway(self, output_dir, **kwargs):
            calls.append(output_dir)
            if len(calls) == 2:
                real_state(self, output_dir, **kwargs)
                weights = os.path.join(output_dir, "model.safetensors")
                with open(weights, "r+b") as f:
                    f.truncate(os.path.getsize(weights) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_state(self, output_dir, **kwargs)

        accelerate.Accelerator.save_state = die_halfway
    kill = (int(args[args.index("--kill-at-batch") + 1]), signal.SIGKILL) if "--kill-at-batch" in args else None
    cache = args[args.index("--cache") + 1] if "--cache" in args else None
    teacher, student = H.models(dropout=0.1)  # dropout on: the RNG state must be restored too
    if "--layer-losses" in args:
        loss = H.LayerKDLoss(teacher, student, signal_at=kill)
    else:
        loss = H.SignalAt(*kill) if kill else H.KDTestLoss()
    train_loader, val_loader = H.loaders()
    cfg = H.config(epochs=2, save_every=3, load_best_at_end=False, teacher_cache=cache is not None, cache_dir=cache)
    result = distill.engine.train(cfg, student, loss, train_loader, val_loader, out, "sequence", ["a", "b"],
                                  teacher=teacher, cache_key="tiny" if cache else None)
    save_file({k: v.contiguous() for k, v in result.student.state_dict().items()},
              os.path.join(out, "final.safetensors"))


if __name__ == "__main__":
    import atexit
    import gc

    atexit.register(gc.freeze)  # as the distill program does: exit skips collecting torch's objects (~1 s)
    main()
