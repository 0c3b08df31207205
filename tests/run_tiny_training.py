"""Run a tiny distillation to completion (or SIGKILL itself after the first checkpoint).

    python -m tests.run_tiny_training OUT_DIR [--kill-after-first-checkpoint]
Writes OUT_DIR/final.safetensors with the student's final weights.
"""

import logging
import os
import signal
import sys

from safetensors.torch import save_file

import distill.engine
from tests import engine_helpers as H


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    out = sys.argv[1]
    if "--kill-after-first-checkpoint" in sys.argv:
        real_save = distill.engine.save_checkpoint

        def save_then_die(*args, **kwargs):
            real_save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)  # no clean exit, no finally blocks

        distill.engine.save_checkpoint = save_then_die
    teacher, student = H.models(dropout=0.1)  # dropout on: the RNG state must be restored too
    train_loader, val_loader = H.loaders()
    cfg = H.config(epochs=2, save_every=3, load_best_at_end=False)
    result = distill.engine.train(cfg, student, H.KDTestLoss(), train_loader, val_loader, out, "sequence",
                                  ["a", "b"], teacher=teacher)
    save_file({k: v.contiguous() for k, v in result["student"].state_dict().items()},
              os.path.join(out, "final.safetensors"))


if __name__ == "__main__":
    main()
