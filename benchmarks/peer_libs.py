"""TextBrewer and torchdistill told the same distillation in their own terms, for ``peers.py``.

Every peer gets the same thing: transformers' ``BertForSequenceClassification`` (eager attention, so the
maps exist) teacher and student, logits KL at T=1 + hidden-state MSE + attention-map MSE at real tokens
on the given (student layer, teacher layer) pairs (0 = embeddings), AdamW (lr 1e-4, weight decay 0.01
except biases and LayerNorm), a linear schedule with 10% warm-up, gradient clipping at 1.0.

  * TextBrewer: ``GeneralDistiller`` with ``intermediate_matches`` (``hidden_mse``, ``attention_mse``,
    masked by the adaptor's ``inputs_mask``) and ``kd_loss_type='ce'`` (soft cross-entropy: the KL
    plus the teacher's entropy, a constant, so the same gradients), driven by its own ``train()``.
  * torchdistill: ``DistillationBox`` (its forward hooks read the embeddings', layers' and self-attention
    modules' outputs), a ``WeightedSumLoss`` of its ``KDLoss`` (alpha 0: soft term only) and two masked
    MSE terms registered as its mid-level losses; the padding mask rides in its ``targets`` slot, which
    its criterion hands to every term. AdamW and the schedule come from its registries, as its
    transformers examples register them; the loop is the one its examples write
    (``forward_process`` then ``post_forward_process`` per batch).
"""

from __future__ import annotations

import copy

import torch
import transformers
from torch import nn
from transformers import get_linear_schedule_with_warmup

LR, WEIGHT_DECAY, CLIP, T, WARMUP = 1e-4, 0.01, 1.0, 1.0, 0.1
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MAPS = {"output_hidden_states": True, "output_attentions": True}


def to_transformers(ours) -> transformers.BertForSequenceClassification:
    """Our BERT's weights in transformers' BERT (eager attention: the losses read the maps)."""
    config = copy.deepcopy(ours.config)
    config._attn_implementation = "eager"
    model = transformers.BertForSequenceClassification(config)
    missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
    if [k for k in missing if "position_ids" not in k] or unexpected:
        raise RuntimeError(f"weights do not map onto transformers' BERT: {missing[:3]} {unexpected[:3]}")
    return model.train(ours.training)


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in INPUTS if k in batch}


def adamw(model: nn.Module, lr: float = LR, weight_decay: float = WEIGHT_DECAY) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, not LayerNorm), as BERT fine-tuning does."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "LayerNorm" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr)


def schedule_args(steps: int) -> dict:
    return {"num_warmup_steps": int(WARMUP * steps), "num_training_steps": steps}


def masked_hidden_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens' features; s, t (B, T, H), mask (B, T)."""
    m = mask.to(s.dtype)[:, :, None]  # (B, T, 1)
    return ((s - t) * m).pow(2).sum() / (m.sum() * s.shape[-1])


def masked_attention_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real query x real key cells of every head; s, t (B, heads, T, T)."""
    real = mask.to(s.dtype)
    cells = (real[:, :, None] * real[:, None, :])[:, None]  # (B, 1, T, T)
    return ((s - t) * cells).pow(2).sum() / (cells.sum() * s.shape[1])


# ---- TextBrewer ----

def textbrewer_version() -> str:
    import textbrewer

    return textbrewer.__version__


def textbrewer_adaptor(batch, outputs) -> dict:
    """What TextBrewer reads from a model's output: logits, hidden states, maps, and the padding mask."""
    return {"logits": (outputs.logits,), "hidden": outputs.hidden_states, "attention": outputs.attentions,
            "inputs_mask": batch["attention_mask"]}


def textbrewer_distiller(teacher, student, pairs, out_dir: str, ckpt_steps: int):
    """A ``GeneralDistiller`` for logits KD + hidden MSE + attention MSE on ``pairs`` (hidden pairs,
    attention pairs), each (student layer, teacher layer); checkpoints every ``ckpt_steps`` into ``out_dir``."""
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    hidden_pairs, attention_pairs = pairs
    matches = [{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0}
               for s, t in hidden_pairs]
    # the adaptor's attention list has one entry per layer (no embeddings): layer i sits at i - 1
    matches += [{"layer_T": t - 1, "layer_S": s - 1, "feature": "attention", "loss": "attention_mse", "weight": 1.0}
                for s, t in attention_pairs]
    distill = DistillationConfig(temperature=T, kd_loss_type="ce", kd_loss_weight=1.0, hard_label_weight=0.0,
                                 intermediate_matches=matches)
    train = TrainingConfig(device="cpu", output_dir=out_dir, ckpt_steps=ckpt_steps)
    return GeneralDistiller(train, distill, teacher, student, textbrewer_adaptor, textbrewer_adaptor)


