"""student=pruned: a compact student cut out of the teacher's most active channels, heads and neurons."""

import copy
import json
import re
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_module

from distill.errors import DistillError
from distill.layer_map import source_layers
from distill.losses.hidden import HiddenMSE
from distill.losses.relation import MiniLMRelation
from distill.models.hub import from_pretrained, load_tokenizer, minilm_l6_path, save_pretrained
from distill.models.prune import calibration_rows, importance, student_pruned_from_teacher, top
from distill.models.student import random_bert, student_config, student_from_teacher
from distill.run import build_models

TEXTS = ["a gripping , well acted film", "dull and far too long", "the cast is wonderful", "i hated every minute",
         "an odd little movie that works", "not funny , not moving , not anything"] * 3


def _teacher(task="sequence", seed=0):
    torch.manual_seed(seed)
    teacher = random_bert(task, num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    for p in teacher.parameters():  # std 0.02 leaves every part equally quiet: give the ranking something to rank
        p.data.add_(0.05 * torch.randn_like(p))
    return teacher.eval()


def _batch(texts=TEXTS[:6]):
    return load_tokenizer(minilm_l6_path())(texts, padding=True, return_tensors="pt")


def _logits(model, batch):
    with torch.no_grad():
        return model.eval()(batch["input_ids"], batch["attention_mask"]).logits


@pytest.mark.parametrize("task", ["sequence", "token", "mlm", "pretraining", "base"])
def test_pruning_nothing_gives_the_teacher(task):
    teacher = _teacher(task)
    student = student_pruned_from_teacher(teacher, [0, 1], 32, 4, 64, texts=TEXTS)
    batch = _batch()
    with torch.no_grad():
        s, t = (m.eval()(batch["input_ids"], batch["attention_mask"]) for m in (student, teacher))
    for name in ("logits", "prediction_logits", "seq_relationship_logits", "last_hidden_state"):
        if getattr(t, name, None) is not None:
            assert torch.equal(getattr(s, name), getattr(t, name)), name


def test_importance_counts_real_tokens_only():
    """One padded batch ranks as the rows fed one at a time with no padding (both hook shapes), and the
    encoder's mode and padding setting come back as they were."""
    teacher = _teacher()
    encoder = teacher.bert.train()
    encoder.skip_padding = False
    padded = importance(encoder, [_batch(TEXTS[:6])])
    assert encoder.training and encoder.skip_padding is False
    assert not encoder.encoder.layer[0].intermediate._forward_hooks  # the hooks are gone
    rows = [_batch([t]) for t in TEXTS[:6]]
    tokens = [int(r["attention_mask"].sum()) for r in rows]
    single = [importance(encoder, [r]) for r in rows]  # each a mean over its own tokens: re-weight
    channels = sum(n * s.channels for n, s in zip(tokens, single)) / sum(tokens)
    assert torch.allclose(padded.channels, channels, rtol=1e-4)
    heads = sum(n * s.heads[1] for n, s in zip(tokens, single)) / sum(tokens)
    assert torch.allclose(padded.heads[1], heads, rtol=1e-4)


def test_dropped_neurons_are_the_teacher_without_them():
    """All channels and heads kept (BERT's heads span the hidden size), 40 of 64 neurons per layer: the
    student computes what the teacher computes with the dropped neurons' outgoing weights set to zero."""
    teacher = _teacher()
    student = student_pruned_from_teacher(teacher, [0, 1], 32, 4, 40, texts=TEXTS)
    batch = _batch(TEXTS)
    score = importance(teacher.bert, [batch])
    reference = copy.deepcopy(teacher)
    for layer, neurons in zip(reference.bert.encoder.layer, score.neurons):
        dropped = sorted(set(range(64)) - set(top(neurons, 40).tolist()))
        with torch.no_grad():
            layer.output.dense.weight[:, dropped] = 0
    assert torch.allclose(_logits(student, batch), _logits(reference, batch), atol=1e-5)
    assert not torch.allclose(_logits(student, batch), _logits(teacher, batch), atol=1e-3)  # something was cut


def test_importance_ranks_what_is_made_loud():
    teacher = _teacher()
    layer = teacher.bert.encoder.layer[1]
    with torch.no_grad():
        layer.attention.self.value.weight[16:24] *= 20  # head 2's values
        layer.intermediate.dense.bias[5] = 8.0  # neuron 5 fires on every token
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight[7] = 30.0  # channel 7 of the residual stream
    score = importance(teacher.bert, [_batch(TEXTS)])
    assert int(score.heads[1].argmax()) == 2 and int(score.neurons[1].argmax()) == 5
    assert int(score.channels.argmax()) == 7
    student = student_pruned_from_teacher(teacher, [1], 8, 1, 4, texts=TEXTS)
    kept = top(score.channels, 8)
    assert 7 in kept.tolist()
    for name in ("query", "key", "value"):  # head 2's rows, the kept input channels
        source = getattr(layer.attention.self, name)
        assert torch.equal(getattr(student.bert.encoder.layer[0].attention.self, name).weight,
                           source.weight[16:24][:, kept])
    out = student.bert.encoder.layer[0].attention.output.dense.weight  # (kept channels, head 2's columns)
    assert torch.equal(out, layer.attention.output.dense.weight[kept][:, 16:24])
    ffn = student.bert.encoder.layer[0].intermediate.dense.bias
    assert torch.equal(ffn, layer.intermediate.dense.bias[top(score.neurons[1], 4)]) and 5 in top(score.neurons[1], 4)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight,
                       teacher.bert.embeddings.word_embeddings.weight[:, kept])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight[:, kept])
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight[kept][:, kept])
    assert student.config.hidden_size == 8 and student.config.num_attention_heads == 1


