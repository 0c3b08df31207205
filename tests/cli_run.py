"""`distill ARGS` run inside the test process, answered as `subprocess.run(["distill", *ARGS])` would be.

A fresh `distill` process spends ~10 s of this 2-core machine importing torch, torch._dynamo, transformers,
datasets and sklearn before it does anything; a pytest worker imports them once. The command line is the same
code either way: `distill.cli.main(ARGS)` is what the `distill` program and `python -m distill.cli` call. What only
a separate process shows (signals, exit codes at the interpreter, permissions, launchers, which modules a run
imports, output into a closed pipe, the installed entry point) is tested with one.

Global state a run may touch is put back afterwards: environment, working dir, sys.argv, stdin/stdout/stderr,
root logging handlers, warning filters and torch's thread count.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _environ(changes: dict[str, str]):
    before = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _process_state(cwd: Path):
    """The working dir, argv, root logging (emptied, so `main`'s basicConfig or Hydra's job logging writes
    into the captured streams), warning filters and intra-op threads, restored on the way out."""
    root = logging.getLogger()
    handlers, level, argv, threads = root.handlers[:], root.level, sys.argv[:], torch.get_num_threads()
    here = os.getcwd()
    root.handlers[:] = []
    os.chdir(cwd)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.chdir(here)
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()  # Hydra's console handler on the captured stream
        root.handlers[:], sys.argv = handlers, argv
        root.setLevel(level)
        torch.set_num_threads(threads)


def run_main(main: Callable[[], int | None], argv: list[str], cwd: Path | str = ROOT,
             env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """A program's ``main()`` with ``sys.argv = argv`` and ``env`` added to the environment: its exit code, stdout
    and stderr. An exception that escapes it is what the program would print as a traceback with exit code 1,
    so it is that here."""
    out, err = io.StringIO(), io.StringIO()
    with _environ({"HF_HUB_OFFLINE": "1", **(env or {})}), _process_state(Path(cwd)), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        saved_stdin, sys.stdin, sys.argv = sys.stdin, io.StringIO(stdin or ""), argv
        try:
            code = main() or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdin = saved_stdin
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def distill(*args, cwd: Path | str = ROOT, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """``distill *args``: `distill.cli.main(args)`, as the program calls it."""
    from distill.cli import main

    argv = ["distill", *(str(a) for a in args)]
    return run_main(lambda: main(argv[1:]), argv, cwd=cwd, env=env, stdin=stdin)
