"""Instruction data: loading, format detection and normalization, rejected rows."""

from srt_trainer.data.formats import FORMATS, NORMALIZED_COLUMNS, detect_format, normalize_row
from srt_trainer.data.loading import DataLoadError, LoadedData, load_instruction_data
from srt_trainer.data.rejects import Reject, rejects_path_for, summarize_rejects, write_rejects

__all__ = [
    "FORMATS",
    "NORMALIZED_COLUMNS",
    "DataLoadError",
    "LoadedData",
    "Reject",
    "detect_format",
    "load_instruction_data",
    "normalize_row",
    "rejects_path_for",
    "summarize_rejects",
    "write_rejects",
]
