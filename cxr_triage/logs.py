"""Structured logging without PHI.

Log UIDs, job ids and AE titles; never patient names, IDs or birth dates. pynetdicom's
identifier dumps are switched off here for the same reason, and :class:`RedactValues` blanks
the header values that libraries quote in their messages and exceptions (pydicom warns
``Invalid value for VR DA: '17.08.1923'``; highdicom raises with the value).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import warnings
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, val in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = val if _plain(val) else str(val)
        if record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out)


def _plain(val: Any) -> bool:
    """A scalar, or a flat mapping of names to numbers (stage timings), kept as JSON."""
    if isinstance(val, (str, int, float, bool, type(None))):
        return True
    return isinstance(val, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) for k, v in val.items())


_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")
_VALUE_FIELDS = ("error", "reason", "detail")


def redact_values(text: str) -> str:
    """Every quoted substring replaced: third-party messages quote header values."""
    return _QUOTED.sub("'<redacted>'", text)


def _redact_exception(text: str) -> str:
    """Exception messages redacted; the traceback's frames and source lines kept."""
    keep = ("Traceback (", "During handling", "The above exception")
    return "\n".join(redact_values(line) if line and not line[0].isspace() and not line.startswith(keep)
                     else line for line in text.splitlines())


class RedactValues(logging.Filter):
    """Blank quoted values in other libraries' messages, in exception messages and in the
    ``error``/``reason``/``detail`` fields (which carry exception text). Our own messages
    are constant strings with UIDs in ``extra`` and pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("cxr_triage"):
            record.msg, record.args = redact_values(record.getMessage()), None
        for key in _VALUE_FIELDS:
            val = getattr(record, key, None)
            if isinstance(val, str):
                setattr(record, key, redact_values(val))
        if record.exc_info and not record.exc_text:
            record.exc_text = _redact_exception(logging.Formatter().formatException(record.exc_info))
        return True


def _log_thread_exception(args: Any) -> None:
    logging.getLogger("threading").error(
        "uncaught exception in thread %s", getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def setup_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Configure the root logger once per process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactValues())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Warnings would reach stderr unredacted: route them through the handler; pydicom's
    # are logged by pydicom itself as well, so drop the duplicate.
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    threading.excepthook = _log_thread_exception          # not printed raw to stderr either
    root.setLevel(level)
    try:
        from pynetdicom import _config

        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.LOG_HANDLER_LEVEL = "none"
    except ImportError:  # pragma: no cover
        pass
    # pynetdicom's INFO lines are per-PDU chatter; keep warnings.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))