@pytest.mark.parametrize("args, kw, words", [
    (([0], 16, 4, 32), {}, ["head size 8", "num_attention_heads=2", "not 4"]),
    (([0], 64, 8, 32), {}, ["student.hidden_size=64", "1..32"]),
    (([0], 16, 2, 128), {}, ["student.intermediate_size=128", "1..64"]),
    (([2], 16, 2, 32), {}, ["layers=[2]", "0..1"]),
    (([0], 16, 2, 32), {"texts": None}, ["training text", "texts="]),
    (([0], 16, 2, 32), {"texts": ["", " "]}, ["data.text_column"]),
    (([0], 16, 2, 32), {"calibration": 0}, ["student.calibration=0"]),
])
def test_impossible_settings_are_one_line(args, kw, words):
    with pytest.raises(DistillError) as e:
        student_pruned_from_teacher(_teacher(), *args, **{"texts": TEXTS, **kw})
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_calibration_rows_spread_over_the_split():
    texts = [f"row {i}" for i in range(10)]
    assert calibration_rows(texts, 4) == ["row 0", "row 2", "row 5", "row 7"]
    assert calibration_rows(texts, 7)[-1] == "row 8" and calibration_rows(texts, 50) == texts


def test_a_student_built_from_teacher_layers_names_them_for_layer_map_source(tmp_path):
    """`layer_map: source` reads the teacher layers a pruned or copied student came from off its config, which a
    saved student keeps (the KD stage after a relation stage loads it); a student of its own has none, and a
    student of a student does not inherit its teacher's."""
    teacher = _teacher("token")
    pruned = student_pruned_from_teacher(teacher, [1, 0], 16, 2, 32, texts=TEXTS)
    assert source_layers(pruned.config) == [1, 0] and source_layers(student_from_teacher(teacher, [1]).config) == [1]
    relation = MiniLMRelation(layer_map="source", relation_heads=2)
    relation.setup(pruned.config, teacher.config)
    assert relation.layer_map.pairs == ((1, 2), (2, 1))  # reversed on purpose: not the uniform map
    hidden = HiddenMSE(layer_map="source")
    hidden.setup(pruned.config, teacher.config)
    assert hidden.layer_map.pairs == ((0, 0), (1, 2), (2, 1))  # the embeddings were pruned from the teacher's too
    save_pretrained(pruned, tmp_path / "saved")
    reloaded = from_pretrained(tmp_path / "saved", task="token", id2label=teacher.config.id2label)
    assert source_layers(reloaded.config) == [1, 0]
    own = student_config(pruned, num_hidden_layers=2, hidden_size=8, num_attention_heads=2)
    assert source_layers(own) is None
    with pytest.raises(DistillError, match=r"^layer_map: source .* not built from teacher layers"):
        MiniLMRelation(layer_map="source", relation_heads=2).setup(own, pruned.config)


