"""conf/data/*.yaml: every source config names a real constructor with real arguments, and builds."""

import importlib
import inspect
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import distill
from distill.data import sources

CONF = Path(distill.__file__).parent / "conf" / "data"
NAMES = sorted(p.stem for p in CONF.glob("*.yaml"))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))


def test_one_config_per_source():
    assert NAMES == ["files", "hub", "imdb", "imdb_raw", "mr", "sms_spam", "tiny", "wnut16"]


@pytest.mark.parametrize("name", NAMES)
def test_config_keys_are_constructor_arguments(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    # data-level keys the CLI reads; keys beside them (limit, train_file, ...) feed `source` by interpolation
    assert {"source", "max_length", "batch_size", "group_by_length", "limit"} <= set(cfg)
    for key in set(cfg) - {"source", "max_length", "batch_size", "group_by_length"}:
        cfg[key] = f"sentinel-{key}"
        assert cfg.source[key] == f"sentinel-{key}", key
    module, _, attr = cfg.source._target_.rpartition(".")
    assert module == "distill.data.sources"
    fn = getattr(importlib.import_module(module), attr)
    params = inspect.signature(fn).parameters
    assert set(cfg.source) - {"_target_"} <= set(params)
    assert cfg.max_length >= 32 and cfg.batch_size >= 16


@pytest.mark.parametrize("name", ["mr", "sms_spam", "wnut16", "tiny"])
def test_configs_instantiate(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.source.limit = 3
    data = instantiate(cfg.source)
    assert isinstance(data, sources.TaskData)
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 3, "validation": 3, "test": 3}


def test_files_config_needs_a_train_file(tmp_path):
    cfg = OmegaConf.load(CONF / "files.yaml")
    assert OmegaConf.is_missing(cfg, "train_file")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(f'{{"text": "row {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(20)))
    cfg.train_file = str(path)  # data.train_file=... on the command line
    data = instantiate(cfg.source)
    assert data.label_names == ["a", "b"] and len(data.splits["test"]) == 4
