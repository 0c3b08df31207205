"""CompositeLoss: weighted sum, schedules as a function of the step, `needs`, the dry-run table, and
every conf/losses/*.yaml composed with Hydra, instantiated, set up and run on tiny models."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import distill
from distill.errors import DistillError
from distill.losses.base import CompositeLoss
from distill.losses.hard import HardCrossEntropy
from distill.losses.hidden import HiddenMSE
from distill.losses.logits import LogitsKL, LogitsMSE
from distill.models.heads import BertForMaskedLM, BertForSequenceClassification
from tests.conftest import padded_batch, tiny_config

CONF = Path(distill.__file__).parent / "conf"
LOSS_CONFIGS = sorted(p.stem for p in (CONF / "losses").glob("*.yaml"))
EXPECTED = {  # name → (needs, parts logged)
    "logits": ({"logits"}, {"logits", "temperature"}),
    "tinybert": ({"logits", "hidden_states", "attentions"}, {"logits", "hidden", "attention", "temperature"}),
    "minilm": ({"logits", "qkv"}, {"relation", "logits", "temperature"}),
    "distilbert": ({"logits", "hidden_states"}, {"logits", "hard", "cosine", "temperature"}),
    "pkd": ({"logits", "hidden_states"}, {"logits", "hard", "patient", "temperature"}),
    "hard_only": ({"logits"}, {"hard"}),
    "mlm_general": ({"logits", "hidden_states"}, {"mlm_kd", "mlm", "cosine", "temperature"}),  # masked-LM models
}


def models(cls=BertForSequenceClassification):
    torch.manual_seed(0)
    teacher = cls(tiny_config()).eval()  # 2 layers, 32 wide, 4 heads
    student = cls(tiny_config(num_hidden_layers=1, hidden_size=16, intermediate_size=20))
    return student.eval(), teacher


def run(loss, student, teacher):
    ids, mask = padded_batch(0)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}
    if isinstance(student, BertForMaskedLM):  # labels at a few masked positions; only those are decoded
        labels = torch.full_like(ids, -100).masked_scatter(mask.bool() & (torch.arange(11) % 4 == 1), ids)
        batch.update(labels=labels, mlm_positions=labels != -100)
    flags = {f"output_{need}": True for need in loss.needs - {"logits"}}
    inputs = {"mlm_positions": batch["mlm_positions"]} if "mlm_positions" in batch else {}
    t_out = None
    if loss.uses_teacher:
        with torch.no_grad():
            t_out = teacher(ids, mask, **inputs, **flags)
    return loss(student(ids, mask, **inputs, **flags), t_out, batch)


def test_every_loss_config_is_covered():
    assert sorted(EXPECTED) == LOSS_CONFIGS


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_loss_config_composes_builds_and_runs(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+losses={name}"])
    loss = instantiate(cfg.losses)
    assert isinstance(loss, CompositeLoss)
    needs, logged = EXPECTED[name]
    assert loss.needs == needs
    assert loss.uses_teacher == (name != "hard_only")
    student, teacher = models(BertForMaskedLM if name == "mlm_general" else BertForSequenceClassification)
    loss.setup(student.config, teacher.config if loss.uses_teacher else None)
    table = loss.dry_run_table(student.config, teacher.config if loss.uses_teacher else None)
    assert len(table.splitlines()) >= 3
    total, parts = run(loss, student, teacher)
    assert set(parts) == logged
    terms = logged - {"temperature"}  # the rest are the weighted terms, logged as the total adds them
    assert torch.isfinite(total) and total.item() == pytest.approx(sum(parts[n].item() for n in terms), rel=1e-6)
    total.backward()
    assert all(p.grad is not None for p in loss.parameters())  # projections are trained


def test_total_is_the_weighted_sum_and_parts_are_detached():
    student, teacher = models()
    loss = CompositeLoss(kd=LogitsKL(temperature=2.0, weight=0.7), mse=LogitsMSE(weight=3.0),
                         hard=HardCrossEntropy(weight=0.5))
    loss.setup(student.config, teacher.config)
    total, parts = run(loss, student, teacher)
    assert abs(total.item() - (parts["kd"] + parts["mse"] + parts["hard"]).item()) < 1e-6
    alone = CompositeLoss(kd=LogitsKL(temperature=2.0))
    alone.setup(student.config, teacher.config)
    assert abs(parts["kd"].item() - 0.7 * run(alone, student, teacher)[0].item()) < 1e-6
    assert not any(p.requires_grad for p in parts.values())
    assert parts["temperature"].item() == 2.0


def test_schedules_from_yaml_are_a_pure_function_of_the_step():
    node = OmegaConf.create({
        "_target_": "distill.losses.base.CompositeLoss",
        "kd": {"_target_": "distill.losses.logits.LogitsKL",
               "temperature": {"_target_": "distill.losses.schedules.Linear", "start": 4.0, "end": 1.0},
               "weight": {"_target_": "distill.losses.schedules.Linear", "start": 0.0, "end": 1.0,
                          "to_fraction": 0.1}},
        "hard": {"_target_": "distill.losses.hard.HardCrossEntropy", "weight": 1.0},
    })
    loss = instantiate(node)
    student, teacher = models()
    loss.setup(student.config, teacher.config)
    seen = {}
    for step in (0, 5, 10, 50, 100, 5):  # going back to step 5 (a resume) gives the same values
        loss.set_progress(step, 100)
        _, parts = run(loss, student, teacher)
        values = (parts["kd.weight"].item(), parts["temperature"].item())
        assert seen.setdefault(step, values) == values
    assert seen[0] == (0.0, 4.0)
    assert seen[5] == pytest.approx((0.5, 3.85))
    assert seen[10] == pytest.approx((1.0, 3.7))
    assert seen[100] == (1.0, 1.0)


def test_zero_weight_switches_a_term_off_and_the_temperature_keys_never_collide():
    loss = CompositeLoss(kd=LogitsKL(), hidden=HiddenMSE(weight=0.0), hard=HardCrossEntropy(weight=0))
    assert loss.needs == {"logits"} and loss.uses_teacher
    assert set(CompositeLoss(hard=HardCrossEntropy(), kd=LogitsKL(weight=0.0)).active()) == {"hard"}
    assert not CompositeLoss(hard=HardCrossEntropy(), kd=LogitsKL(weight=0.0)).uses_teacher
    student, teacher = models()
    two = CompositeLoss(a=LogitsKL(temperature=1.0), b=LogitsKL(temperature=3.0))
    two.setup(student.config, teacher.config)
    _, parts = run(two, student, teacher)
    assert (parts["a.temperature"].item(), parts["b.temperature"].item()) == (1.0, 3.0)


def test_dry_run_table_lists_pairs_shapes_and_projections():
    student, teacher = models()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loss = instantiate(compose(overrides=["+losses=tinybert"]).losses)
    table = loss.dry_run_table(student.config, teacher.config)
    rows = [" ".join(line.split()) for line in table.splitlines()]
    assert "hidden (w=1) embeddings embeddings (B, T, 16) → (B, T, 32) Linear 16→32 (shared)" in rows
    assert "hidden (w=1) layer 1 layer 2 (B, T, 16) → (B, T, 32) Linear 16→32 (shared)" in rows
    assert "attention (w=1) layer 1 layer 2 maps (B, 4, T, T) → (B, 4, T, T) -" in rows


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: CompositeLoss(), "has no terms"),
        (lambda: CompositeLoss(kd=torch.nn.Linear(1, 1)), "losses.kd is a Linear, not a loss term"),
        (lambda: LogitsKL(weight=-1.0), "weight=-1.0 is negative"),
        (lambda: LogitsKL(weight="high"), "neither a number nor a schedule"),
        (lambda: CompositeLoss(kd=LogitsKL(weight=0)).setup(tiny_config(), tiny_config()), "every loss term has"),
        (lambda: CompositeLoss(kd=LogitsKL()).setup(tiny_config(), None), "no teacher is configured"),
        (lambda: instantiate({"_target_": "distill.losses.schedules.Linear", "start": 0, "end": 1, "to_fraction": 0}),
         "from_fraction < to_fraction"),
    ],
)
def test_configuration_mistakes_raise_one_line_errors(build, match):
    with pytest.raises(Exception, match=match) as err:
        build()
    error = err.value if isinstance(err.value, DistillError) else err.value.__cause__
    assert isinstance(error, DistillError) and "\n" not in str(error)


def test_linear_schedule_holds_ramps_and_holds():
    from distill.losses.schedules import Linear, progress_of

    warm = Linear(0.0, 1.0, from_fraction=0.2, to_fraction=0.6)
    assert [warm(p) for p in (0.0, 0.2, 0.4, 0.6, 1.0)] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert (progress_of(-1, 10), progress_of(5, 10), progress_of(12, 10), progress_of(3, 0)) == (0.0, 0.5, 1.0, 1.0)


def test_no_loss_file_over_300_lines():
    files = [*(Path(distill.__file__).parent / "losses").glob("*.py"), Path(distill.__file__).parent / "layer_map.py"]
    assert {f.name: n for f in files if (n := len(f.read_text().splitlines())) > 300} == {}


def test_teacher_gives_maps_only_at_the_layers_the_losses_read():
    from distill.engine import flags
    from distill.losses.attention import AttentionMSE
    from distill.losses.relation import MiniLMRelation

    student = BertForSequenceClassification(tiny_config(num_hidden_layers=2))
    teacher = BertForSequenceClassification(tiny_config(num_hidden_layers=6))
    loss = CompositeLoss(logits=LogitsKL(), attention=AttentionMSE(layer_map="uniform"),
                         hidden=HiddenMSE(layer_map="uniform"))
    loss.setup(student.config, teacher.config)
    assert loss.teacher_map_layers() == {3, 6}
    assert flags(loss.needs, loss.teacher_map_layers())["output_attentions"] == {3, 6}
    ids, mask = padded_batch(3)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(len(ids), dtype=torch.long)}
    with torch.no_grad():
        t_all = teacher.eval()(ids, mask, output_hidden_states=True, output_attentions=True)
        t_some = teacher(ids, mask, **flags(loss.needs, loss.teacher_map_layers()))
        s_out = student.eval()(ids, mask, **flags(loss.needs))
    assert [m is None for m in t_some.attentions] == [True, True, False, True, True, False]
    assert torch.allclose(loss(s_out, t_some, batch)[0], loss(s_out, t_all, batch)[0], atol=1e-5)
    relation = CompositeLoss(relation=MiniLMRelation(), attention=AttentionMSE(layer_map=[[1, 2]]))
    relation.setup(student.config, teacher.config)
    assert relation.teacher_map_layers() == {2}
    assert CompositeLoss(logits=LogitsKL()).teacher_map_layers() is None
    assert flags(frozenset({"logits"}))["output_attentions"] is False