def test_the_run_ranks_on_the_training_split():
    """`distill train student=pruned_l4_h128 ...` builds it through the run, which hands it the training text."""
    overrides = ["data=mr", "data.limit=32", "teacher=tiny", "student=pruned_l4_h128", "student.layers=[1, 0]",
                 "student.hidden_size=16", "student.num_attention_heads=2", "student.intermediate_size=32"]
    with initialize_config_module("distill.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    data = hydra.utils.instantiate(cfg.data.source)
    teacher, student = build_models(cfg, data)
    shape = student.config.num_hidden_layers, student.config.hidden_size, student.config.intermediate_size
    assert shape == (2, 16, 32)
    assert student.config.id2label == teacher.config.id2label
    same = student_pruned_from_teacher(teacher, [1, 0], 16, 2, 32, texts=list(data.splits["train"]["text"]),
                                       max_length=cfg.data.max_length)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), same.state_dict().values()))
    with initialize_config_module("distill.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides + ["++student.colour=red"])
    with pytest.raises(DistillError, match="student: .*colour.*; remove or rename that key"):
        build_models(cfg, data)
    with initialize_config_module("distill.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides + ["student._target_=distill.models.prune.nope"])
    with pytest.raises(DistillError, match=r"^student._target_=distill.models.prune.nope cannot be imported; pick"):
        build_models(cfg, data)


@pytest.mark.parametrize("recipe, overrides, n, delete_span, epochs", [
    ("mr_compact_pruned", ["data.augment.n=2"], 2, 0.0, 2),  # 2 variants instead of 8: tiny
    ("mr_compact_pruned_n20", ["trainer.max_steps=3"], 20, 0.5, 4),  # its own 20 variants, 3 steps
    ("wnut16_compact_pruned_n32", ["data.augment.n=2", "trainer.max_steps=3"], 2, 0.0, 4),  # a token task
    ("mr_compact_pruned_rel", ["data.augment.n=2", "trainer.max_steps=3"], 2, 0.5, 3),  # a relation stage first
    ("wnut16_compact_pruned_rel", ["data.augment.n=2", "trainer.max_steps=3"], 2, 0.0, 3),  # ... on a token task
    ("wnut16_compact_pruned_unseen", ["data.augment.n=2", "trainer.max_steps=3"], 2, 0.0, 3),  # + frozen table
    ("wnut16_compact_pruned_proj", ["data.augment.n=2", "trainer.max_steps=3"], 2, 0.0, 3),  # + projected table
    ("wnut16_compact_pruned_n64", ["trainer.max_steps=3"], 64, 0.0, 3),  # ... on its own 64 variants
    ("wnut16_compact_pruned_unseen", ["data.augment.n=2", "trainer.max_steps=3",  # relations at every layer
                                      "intermediate.losses.relation.layer_map=source"], 2, 0.0, 3)])
def test_pipeline_recipe_mr_compact_pruned_as_the_readme_runs_it(tmp_path, recipe, overrides, n, delete_span, epochs):
    """`distill pipeline recipe=mr_compact_pruned[_n20|_rel]`, `wnut16_compact_pruned_{n32,rel,unseen,proj,n64}`
    (tiny teacher, a student shaped for it): the KD student and its no-KD twin both start pruned from the fine-tuned
    teacher, at the same shape; the n20 recipe keeps its 20 variants, span deletion and 4 epochs, and its twin
    trains the KD stages' steps (the relation stage of the rel, unseen, proj and n64 recipes, 2 epochs, counted);
    the unseen recipe replaces entity words and freezes the word embeddings in both its stages and in the twin, the
    proj and n64 recipes project them there instead (n64 keeps its 64 variants); `layer_map=source` pairs each
    relation layer with the teacher layer it was pruned from (the recipes: the last layers only)."""
    from omegaconf import OmegaConf

    from tests.test_augment import TINY_MLM_RECIPE_N, _cli

    shape = ["student.layers=[1, 0]", "student.hidden_size=16", "student.num_attention_heads=2",
             "student.intermediate_size=32"]
    run = _cli("pipeline", f"recipe={recipe}", "teacher=tiny", *shape, "data.limit=48", "finetune.max_steps=2",
               *overrides, *TINY_MLM_RECIPE_N, f"stage_root={tmp_path / 'stages'}", "export.formats=[hf]",
               f"hydra.run.dir={tmp_path / 'run'}", env={"DISTILL_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-3000:]
    dirs = {k: Path(v) for k, v in json.loads((tmp_path / "run" / "pipeline.json").read_text()).items()}
    kd = OmegaConf.load(dirs["distill"] / "stage.yaml")
    assert (kd.data.augment.n, kd.data.augment.delete_span, kd.trainer.epochs) == (n, delete_span, epochs)
    relations = recipe.endswith(("_rel", "_unseen", "_proj", "_n64"))  # a relation stage first
    kd_stages = ["intermediate", "distill"] if relations else ["distill"]
    assert set(kd_stages) <= set(dirs)
    if relations:  # relations only, two epochs, then the KD stage starts from its student
        inter = OmegaConf.load(dirs["intermediate"] / "stage.yaml")
        assert set(inter.losses) - {"_target_"} == {"relation"} and inter.trainer.epochs == 2
        assert kd.student.name_or_path == str(dirs["intermediate"] / "student")
    kd_steps = sum(json.loads((dirs[name] / "metrics.json").read_text())["steps"] for name in kd_stages)
    assert json.loads((dirs["baseline"] / "metrics.json").read_text())["steps"] == kd_steps
    if relations:
        assert kd_steps == 6  # trainer.max_steps=3 in each stage, the twin 3 + 3
    projected = recipe.endswith(("_proj", "_n64"))
    unseen = projected or recipe.endswith("_unseen")  # entity words replaced;
    table = {name: tuple(OmegaConf.load(dirs[name] / "stage.yaml").trainer.get(key, False)  # frozen or projected
                         for key in ("freeze_word_embeddings", "project_word_embeddings"))
             for name in [*kd_stages, "baseline"]}  # in both stages and the twin
    assert kd.data.augment.get("entity_words", False) == unseen
    assert set(table.values()) == {(unseen and not projected, projected)}, table
    for name in ("distill", "baseline"):
        config = json.loads((dirs[name] / "student" / "config.json").read_text())
        assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (2, 16, 32)
    log = (tmp_path / "run" / "cli.log").read_text()
    assert log.count("student pruned from teacher layers [1, 0]: 16 of 32 hidden channels") == 2, log[-3000:]
    source = "intermediate.losses.relation.layer_map=source" in overrides  # student layers 1, 2 from teacher 2, 1
    pairs = set(re.findall(r"relation \(w=1\)\s+layer (\d) qkv\s+layer (\d) qkv", log))
    assert pairs == ({("1", "2"), ("2", "1")} if source else {("2", "2")} if relations else set()), pairs
    assert log.count("times a trained 32 x 16 projection") == (3 if projected else 0)  # both stages and the twin
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {"student (KD)", "student (no KD)"} <= set(report["models"])