def textbrewer_train(distiller, loader, steps: int, scheduler_class=get_linear_schedule_with_warmup,
                     callback=None) -> None:
    """TextBrewer's own loop for ``steps`` optimizer steps over ``loader`` (cycled: a new pass, a new
    shuffle), the models asked for hidden states and maps."""
    with distiller:  # teacher eval, student train, as its docs do
        distiller.train(adamw(distiller.model_S), loader, num_steps=steps, scheduler_class=scheduler_class,
                        scheduler_args=schedule_args(steps), max_grad_norm=CLIP, callback=callback,
                        batch_postprocessor=model_inputs, **MAPS)


# ---- torchdistill ----

class MaskedHiddenMSE(nn.Module):
    """torchdistill mid-level term: hidden-state MSE at real tokens between two hooked modules' outputs."""

    def __init__(self, student_path: str, teacher_path: str, **kwargs):
        super().__init__()
        self.student_path, self.teacher_path = student_path, teacher_path

    def forward(self, student_io_dict, teacher_io_dict, targets, *args, **kwargs):
        return masked_hidden_mse(student_io_dict[self.student_path]["output"],
                                 teacher_io_dict[self.teacher_path]["output"], targets)


class MaskedAttentionMSE(MaskedHiddenMSE):
    """torchdistill mid-level term: attention-map MSE at real cells; a self-attention module's output is
    (context, maps)."""

    def forward(self, student_io_dict, teacher_io_dict, targets, *args, **kwargs):
        return masked_attention_mse(student_io_dict[self.student_path]["output"][1],
                                    teacher_io_dict[self.teacher_path]["output"][1], targets)


def torchdistill_version() -> str:
    """Imports torchdistill (over the torchvision stand-in where needed) and registers what it is told by name."""
    import peer_shims

    torchdistill = peer_shims.import_torchdistill()
    from torchdistill.losses.registry import register_mid_level_loss
    from torchdistill.optim.registry import register_optimizer, register_scheduler

    register_mid_level_loss(MaskedHiddenMSE)
    register_mid_level_loss(MaskedAttentionMSE)
    register_optimizer(key="adamw_decay_groups")(adamw)
    register_scheduler(get_linear_schedule_with_warmup)
    return torchdistill.__version__


def hooked(layer: int, maps: bool = False) -> str:
    """The module whose output is hidden state ``layer`` (0 = embeddings) or layer ``layer``'s maps."""
    if maps:
        return f"bert.encoder.layer.{layer - 1}.attention.self"
    return "bert.embeddings" if layer == 0 else f"bert.encoder.layer.{layer - 1}"


def torchdistill_config(pairs, steps: int) -> dict:
    """A DistillationBox train config (no loaders: add ``train_data_loader`` to let it build one)."""
    hidden_pairs, attention_pairs = pairs
    terms = {"kd": {"criterion": {"key": "KDLoss", "kwargs": {
        "student_module_path": "classifier", "student_module_io": "output", "teacher_module_path": "classifier",
        "teacher_module_io": "output", "temperature": T, "alpha": 0.0, "reduction": "batchmean"}}, "weight": 1.0}}
    for key, pairs_, maps in (("hidden", hidden_pairs, False), ("attention", attention_pairs, True)):
        for s, t in pairs_:
            terms[f"{key}_{s}_{t}"] = {"weight": 1.0, "criterion": {
                "key": "MaskedAttentionMSE" if maps else "MaskedHiddenMSE",
                "kwargs": {"student_path": hooked(s, maps), "teacher_path": hooked(t, maps)}}}

    def model(side: int, grad: bool) -> dict:
        paths = [hooked(p[side]) for p in hidden_pairs] + [hooked(p[side], True) for p in attention_pairs]
        return {"forward_proc": "forward_batch_only_as_kwargs", "requires_grad": grad,
                "forward_hook": {"input": [], "output": [*paths, "classifier"]}}

    return {"num_epochs": 1, "teacher": model(1, False), "student": model(0, True),
            "optimizer": {"key": "adamw_decay_groups", "kwargs": {"lr": LR, "weight_decay": WEIGHT_DECAY},
                          "filters_params": False, "max_grad_norm": CLIP, "grad_accum_step": 1},
            "scheduler": {"key": "get_linear_schedule_with_warmup", "kwargs": schedule_args(steps),
                          "scheduling_step": 1},
            "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": terms}}}


def torchdistill_box(teacher, student, config: dict, datasets: dict | None = None):
    from torchdistill.core.distillation import DistillationBox

    return DistillationBox(teacher, student, datasets or {}, config, torch.device("cpu"), None, False, 1)


def torchdistill_step(box, batch: dict) -> torch.Tensor:
    """One training step as torchdistill's examples write it; the mask goes to the loss terms as targets."""
    loss = box.forward_process(batch, targets=batch["attention_mask"], supp_dict=None)
    box.post_forward_process(loss=loss)
    return loss


def torchdistill_release(box) -> None:
    """Remove the box's forward hooks (``clean_modules`` would also unfreeze the shared teacher)."""
    for _, handle in box.target_teacher_pairs + box.target_student_pairs:
        handle.remove()
