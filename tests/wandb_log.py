"""Read an offline wandb run back: its ``run-*.wandb`` transaction log, decoded with wandb's own
protobuf ``Record``. wandb >= 0.19 ships no Python reader for the file (its Go core writes it), so
the log's framing — LevelDB's: 32 KiB blocks, a 7-byte header (crc32, length, type) per chunk — is
read here; the records themselves are wandb's."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B", f"{path} is not a wandb transaction log"
    pos, chunks = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunks += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def read_run(path: Path) -> dict:
    """{"name", "tags", "config" (flat), "history" (one dict per logged step), "exited"} of one run."""
    out = {"name": None, "tags": [], "config": {}, "history": [], "exited": False}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["tags"] = record.run.display_name, list(record.run.tags)
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "exit":
            out["exited"] = True
    return out
