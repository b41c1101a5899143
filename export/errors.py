"""The offline pipeline's error tree. Messages name the bad file, line or value.

    PipelineError
    ├── TableError      an expert table is missing columns, unreadable, or unusable
    ├── DatasetError    a dataset file is bad (names the file and line)
    └── ExportError     a router cannot be exported or fails its quality gates
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the offline pipeline raises on purpose."""


class TableError(PipelineError):
    pass


class DatasetError(PipelineError):
    pass


class ExportError(PipelineError):
    pass
