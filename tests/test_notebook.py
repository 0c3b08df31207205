"""notebooks/quickstart.ipynb runs top to bottom (tiny settings) and its outputs hold real figures.

The kernel is this interpreter (``sys.executable``) through a kernelspec installed into the test's
temp dir, so a ``python3`` kernelspec elsewhere on the machine (another Python, another venv) is
never picked up. The notebook runs with the temp dir as its working directory, so nothing it writes
lands in the repository.
"""

import json
import sys
from pathlib import Path

import ipykernel.kernelspec
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "distill-test-kernel"


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_stored_clean_and_parameterised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, "store the notebook without outputs"
    first = code_cells(nb)[0]
    assert "parameters" in first.metadata.get("tags", [])
    for name in ("LIMIT", "STEPS", "TINY"):
        assert f"{name} = " in first.source


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A kernelspec running ``sys.executable``, found first (JUPYTER_PATH) under a name of its own."""
    prefix = tmp_path / "jupyter-prefix"
    ipykernel.kernelspec.install(kernel_name=KERNEL, display_name="distill tests", prefix=str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    spec = json.loads((prefix / "share" / "jupyter" / "kernels" / KERNEL / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    return KERNEL


def test_quickstart_runs_on_tiny_settings(tmp_path, monkeypatch, venv_kernel):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("DISTILL_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))  # datasets built here, not in ~/.cache
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest, most of all on a busy CI runner
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=venv_kernel, timeout=300, startup_timeout=120,
                            resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) if any cell fails

    outputs = [o for cell in code_cells(nb) for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the trade-off plot and the training curves, shown inline
    assert "TINY=True" in "".join(o.get("text", "") for o in outputs if o.output_type == "stream")

    out = work / "outputs" / "quickstart"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiny"] is True and summary["limit"] == 64 and summary["steps"] == 5
    # the KD run saw the augmented rows: up to 8 distinct variants of each labelled row
    rows = summary["labelled_rows"]
    assert 0 < rows <= 64 and rows <= summary["variants"] <= 8 * rows

    report = json.loads((out / "compare" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student (KD)", "student (no KD)"}
    assert report["baseline"] == "student (no KD)" and report["settings"]["n_rows"] == 64
    key = report["metric"]
    assert key == "accuracy"
    kd, teacher = report["models"]["student (KD)"], report["models"]["teacher"]
    retention = kd["retention"][key]
    assert retention > 0  # a student that gets nothing right would still pass the ratio checks below
    assert retention == pytest.approx(kd["metrics"][key]["value"] / teacher["metrics"][key]["value"])
    assert retention == pytest.approx(summary["retention"])
    assert 0 < kd["params_ratio"] < 1  # 2 of the teacher's 6 layers
    assert (out / "compare" / "report.md").is_file()

    exports = summary["exports"]
    assert {"hf", "onnx", "int8"} <= set(exports)
    assert exports["onnx"]["parity_max_abs_diff"] <= 1e-4
    assert exports["hf"]["parity_max_abs_diff"] <= 1e-5
    for fmt in ("hf", "onnx", "int8"):
        assert (work / exports[fmt]["path"]).exists() and exports[fmt]["size_bytes"] > 0
    assert exports["int8"]["size_bytes"] < exports["onnx"]["size_bytes"]
    for png in summary["plots"]:
        assert (work / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in ("teacher", "student_kd", "student_nokd"):
        assert (out / run / "student" / "model.safetensors").is_file()
        assert (out / run / "metrics.jsonl").is_file()
