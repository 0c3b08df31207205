"""distill: knowledge distillation from a fine-tuned BERT teacher into a small, fast student."""

from distill.errors import DistillError
from distill.outputs import ModelOutputs

__all__ = ["DistillError", "ModelOutputs"]
__version__ = "0.1.0"
