"""Small tensor helpers of the BERT layers: activations, the padding bias, byte-mask dropout, and
the packing of real tokens that lets every per-token layer skip padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError


def activation(name: str):
    """The feed-forward non-linearity named by ``config.hidden_act``."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    raise DistillError(f"hidden_act={name!r} is not supported; use gelu, gelu_new, relu or silu")


def mask_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) 1/0 mask → additive bias (B, 1, 1, T): 0 for real keys, dtype-min for padding."""
    bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return bias  # (B, 1, 1, T)


def dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout with a byte-sized random mask: same distribution as ``F.dropout`` up to
    p's 1/256 quantisation, but cheaper RNG and memory on the (B, nh, T, T) attention maps."""
    drop_below = round(256 * p)  # p is used as drop_below / 256, and the rescale matches it exactly
    keep = torch.empty(x.shape, dtype=torch.uint8, device=x.device).random_(0, 256) >= drop_below
    return torch.where(keep, x * (256.0 / (256 - drop_below)), 0.0)


class Packing:
    """The real tokens of a padded batch, packed: every per-token layer runs on (N, H), N = real
    tokens, and only attention sees the padded (B, T) layout. Padding costs no dense compute."""

    def __init__(self, attention_mask: Tensor, enabled: bool):
        self.B, self.T = attention_mask.shape
        self.index = None
        if enabled and not bool(attention_mask.all()):
            self.index = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,)

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, D) → (N, D); identity when nothing is padded."""
        if self.index is None:
            return x
        return x.reshape(self.B * self.T, x.shape[-1]).index_select(0, self.index)  # (N, D)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, D) → (B, T, D) with zeros at padded positions; identity when nothing is padded."""
        if self.index is None:
            return x
        out = x.new_zeros(self.B * self.T, x.shape[-1]).index_copy(0, self.index, x)
        return out.view(self.B, self.T, x.shape[-1])  # (B, T, D)
