"""Run-time stand-ins that let the benchmark's peer libraries import next to this torch build.

torchdistill (1.1.5) imports torchvision when it loads: an image-model registry, a dataset registry
and two CIFAR model files read it at import time, though nothing the benchmark drives (DistillationBox,
its forward hooks, losses, optimizer and scheduler registries) uses it. The torchvision pip picks next
to a CPU-only torch from PyPI is a CUDA build: it cannot load, and while it is installed transformers
fails to import its BERT classes, which breaks this project's tests. So the ``bench`` extra is installed
with ``--no-deps`` and no torchvision, and ``import_torchdistill`` puts an empty torchvision module tree
in ``sys.modules`` for the length of torchdistill's import, only when a real torchvision cannot be
imported. Nothing in site-packages is edited; every name read from the stand-in is a placeholder that
raises when called, so no code can run on a fake; the stand-in is removed again once torchdistill has
loaded, so the rest of the process sees no torchvision.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import sys
import types

used = False  # whether torchdistill was imported over the stand-in (reported next to its version)
# the modules torchdistill's import reads names from (models.official, datasets.registry, CIFAR models)
STAND_IN = ("torchvision", "torchvision.models", "torchvision.models.detection", "torchvision.models.segmentation",
            "torchvision.models.quantization", "torchvision.models.densenet", "torchvision.models.resnet",
            "torchvision.datasets")


class Unavailable:
    """What every name of the stand-in resolves to (base classes, functions): raises when used."""

    def __init__(self, *args, **kwargs):
        raise ImportError("torchvision is a stand-in here (benchmarks/peer_shims.py); install a torchvision "
                          "built for this torch to use torchdistill's image models or datasets")


def _missing(name: str):
    if name.startswith("__"):  # the import system probes dunders (__path__, __file__): answer honestly
        raise AttributeError(name)
    return Unavailable


def _stub(name: str) -> types.ModuleType:
    module = types.ModuleType(name, "stand-in (benchmarks/peer_shims.py)")
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)  # find_spec() callers get a spec
    module.__path__ = []
    module.__getattr__ = _missing  # PEP 562: `from torchvision.models.resnet import BasicBlock` gets a placeholder
    return module


def real_torchvision() -> bool:
    """Whether a working torchvision imports; a failed import's half-loaded submodules are dropped."""
    try:
        importlib.import_module("torchvision")
        return True
    except Exception:  # not installed (ModuleNotFoundError), or a build for another torch (OSError, RuntimeError)
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        return False


@contextlib.contextmanager
def torchvision_stand_in():
    """The stand-in tree in ``sys.modules`` while the block runs (yields True), or nothing when a real
    torchvision imports (yields False)."""
    if real_torchvision():
        yield False
        return
    stubs = {name: _stub(name) for name in STAND_IN}
    for name, module in stubs.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(stubs[parent], child, module)
    sys.modules.update(stubs)
    try:
        yield True
    finally:
        for name, module in stubs.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def import_torchdistill():
    """torchdistill, imported over the stand-in when no real torchvision imports (``used`` says which);
    loading ``core.distillation`` loads the model, dataset, loss and optimizer registries, so nothing of
    torchdistill imports torchvision later."""
    global used
    if "torchdistill.core.distillation" not in sys.modules:
        with torchvision_stand_in() as shimmed:
            import torchdistill.core.distillation  # noqa: F401
        used = shimmed
    return sys.modules["torchdistill"]
