"""Ctrl-C and SIGTERM (a scheduler's preemption) end a run at the next optimizer step, with a checkpoint.

Python turns SIGINT into a KeyboardInterrupt wherever the loop happens to be — mid-backward, or
mid-way through writing a checkpoint — and the run ends in a 30-frame trace with the work since the
last epoch lost. Here the first signal only raises a flag; the loop finishes the step it is in, saves
a checkpoint and stops with one line saying how to resume. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """``with StopRequest() as stop:`` … ``if stop.agreed(accelerator): save and leave``."""

    def __init__(self):
        self.requested, self._previous = False, {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user wants out now
        self.requested = True
        log.warning("%s: stopping after this step with a checkpoint (Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)

    def agreed(self, accelerator) -> bool:
        """True on every process once any process was signalled (they must checkpoint at the same step)."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor(float(self.requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, "max").item())
