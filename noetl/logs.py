"""Logging for every `noetl` process: a line per record for people, or, with
`NOETL_LOG_FORMAT=json` (`Settings.log_format`), one JSON object per line for machines.

A JSON record has `time`, `level`, `logger` and `message`, plus every field the log call passed in
`extra` (`request_id`, `execution_id`, `step`, ...), and `exc_info` when there was an exception.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(as_json: bool) -> logging.Formatter:
    if as_json:
        return JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(level: str, *, as_json: bool = False) -> None:
    """Root logging to stderr at `level`, as lines or as JSON; quiet chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
