"""Errors a URL-list job can meet as a whole (a bad sample is never an error: it is a
failed sample with its class)."""

from __future__ import annotations

from acquired.sources.errors import SourceError


class UrlListError(SourceError):
    """Base of the URL-list failures that stop a job (never one bad row)."""

    code = "urllist.error"
    hint = "See the daemon's log for details."


class UnknownInputFormat(UrlListError):
    """The input's format cannot be told from its name and was not given."""

    code = "urllist.unknown_format"
    hint = "Name the input *.txt, *.csv, *.tsv, *.jsonl or *.parquet (optionally .gz/.zst)."


class MissingColumn(UrlListError):
    """A column the manifest names is not in the input."""

    code = "urllist.missing_column"
    hint = "Set url_column / caption_column / keep_columns to columns the input has."


class UnreadableInput(UrlListError):
    """The input file cannot be opened or is not of the format it claims."""

    code = "urllist.unreadable_input"
    hint = "Check that the input file is complete and of the format its name says."
