"""Export a gallery index as Parquet, for the vector database a team already runs."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.index.store import Stored

__all__ = ["write_parquet", "ROWS_PER_GROUP"]

#: Rows per Parquet row group: bounds memory for large galleries.
ROWS_PER_GROUP = 65_536


def write_parquet(stored: Stored, out: Path) -> Path:
    """Write columns id, label, path and embedding (fixed-size list of float32) to ``out``.

    The file appears complete or not at all: it is written beside ``out``, then renamed.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TwinnetError(
            "export needs pyarrow: pip install 'twinnet[index]' (or pip install pyarrow)"
        ) from None
    dim = int(stored.vectors.shape[1])
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("label", pa.string()),
            ("path", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, len(stored), ROWS_PER_GROUP):
                end = min(len(stored), start + ROWS_PER_GROUP)
                flat = np.ascontiguousarray(stored.vectors[start:end], dtype=np.float32).ravel()
                emb = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
                batch = pa.record_batch(
                    [
                        pa.array(stored.ids[start:end]),
                        pa.array(stored.labels[start:end], pa.string()),
                        pa.array(stored.paths[start:end], pa.string()),
                        emb,
                    ],
                    schema=schema,
                )
                writer.write_batch(batch)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
