"""Label values (strings or ints, per row or per word) → ids into one ``label_names`` list."""

from __future__ import annotations

import re

from distill.errors import DistillError

BIO = re.compile(r"^[BIES]-(.+)$")


def order_names(values: set) -> list[str]:
    """Sorted label names; BIO-style tags as O, then B-/I-/E-/S- grouped per entity type."""
    if all(isinstance(v, str) and (v == "O" or BIO.match(v)) for v in values):
        return sorted(values, key=lambda v: ("", "") if v == "O" else (v[2:], "BIES".index(v[0])))
    return [str(v) for v in sorted(values)]


def _scalar(value, origin: str, row: int):
    """A label as ``str`` or ``int`` (integral floats and bools accepted); anything else is an error."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise DistillError(
        f"{origin} row {row}: label {value!r} is not a class name or integer id; fix that row "
        "or point label_column at the label column"
    )


def _rows(values: list, per_word: bool, origin: str) -> list:
    """Every label as a scalar, per row (``per_word``: a list per row)."""
    out = []
    for row, value in enumerate(values, start=1):
        if per_word:
            if not isinstance(value, list):
                raise DistillError(f"{origin} row {row}: tags {value!r} must be a list, one tag per word")
            out.append([_scalar(v, origin, row) for v in value])
        else:
            out.append(_scalar(value, origin, row))
    return out


def encode_labels(
    columns: dict[str, tuple[list, str]], per_word: bool, label_names: list[str] | None,
) -> tuple[list[str], dict[str, list]]:
    """``{split: (values, origin)}`` → ``(label_names, {split: ids})``.

    With ``label_names`` given, string labels are looked up in it and int labels must index it.
    Otherwise names come from train: sorted strings (BIO tags grouped), or sorted ints named
    ``"0"``, ``"1"``, ...; a label seen in validation/test but never in train is an error.
    """
    scalars = {split: (_rows(values, per_word, origin), origin) for split, (values, origin) in columns.items()}
    flat = {split: (v for row in rows for v in (row if per_word else [row])) for split, (rows, _) in scalars.items()}

    if label_names is not None:
        names = [str(n) for n in label_names]
        if len(set(names)) != len(names) or not names:
            raise DistillError(f"label_names={label_names} must be a non-empty list without repeats")
        lookup: dict = {n: i for i, n in enumerate(names)}
        lookup.update({i: i for i in range(len(names))})
        where = "in label_names"
    else:
        train = set(flat.pop("train"))
        kinds = {type(v) for v in train}
        if len(kinds) > 1:
            raise DistillError(
                f"{columns['train'][1]} mixes text and number labels; make every label a name or every label an id"
            )
        ordered = order_names(train)
        names = [str(v) for v in ordered]
        lookup = {v: i for i, v in enumerate(sorted(train, key=lambda v: ordered.index(str(v))))}
        where = "in train"

    def encode(value, split: str, origin: str):
        if value not in lookup:
            hint = ("add it to label_names" if label_names is not None
                    else "pass label_names=[...] listing every label, or add train rows with it")
            raise DistillError(
                f"label {value!r} in {split} ({origin}) is not {where} ({len(names)} labels: "
                f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); {hint}"
            )
        return lookup[value]

    ids = {}
    for split, (rows, origin) in scalars.items():
        if per_word:
            ids[split] = [[encode(v, split, origin) for v in row] for row in rows]
        else:
            ids[split] = [encode(v, split, origin) for v in rows]
    return names, ids
