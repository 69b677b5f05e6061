"""Instruction data: loading, format detection and normalization, rejected rows."""

from srt_trainer.data.formats import FORMATS, NORMALIZED_COLUMNS, detect_format, normalize_row
from srt_trainer.data.loading import (
    DataLoadError,
    LoadedData,
    NoUsableRowsError,
    keep_source_columns,
    load_instruction_data,
    require_rows,
)
from srt_trainer.data.rejects import Reject, rejects_path_for, summarize_rejects, write_rejects

__all__ = [
    "FORMATS",
    "NORMALIZED_COLUMNS",
    "DataLoadError",
    "LoadedData",
    "NoUsableRowsError",
    "Reject",
    "detect_format",
    "keep_source_columns",
    "load_instruction_data",
    "normalize_row",
    "rejects_path_for",
    "require_rows",
    "summarize_rejects",
    "write_rejects",
]
