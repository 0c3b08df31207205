"""Small tensor helpers of the BERT layers: activations, the padding bias, a cheaper CPU dropout, and
the packing of real tokens that lets every per-token layer skip padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


_LANES = 1 << 15  # the mask's resolution: p is used as round(32768 p) / 32768


def dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout: each element kept with probability 1 - p (p in steps of 1/32768) and scaled by
    1/(1 - p). On CPU the mask is cut from 64-bit random words, four 15-bit lanes per word: torch's CPU
    dropout draws one double per element (``bernoulli_``), about 4x the time, and it was ~15% of a
    CPU training step. Elsewhere ``F.dropout`` (its GPU kernels draw cheaply)."""
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    drop_below = round(_LANES * p)
    if drop_below >= _LANES:
        return x * 0.0  # still in the graph, as F.dropout's p = 1
    # (⌈n/4⌉,) words of 63 random bits each
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_()
    lanes = words.view(torch.int16)[: x.numel()].view(x.shape) & 0x7FFF  # uniform in 0..32767 (the sign bit dropped)
    return torch.where(lanes >= drop_below, x * (_LANES / (_LANES - drop_below)), 0.0)


class Dropout(nn.Module):
    """``nn.Dropout`` through ``dropout`` above: same module (no weights, same place in the state dict)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise DistillError(f"a dropout probability must be in [0, 1], not {p}; fix hidden_dropout_prob / "
                               "classifier_dropout in the model's config")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p) if self.training and self.p > 0 else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
