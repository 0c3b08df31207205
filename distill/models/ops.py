"""Small tensor helpers of the BERT layers: activations, the padding bias, a cheaper CPU dropout, the
packing of real tokens that lets every per-token layer skip padding, and a faster CPU linear for
inference."""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from distill.errors import DistillError

ONEDNN_INFERENCE = True  # False: F.linear everywhere (benchmarks/onednn_speed.py times both)


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


# hidden_act -> oneDNN's post-op (attr, algorithm) fused into the GEMM
_ONEDNN_ACT = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
               "gelu_fast": ("gelu", "tanh"), "relu": ("relu", ""), "silu": ("swish", ""), "swish": ("swish", "")}
# modules inside ``packed_while_frozen`` -> how many scopes hold them; weak: they die with the model
_SCOPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# scoped module -> {variant: (the sources' (data_ptr, version), packed weight, bias)}
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def _onednn_works() -> bool:
    """oneDNN's linear (the op torch's own CPU compiler emits) is in this torch build and agrees with
    F.linear. Probed once on fixed fp32 CPU values: no random numbers drawn, so seeded runs are unchanged."""
    try:
        x = torch.linspace(-1, 1, 40, dtype=torch.float32, device="cpu").view(5, 8)
        w = torch.linspace(-0.5, 0.5, 24, dtype=torch.float32, device="cpu").view(3, 8)
        b = torch.linspace(0, 0.2, 3, dtype=torch.float32, device="cpu")
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):
        return False
    return torch.allclose(out, F.linear(x, w, b), atol=1e-5)


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def onednn_inference(x: Tensor) -> bool:
    """True where ``linear`` takes oneDNN: no autograd, fp32 on a CPU, no autocast, oneDNN enabled, not
    being traced, exported or compiled (those need torch's own ops in the graph; torch.export counts as
    compiling)."""
    return (ONEDNN_INFERENCE and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and not _cpu_autocast() and torch.backends.mkldnn.enabled
            and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling() and _onednn_works())


@contextlib.contextmanager
def packed_while_frozen(model: nn.Module | None):
    """Inside, the linears of ``model`` whose weights are frozen (no grad) keep a oneDNN-packed copy
    between calls — a KD run's teacher, whose weights nothing touches for the run (one more copy of
    its linear weights in memory); on exit the copies are dropped. Outside, every call reads the live
    weights: a kept copy could go stale unseen (an in-place edit through ``.data``, or fused AdamW, does
    not move a tensor's version)."""
    modules = list(model.modules()) if model is not None else []
    for m in modules:
        _SCOPED[m] = _SCOPED.get(m, 0) + 1
    try:
        yield
    finally:
        for m in modules:
            if m in _SCOPED and _SCOPED[m] > 1:
                _SCOPED[m] -= 1
            else:
                _SCOPED.pop(m, None)
                _PACKED.pop(m, None)


def linear(owner: nn.Module, x: Tensor, weights: Callable[[], tuple[Tensor, Tensor | None]],
           sources: tuple[Tensor, ...], act: str | None = None, variant: object = None) -> Tensor:
    """``act(F.linear(x, *weights()))``, x (..., in) → (..., out); ``act`` a ``hidden_act`` name or None.

    In no-grad fp32 CPU inference (a teacher's forward, evaluation, prediction) it runs oneDNN's linear
    with the activation fused into the GEMM: on this project's CPUs torch's fp32 F.linear (MKL) was
    15-35% slower on BERT's shapes. Inside ``packed_while_frozen``, frozen weights are packed once per
    (``owner``, ``variant``), repacked if a source's storage or version moves. Results agree with
    F.linear to fp32 rounding.
    """
    if not onednn_inference(x):
        w, b = weights()
        y = F.linear(x, w, b)
        return activation(act)(y) if act else y
    if owner in _SCOPED and not any(p.requires_grad for p in sources):
        key = tuple((p.data_ptr(), p._version) for p in sources)
        packed = _PACKED.setdefault(owner, {})
        if variant not in packed or packed[variant][0] != key:
            w, b = weights()
            packed[variant] = (key, torch.ops.mkldnn._reorder_linear_weight(w), b)
        w, b = packed[variant][1:]
    else:
        w, b = weights()
    attr, algorithm = _ONEDNN_ACT.get(act, ("none", "")) if act else ("none", "")
    y = torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algorithm)
    return activation(act)(y) if act and act not in _ONEDNN_ACT else y


def dense(layer: nn.Linear, x: Tensor, act: str | None = None) -> Tensor:
    """``act(layer(x))``: a plain nn.Linear without hooks through ``linear`` above (oneDNN where it applies,
    else the same F.linear its forward runs); a quantized, adapter-wrapped or hooked layer is called as itself."""
    if type(layer) is not nn.Linear or _hooked(layer):
        y = layer(x)
        return activation(act)(y) if act else y
    return linear(layer, x, lambda: (layer.weight, layer.bias),
                  (layer.weight,) if layer.bias is None else (layer.weight, layer.bias), act)


def _hooked(layer: nn.Module) -> bool:
    """Forward hooks of the layer or global ones: those run only when the module is called."""
    return bool(layer._forward_hooks or layer._forward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks)
