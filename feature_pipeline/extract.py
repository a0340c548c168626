"""Read a spec's source: every row, plus the source's content hash.

The implementation lives in :mod:`shared.source` so that ``fti reproduce`` (the
training pipeline) can rebuild a feature version without importing this service;
this module keeps the feature job's import path.
"""

from shared.source import Extracted, SourceError, extract, file_location

__all__ = ["Extracted", "SourceError", "extract", "file_location"]
