"""docs/bad_inputs.md cannot drift: every test it names exists, and the text it quotes is in that test's file."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bad_inputs_table_names_real_tests_and_their_messages():
    rows = [line for line in (ROOT / "docs" / "bad_inputs.md").read_text().splitlines()
            if line.startswith("| ") and "`tests/" in line]
    assert len(rows) >= 20
    for row in rows:
        path, name = re.search(r"`(tests/\w+\.py)::(\w+)`", row).groups()
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"
        what = row.split(" | ")[1]
        for quoted in re.findall(r"`([^`]+)`", what):
            assert quoted in source or quoted.replace("'", "\\'") in source, f"{quoted!r} not in {path}"
