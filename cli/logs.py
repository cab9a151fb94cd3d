"""Logging of a node: to stderr and to rotating files under ``ROOT/logs/``, as text or JSON."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Final, Literal

LogFormat = Literal["text", "json"]
LOG_DIR_NAME: Final = "logs"
LOG_FILE_NAME: Final = "node.log"
MAX_LOG_BYTES: Final = 10 * 1024 * 1024
LOG_BACKUPS: Final = 5
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(
    level: str = "INFO",
    fmt: LogFormat = "text",
    root_dir: Path | None = None,
    *,
    to_stderr: bool = True,
) -> Path | None:
    """Log to stderr (unless ``to_stderr`` is false: the screen belongs to a TUI), and to
    ``ROOT/logs/node.log`` (rotated) when ``root_dir`` is given.

    Returns the log file's path, if any.
    """
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)] if to_stderr else []
    log_file = None
    if root_dir is not None:
        log_dir = root_dir / LOG_DIR_NAME
        log_dir.mkdir(mode=0o700, exist_ok=True)
        log_file = log_dir / LOG_FILE_NAME
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_file, maxBytes=MAX_LOG_BYTES, backupCount=LOG_BACKUPS
            )
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return log_file
