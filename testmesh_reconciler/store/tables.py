"""What both stores share: each record class mapped onto its table, and pure SQL helpers.

A column has a kind; each backend encodes and decodes the kinds its own way (timestamps are
INTEGER microseconds on SQLite and ``timestamptz`` on PostgreSQL, JSON is text or ``jsonb``,
...). A ``Table`` binds a ``Spec`` to one backend: its placeholder (``?`` or ``%s``) and codec.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, TypeVar

from testmesh_reconciler.jsontext import encoder
from testmesh_reconciler.store.records import (
    Delivery,
    EnvironmentInstance,
    OutboxEntry,
    Run,
    isoformat,
)

R = TypeVar("R")

#: ``v`` plain; ``ts`` timestamp; ``json`` / ``optjson`` (NULL stays NULL) JSON documents;
#: ``array`` a tuple of strings (a text array on PostgreSQL); ``jsontuple`` a tuple kept as
#: JSON; ``bool`` a flag. SQLite keeps both tuple kinds as JSON text.
Kind = Literal["v", "ts", "json", "optjson", "array", "jsontuple", "bool"]
Codec = Callable[[Kind, Any], Any]
Columns = tuple[tuple[str, Kind], ...]

MAX_PAGE = 1000
#: Keys of ``Run.status_report`` the store derives from the outbox (never stored as given).
DERIVED_REPORT_KEYS = ("statuses", "given_up")


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):  # e.g. the config's FrozenDict
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


#: Compact JSON text, non-ASCII kept, config maps and sets allowed (one C encoder for all).
json_dumps = encoder(ensure_ascii=False, default=_json_default)


@dataclass(frozen=True, slots=True)
class Spec(Generic[R]):
    """A record class and its table: column names are the field names."""

    name: str
    make: Callable[..., R]
    columns: Columns


class Table(Generic[R]):
    """A ``Spec`` bound to one backend's placeholder and codec."""

    __slots__ = (
        "_decode", "_encode", "_getter", "_index", "_special", "columns", "insert", "make",
        "mark", "name", "select",
    )  # fmt: skip

    def __init__(self, spec: Spec[R], mark: str, encode: Codec, decode: Codec) -> None:
        self.name = spec.name
        self.make = spec.make
        self.columns = columns = spec.columns
        self.mark = mark
        self._encode = encode
        self._decode = decode
        self.select = ", ".join(c for c, _ in columns)
        marks = ", ".join(mark for _ in columns)
        self.insert = f"INSERT INTO {self.name} ({self.select}) VALUES ({marks})"
        self._getter = operator.attrgetter(*(c for c, _ in columns))
        self._index = {c: i for i, (c, _) in enumerate(columns)}
        # Only these columns need encoding; plain ones go to the driver as they are (hot path).
        self._special = tuple((i, k) for i, (_, k) in enumerate(columns) if k != "v")

    def qualified(self, alias: str) -> str:
        return ", ".join(f"{alias}.{c}" for c, _ in self.columns)

    def values(self, record: R, **overrides: Any) -> list[Any]:
        """The row for ``record`` (field values replaced by ``overrides``), encoded."""
        row = list(self._getter(record))
        for column, value in overrides.items():
            row[self._index[column]] = value
        encode = self._encode
        for i, kind in self._special:
            row[i] = encode(kind, row[i])
        return row

    def load(self, row: Sequence[Any]) -> R:
        decode = self._decode
        return self.make(**{c: decode(k, v) for (c, k), v in zip(self.columns, row, strict=True)})


