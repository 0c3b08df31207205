"""One rank of the 2-process test: `torchrun --nproc_per_node 2 -m tests.run_two_process OUT`."""

import os
import sys

import accelerate
from safetensors.torch import save_file

from distill.engine import train
from tests import engine_helpers as H


def main() -> None:
    out = sys.argv[1]
    teacher, student = H.models()
    train_loader, val_loader = H.loaders(batch_size=8)  # the global batch, split over the processes
    result = train(H.config(epochs=2, split_batches=True, load_best_at_end=False, resume=None), student,
                   H.KDTestLoss(), train_loader, val_loader, out, "sequence", "ab", teacher=teacher)
    state = accelerate.PartialState()
    assert result["num_processes"] == 2 == state.num_processes, result["num_processes"]
    if state.is_main_process:
        save_file({k: v.contiguous() for k, v in result["student"].state_dict().items()},
                  os.path.join(out, "final.safetensors"))
        print("num_processes", result["num_processes"])


if __name__ == "__main__":
    main()
