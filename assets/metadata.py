"""Metadata every Delta asset reports: table, version, what it read, rows, schema, partitions, location."""

from __future__ import annotations

from typing import Any

import dagster as dg
from loopwise.lake.tables import WriteResult


def delta_metadata(write: WriteResult, uri: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "delta_table": write.table,
        "delta_version": write.version,
        "dagster/row_count": write.rows,
        "partitions": write.partitions,
        "dagster/uri": uri,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, dtype) for name, dtype in write.schema.items()]
        ),
        # The Delta version of every table this write read: `loopwise lineage` walks these records.
        "input_versions": dg.MetadataValue.json(write.inputs),
    }
    if write.added_columns:
        metadata["added_columns"] = ", ".join(write.added_columns)
    return metadata