DELIVERIES = Spec(
    "deliveries",
    Delivery,
    (
        ("id", "v"), ("source", "v"), ("integration", "v"), ("workspace", "v"),
        ("event", "v"), ("action", "v"), ("repo", "v"), ("branch", "v"), ("sha", "v"),
        ("app", "v"), ("pr_number", "v"), ("dedup_key", "v"), ("payload_digest", "v"),
        ("received_at", "ts"), ("processed_at", "ts"), ("outcome", "v"), ("reason", "v"),
        ("matched_rules", "array"), ("runs", "array"), ("http_status", "v"),
    ),
)  # fmt: skip
RUNS = Spec(
    "runs",
    Run,
    (
        ("id", "v"), ("workspace", "v"), ("suite", "v"), ("suite_id", "v"), ("rule", "v"),
        ("delivery_id", "v"), ("trigger_type", "v"), ("trigger", "json"),
        ("variables", "json"), ("environment", "v"), ("status", "v"), ("serial_key", "v"),
        ("revision", "v"), ("queued_at", "ts"), ("claimed_by", "v"), ("lease_until", "ts"),
        ("started", "bool"), ("started_at", "ts"), ("completed_at", "ts"),
        ("duration_ms", "v"), ("total_flows", "v"), ("passed_flows", "v"),
        ("failed_flows", "v"), ("error", "v"), ("status_report", "json"),
        ("report_target", "optjson"), ("flows", "jsontuple"), ("environment_instance", "v"),
        ("trigger_ref", "v"),
    ),
)  # fmt: skip
OUTBOX = Spec(
    "outbox",
    OutboxEntry,
    (
        ("id", "v"), ("run_id", "v"), ("seq", "v"), ("integration_workspace", "v"),
        ("integration", "v"), ("repo", "v"), ("sha", "v"), ("context", "v"), ("state", "v"),
        ("description", "v"), ("target_url", "v"), ("created_at", "ts"),
        ("next_attempt_at", "ts"), ("attempts", "v"), ("last_error", "v"), ("outcome", "v"),
        ("finished_at", "ts"),
    ),
)  # fmt: skip
ENVIRONMENTS = Spec(
    "environments",
    EnvironmentInstance,
    (
        ("id", "v"), ("workspace", "v"), ("name", "v"), ("context", "v"), ("state", "v"),
        ("provider", "v"), ("provider_app_name", "v"), ("namespace", "v"),
        ("routing", "json"), ("ttl_minutes", "v"), ("created_at", "ts"),
        ("last_used_at", "ts"), ("expires_at", "ts"), ("error", "v"), ("users", "v"),
        ("teardown_requested", "bool"), ("owner", "v"), ("lock_until", "ts"),
    ),
)  # fmt: skip


# -- SQL builders -----------------------------------------------------------------------


def page_sql(
    table: Table[Any],
    time_col: str,
    filters: Iterable[tuple[str, object]],
    before: str | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """Newest-first keyset page: ``before`` is the id of the previous page's last row."""
    mark = table.mark
    where: list[str] = []
    params: list[Any] = []
    for column, value in filters:
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if before is not None:
        where.append(
            f"({time_col}, id) < (SELECT {time_col}, id FROM {table.name} WHERE id = {mark})"
        )
        params.append(before)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    params.append(max(1, min(limit, MAX_PAGE)))
    sql = (
        f"SELECT {table.select} FROM {table.name} {clause}"
        f"ORDER BY {time_col} DESC, id DESC LIMIT {mark}"
    )
    return sql, params


def update_sql(table: Table[R], record: R, expect_state: str | None) -> tuple[str, list[Any]]:
    """Every column of ``record`` but its id, by id (and only in ``expect_state`` if given)."""
    mark = table.mark
    row = dict(zip((c for c, _ in table.columns), table.values(record), strict=True))
    record_id = row.pop("id")
    sql = f"UPDATE {table.name} SET {', '.join(f'{c} = {mark}' for c in row)} WHERE id = {mark}"
    values = [*row.values(), record_id]
    if expect_state is not None:
        sql += f" AND state = {mark}"
        values.append(expect_state)
    return sql, values


# -- run reports ------------------------------------------------------------------------


def strip_report(report: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in DERIVED_REPORT_KEYS}


def run_values(table: Table[Run], run: Run, **overrides: Any) -> list[Any]:
    """The row of ``run`` without the derived parts of its ``status_report``."""
    return table.values(run, status_report=strip_report(run.status_report), **overrides)


def status_summary(entry: OutboxEntry) -> dict[str, Any]:
    return {
        "state": entry.state,
        "context": entry.context,
        "repo": entry.repo,
        "sha": entry.sha,
        "description": entry.description,
        "target_url": entry.target_url,
        "outcome": entry.outcome,
        "attempts": entry.attempts,
        "last_error": entry.last_error,
        "at": isoformat(entry.finished_at),
    }


def with_reports(runs: list[Run], entries: Iterable[OutboxEntry]) -> list[Run]:
    """Add what the outbox did (``entries``, in order) to each run's ``status_report``."""
    per_run: dict[str, list[OutboxEntry]] = {}
    for entry in entries:
        per_run.setdefault(entry.run_id, []).append(entry)
    result: list[Run] = []
    for run in runs:
        found = per_run.get(run.id)
        if not found:
            result.append(run)
            continue
        report = dict(run.status_report)
        report["statuses"] = [status_summary(e) for e in found]
        given_up = [e for e in found if e.outcome == "given_up"]
        if given_up:
            last = given_up[-1]
            report["given_up"] = {
                "state": last.state,
                "at": isoformat(last.finished_at),
                "reason": last.last_error,
            }
        result.append(replace(run, status_report=report))
    return result
