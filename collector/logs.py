"""Logging: one JSON object per line on stderr, for our loggers and the libraries' alike.

`collector serve` configures it in its own process, and cli.worker_app() again in each worker:
uvicorn's `--workers N` processes import the app fresh and inherit no logging set-up. The
handler sits on the root logger, so psycopg, psycopg.pool, nats and uvicorn (whose own
dictConfig `serve` turns off) are formatted the same way.
"""

from __future__ import annotations

import json
import logging
import os
import sys

ACCESS_LOG_ENV = "COLLECTOR_ACCESS_LOG"  # set by `serve` for its workers: "1" on, "" off
LIBRARIES = ("psycopg", "psycopg.pool", "nats", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio")


class JSONLogFormatter(logging.Formatter):
    """One JSON object per line, with the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in ("request_id", "method", "path", "status", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(access_log: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("collector", *LIBRARIES):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("collector").setLevel(logging.INFO)
    logging.getLogger("collector.access").setLevel(logging.INFO if access_log else logging.WARNING)


def configure_worker_logging() -> None:
    """In a process started by `serve` (it set the env): the same set-up as the parent's."""
    flag = os.environ.get(ACCESS_LOG_ENV)
    if flag is not None:
        configure_logging(access_log=flag == "1")
