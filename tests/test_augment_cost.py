"""benchmarks/augment_cost.py as the README runs it (16 MR sentences, 2 variants each instead of 1,000 and 8): the
last line is the JSON the README quotes; the timed numbers are not asserted, only that each was measured."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["contextual", "neighbours"])
def test_augment_cost_prints_its_seconds_per_1k_sentences_as_json(method):
    out = subprocess.run([sys.executable, "benchmarks/augment_cost.py", "rows=16", "n=2", f"method={method}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == {"mlm_fit_s_per_1k", "generate_s_per_1k", "label_s_per_1k_sentences", "rows_per_sentence",
                         "label_over_student_steps"}
    assert (last["mlm_fit_s_per_1k"] > 0) == (method == "contextual")  # the neighbours method fits no head
    assert all(last[k] > 0 for k in ("generate_s_per_1k", "label_s_per_1k_sentences", "label_over_student_steps"))
    assert 1 < last["rows_per_sentence"] <= 3  # each sentence and at most its 2 variants
    assert f"16 sentences ({method}) -> " in out.stdout
