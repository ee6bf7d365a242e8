"""structlog set-up, done once per process: JSON lines in the daemon, console in the CLI.

``redact`` runs before rendering in both modes: ``SecretValue``s, and values under keys
named like token/secret/password/authorization, never reach a log line.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

from testmesh_reconciler.jsontext import encoder
from testmesh_reconciler.secretvalue import SecretValue

REDACTED = "***"
_SENSITIVE_KEY = re.compile(
    r"token|secret|password|passwd|authorization|private_key|credential|api_key|cookie", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """``https://user:token@host/x`` -> ``https://***@host/x`` (anywhere in ``text``)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def _is_secret_value(value: object) -> bool:
    """``SecretValue`` (``secretvalue`` sits at the bottom layer, beside logging)."""
    return isinstance(value, SecretValue)


@functools.lru_cache(maxsize=4096)
def _sensitive(key: str) -> bool:
    """Whether a key names a secret (memoized: log lines use a small, fixed set of keys)."""
    return _SENSITIVE_KEY.search(key) is not None


def _scrub(key: str | None, value: Any) -> Any:
    kind = type(value)
    if kind is str:  # the common case first: no secret type, no container
        if key is not None and _sensitive(key):
            return REDACTED
        if "://" in value and "@" in value:
            return redact_url(value)
        return value
    if value is None or kind is bool:
        return value
    if _is_secret_value(value):
        return REDACTED
    if key is not None and _sensitive(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: _scrub(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(None, v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        return redact_url(value)
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
           ) -> MutableMapping[str, Any]:
    """structlog processor: hide secrets by type and by key name (``event`` is kept)."""
    for key, value in event_dict.items():  # values are replaced, never keys added
        if key == "event":
            if _is_secret_value(value):
                event_dict[key] = REDACTED
            continue
        event_dict[key] = _scrub(key, value)
    return event_dict


#: One encoder for every JSON line (``json.dumps(..., default=str)`` builds one per call).
_json_text = encoder(compact=False, default=str)


def _json_line(event_dict: Any, **_kw: Any) -> str:
    return _json_text(event_dict)


def configure_logging(mode: Literal["json", "console"] = "console", *,
                      level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Configure structlog for this process (calling it again replaces the set-up)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any
    if mode == "json":
        renderer = [structlog.processors.dict_tracebacks,
                    structlog.processors.JSONRenderer(serializer=_json_line)]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """A lazy structlog logger with ``component=name`` (it follows later re-configuration)."""
    logger: FilteringBoundLogger = structlog.get_logger(component=name)
    return logger


__all__ = ["REDACTED", "configure_logging", "get_logger", "redact", "redact_url"]
