"""LayerMap: TinyBERT's uniform map, last, source, explicit pairs, validation, the dry-run table."""

import pytest
from omegaconf import OmegaConf

from distill.errors import DistillError
from distill.layer_map import LayerMap, check_depth, format_table


def test_uniform_is_tinybert_mapping_with_embeddings():
    assert LayerMap.uniform(4, 12).pairs == ((0, 0), (1, 3), (2, 6), (3, 9), (4, 12))
    assert LayerMap.uniform(6, 12, embeddings=False).pairs == ((1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12))
    assert LayerMap.uniform(2, 2).pairs == ((0, 0), (1, 1), (2, 2))


def test_uniform_rounds_when_depths_do_not_divide():
    # 5 → 12: i · 2.4 = 2.4, 4.8, 7.2, 9.6, 12 → 2, 5, 7, 10, 12
    assert LayerMap.uniform(5, 12, embeddings=False).pairs == ((1, 2), (2, 5), (3, 7), (4, 10), (5, 12))
    # a student deeper than its teacher never lands on the embeddings
    assert LayerMap.uniform(6, 2, embeddings=False).pairs == ((1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2))


def test_last_and_explicit_pairs_from_yaml():
    assert LayerMap.last(4, 12).pairs == ((4, 12),)
    spec = OmegaConf.create({"m": [[1, 3], [2, 12]]}).m  # a ListConfig, as Hydra passes it
    assert LayerMap.resolve(spec, 2, 12, embeddings=True).pairs == ((1, 3), (2, 12))
    assert LayerMap.resolve("last", 2, 12, embeddings=False).pairs == ((2, 12),)
    assert LayerMap.resolve(LayerMap(((1, 1),)), 2, 12, embeddings=False).pairs == ((1, 1),)


def test_source_pairs_each_student_layer_with_the_teacher_layer_it_was_built_from():
    # a student cut from teacher layers 0, 2, 3, 5 (0-based); the map counts 1 = first transformer layer
    assert LayerMap.resolve("source", 4, 6, embeddings=False, source=[0, 2, 3, 5]).pairs == (
        (1, 1), (2, 3), (3, 4), (4, 6))
    assert LayerMap.resolve("source", 2, 6, embeddings=True, source=[5, 0]).pairs == ((0, 0), (1, 6), (2, 1))
    with pytest.raises(DistillError, match=r"^layer_map: source pairs .* this student was not built from teacher "
                                           r"layers \(student=from_teacher or pruned_\* are\); use uniform"):
        LayerMap.resolve("source", 4, 6, embeddings=False)
    with pytest.raises(DistillError, match=r"pair \[2, 7\] is out of range"):  # built from another, deeper teacher
        LayerMap.resolve("source", 2, 6, embeddings=False, source=[0, 6])


def test_attention_maps_reject_layer_zero_and_hidden_accepts_it():
    assert LayerMap.resolve([[0, 0]], 2, 4, embeddings=True).pairs == ((0, 0),)
    with pytest.raises(DistillError, match=r"student layers are 1\.\.2, teacher layers 1\.\.4"):
        LayerMap.resolve([[0, 0]], 2, 4, embeddings=False)


@pytest.mark.parametrize(
    "spec,match",
    [
        ([[3, 1]], r"pair \[3, 1\] is out of range: student layers are 0\.\.2, teacher layers 0\.\.4"),
        ([[1, 5]], r"out of range"),
        ([], r"layer_map is empty"),
        ("uniformly", r"use 'uniform', 'last', 'source' or a list"),
        ([[1, "x"]], r"use 'uniform', 'last', 'source' or a list"),
        ([1, 2], r"use 'uniform', 'last', 'source' or a list"),
    ],
)
def test_impossible_maps_raise_one_line_errors(spec, match):
    with pytest.raises(DistillError, match=match) as err:
        LayerMap.resolve(spec, 2, 4, embeddings=True)
    assert "\n" not in str(err.value)


def test_check_depth_catches_outputs_from_other_models():
    with pytest.raises(DistillError, match="call setup"):
        check_depth("HiddenMSE", LayerMap(((2, 4),)), 1, 4)


def test_teacher_layers_and_table():
    assert LayerMap.uniform(2, 4).teacher_layers() == (0, 2, 4)
    table = format_table([("hidden", "layer 1", "layer 2", "(B, T, 16) → (B, T, 32)", "Linear 16→32")])
    lines = table.splitlines()
    assert lines[0].split() == ["term", "student", "teacher", "shapes", "(student", "→", "teacher)", "projection"]
    assert set(lines[1]) == {"─"}  # rich's rule under the header
    assert " ".join(lines[2].split()) == "hidden layer 1 layer 2 (B, T, 16) → (B, T, 32) Linear 16→32"
    assert [lines[0].index(h) for h in ("student", "projection")] == [lines[2].index(c) for c in ("layer 1", "Linear")]
