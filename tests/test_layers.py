"""Imports point down the layers only: building blocks → engine → run/pipeline → cli; reporting and
export sit beside training and never import it. Read from the source (every import, also the ones
inside functions), so a new upward import fails here, not in a review."""

import ast
from pathlib import Path

import distill

RANK = {  # a module may import only modules of a lower rank (or its own package: data.* → data.*)
    **dict.fromkeys(["errors", "outputs", "tables"], 0),
    **dict.fromkeys(["atomic", "launch", "interrupt", "evaluate", "layer_map", "report", "plots", "schema"], 1),
    "models": 2,
    **dict.fromkeys(["data", "losses", "checkpoint", "teacher_cache", "vocab_trim"], 3),
    **dict.fromkeys(["engine", "preflight", "export_formats", "model_card"], 4),
    **dict.fromkeys(["config_check", "compare", "export", "predict"], 5),
    "run": 6,
    **dict.fromkeys(["pipeline", "check"], 7),
    "auto": 8,  # runs the pipeline's stages for several students
    **dict.fromkeys(["cli", "leaderboard", "conf", "recipes", "__init__"], 9),
}
TRAINING = {"engine", "run", "checkpoint", "teacher_cache", "pipeline", "config_check"}
BESIDE = {"compare", "predict", "report", "plots", "preflight", "export", "export_formats", "model_card", "vocab_trim"}
ROOT = Path(distill.__file__).parent


def imports() -> list[tuple[str, str]]:
    """(importing unit, imported unit) for every ``distill`` import; a unit is the top module or package."""
    found = []
    for path in ROOT.rglob("*.py"):
        unit = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "distill":
                names = node.module.split(".")[1:2] or [a.name for a in node.names]  # from distill import x
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("distill.")]
            else:
                continue
            found += [(unit, name) for name in names]
    return found


def test_every_module_has_a_layer():
    units = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.rglob("*.py")}
    assert units <= set(RANK), f"place {sorted(units - set(RANK))} in RANK"


def test_imports_point_down_only():
    upward = [f"{a} → {b}" for a, b in imports() if a != b and RANK[a] <= RANK[b]]
    assert not upward, upward


def test_reporting_and_export_never_import_training():
    crossing = [f"{a} → {b}" for a, b in imports() if a in BESIDE and b in TRAINING]
    assert not crossing, crossing


def test_the_walk_sees_imports_inside_functions():
    pairs = set(imports())
    assert ("run", "preflight") in pairs and ("pipeline", "compare") in pairs  # both imported in a function body
