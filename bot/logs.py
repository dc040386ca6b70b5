"""Logging set-up: one line per event, the ids of the job it is about, secrets redacted.

Two formats, chosen by ``LOG_FORMAT``:

* ``plain`` (the default): ``2026-01-02T03:04:05 INFO bot.runner: message [job_id=7 guild_id=1]``
* ``json``: one JSON object per line, for a log system to index::

    {"ts": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "bot.runner",
     "message": "...", "job_id": "7", "guild_id": "1", "exc": "Traceback ..."}

The ids (:data:`ID_FIELDS`) come from ``extra={...}`` on the log call or from the context
set with :func:`log_context` / :func:`bind`; the call's ``extra`` wins. They are written as
strings: Discord ids are 64-bit and would lose digits as JSON numbers in many log systems.

Secrets are redacted from every record (:class:`RedactSecrets`) and, as a last guard, from
every formatted line, in both formats: the message, its arguments, ``extra`` values,
tracebacks and stack traces.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

LogFormat = Literal["plain", "json"]

#: The ids a line carries when they are known, in this order.
ID_FIELDS: tuple[str, ...] = ("job_id", "guild_id", "request_id", "interaction_id")

REDACTED = "[redacted]"

_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "kreabot_log_context", default=MappingProxyType({})
)

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _merged(ids: Mapping[str, object]) -> dict[str, object]:
    unknown = set(ids) - set(ID_FIELDS)
    if unknown:
        raise TypeError(f"unknown log id(s) {sorted(unknown)}; use {', '.join(ID_FIELDS)}")
    merged = dict(_context.get())
    for key, value in ids.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


@contextlib.contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Within the block, every line logged (in this task) carries these ids.

    Nested blocks add to (or override) the outer ids; ``None`` removes one. Each asyncio
    task has its own copy of the context, so one task's ids never leak into another's.
    """
    token = _context.set(_merged(ids))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: object) -> contextvars.Token[Mapping[str, object]]:
    """Add ids to the current context until it ends (or until :func:`unbind`).

    Meant for the top of a job task: ``bind(job_id=job.id, guild_id=job.guild_id)``, then
    ``bind(request_id=...)`` once the gateway answered. A task gets a copy of its creator's
    context, so the ids stay with that task (and the tasks it starts afterwards).
    """
    return _context.set(_merged(ids))


def unbind(token: contextvars.Token[Mapping[str, object]]) -> None:
    """Restore the ids as they were before the :func:`bind` that returned ``token``."""
    _context.reset(token)


def current_ids() -> dict[str, object]:
    """The ids set by :func:`log_context` / :func:`bind` in this context."""
    return dict(_context.get())


def record_ids(record: logging.LogRecord) -> dict[str, str]:
    """The ids of a record: from its ``extra``, else from the context; as strings."""
    ids: dict[str, str] = {}
    context = _context.get()
    for name in ID_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = context.get(name)
        if value is not None:
            ids[name] = str(value)
    return ids


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """What ``extra={...}`` put on the record, other than the ids."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES and key not in ID_FIELDS and not key.startswith("_")
    }


class _Secrets:
    """The secrets to remove, and the forms they take once written as JSON."""

    def __init__(self, secrets: Iterable[str]) -> None:
        plain = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        forms = set(plain)
        for secret in plain:
            forms.add(json.dumps(secret)[1:-1])  # escaped as in a JSON string
            forms.add(repr(secret)[1:-1])  # escaped as in a repr()
        self.plain = plain
        self.forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.plain)

    def redact(self, text: str) -> str:
        for form in self.forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def redact_value(self, value: object) -> object:
        """A copy of ``value`` with secrets removed from every string in it."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, Mapping):
            return {self.redact(str(k)): self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact_value(v) for v in value]
        return self.redact(str(value))


class RedactSecrets(logging.Filter):
    """Replace any occurrence of the given secrets in a log record with ``[redacted]``.

    Covers the message and its arguments, the traceback and stack text, and the values a
    call passed in ``extra``. Secrets shorter than 4 characters are ignored.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = _Secrets(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        text = self._secrets.redact(message)
        if text != message:
            record.msg, record.args = text, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._secrets.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._secrets.redact(record.stack_info)
        for key, value in _extras(record).items():
            setattr(record, key, self._secrets.redact_value(value))
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, self._secrets.redact(value))
        return True


class ContextIds(logging.Filter):
    """Stamp the context's ids (:func:`log_context`, :func:`bind`) onto each record.

    Runs where the call is made, so the ids survive a handler that formats the record
    elsewhere (a ``QueueHandler`` feeding another thread). An id given in ``extra`` stays.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message [job_id=… guild_id=…]``, secrets redacted."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self._secrets = _Secrets(secrets)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = record_ids(record)
        if ids:
            line += " [" + " ".join(f"{key}={value}" for key, value in ids.items()) + "]"
        return line

    def format(self, record: logging.LogRecord) -> str:
        return self._secrets.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the ids, extras, exc."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = _Secrets(secrets)

    @staticmethod
    def timestamp(record: logging.LogRecord) -> str:
        """The record's time in UTC, ISO 8601 with milliseconds and ``Z``."""
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(record_ids(record))
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        if self._secrets:
            entry = {key: self._secrets.redact_value(value) for key, value in entry.items()}
        line = json.dumps(entry, ensure_ascii=False, default=str)
        # Last guard: whatever a value's str() or JSON escaping turned a secret into.
        return self._secrets.redact(line)


def make_formatter(fmt: str, secrets: Iterable[str] = ()) -> logging.Formatter:
    """The formatter for ``LOG_FORMAT`` (``plain`` or ``json``)."""
    kind = fmt.lower()
    if kind == "plain":
        return PlainFormatter(secrets)
    if kind == "json":
        return JsonFormatter(secrets)
    raise ValueError(f"unknown log format {fmt!r}: use plain or json")


def setup_logging(level: str, secrets: Iterable[str] = (), fmt: str = "plain") -> None:
    """Configure the root logger once: level, format (``plain``/``json``), redaction."""
    secrets = list(secrets)
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt, secrets))
    handler.addFilter(ContextIds())
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("discord").setLevel(max(logging.INFO, logging.getLevelName(level)))
