"""atomic_dir: a crash leaves the old dir; success swaps it in whole; a cache entry written first wins."""

import pytest

from distill.atomic import atomic_dir


def test_a_failed_write_leaves_the_old_dir_and_no_temp_dirs(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half of v2")
        raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .model.* leftovers


def test_replace_swaps_in_the_new_dir_and_a_cache_entry_keeps_the_first(tmp_path):
    target = tmp_path / "entry"
    for version in ("v1", "v2"):
        with atomic_dir(target) as tmp:
            (tmp / "f").write_text(version)
    assert (target / "f").read_text() == "v2" and not (tmp_path / ".entry.old").exists()
    with atomic_dir(target, replace=False) as tmp:  # another process wrote the same entry first
        (tmp / "f").write_text("v3")
    assert (target / "f").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
