-- 0001: the runtime store's first schema (SQLite).
-- Timestamps are INTEGER microseconds since the Unix epoch, UTC; JSON columns are TEXT.

CREATE TABLE deliveries (
    id             TEXT PRIMARY KEY,
    source         TEXT NOT NULL,
    integration    TEXT,
    workspace      TEXT NOT NULL,
    event          TEXT NOT NULL,
    action         TEXT,
    repo           TEXT NOT NULL,
    branch         TEXT,
    sha            TEXT,
    app            TEXT,
    pr_number      INTEGER,
    dedup_key      TEXT,
    payload_digest TEXT NOT NULL,
    received_at    INTEGER NOT NULL,
    processed_at   INTEGER,
    outcome        TEXT NOT NULL
                   CHECK (outcome IN ('accepted', 'duplicate', 'ignored', 'rejected')),
    reason         TEXT,
    matched_rules  TEXT NOT NULL DEFAULT '[]',
    runs           TEXT NOT NULL DEFAULT '[]',
    http_status    INTEGER
);
CREATE INDEX deliveries_by_time ON deliveries (received_at, id);
CREATE INDEX deliveries_by_source ON deliveries (source, received_at, id);
CREATE INDEX deliveries_by_repo ON deliveries (repo, received_at, id);
CREATE INDEX deliveries_by_outcome ON deliveries (outcome, received_at, id);

-- One row per dedup key of an accepted delivery: the primary key makes two racing
-- writers (replicas) yield one winner. A row older than the window is replaced.
CREATE TABLE dedup_keys (
    key         TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    received_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE runs (
    id                   TEXT PRIMARY KEY,
    workspace            TEXT NOT NULL,
    suite                TEXT NOT NULL,
    suite_id             TEXT NOT NULL,
    rule                 TEXT,
    delivery_id          TEXT REFERENCES deliveries (id),
    trigger_type         TEXT NOT NULL CHECK (trigger_type IN ('manual', 'argocd', 'webhook')),
    trigger              TEXT NOT NULL DEFAULT '{}',
    variables            TEXT NOT NULL DEFAULT '{}',
    environment          TEXT,
    status               TEXT NOT NULL
                         CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    serial_key           TEXT NOT NULL DEFAULT '',
    revision             TEXT,
    queued_at            INTEGER NOT NULL,
    claimed_by           TEXT,
    lease_until          INTEGER,
    started              INTEGER NOT NULL DEFAULT 0,
    started_at           INTEGER,
    completed_at         INTEGER,
    duration_ms          INTEGER,
    total_flows          INTEGER NOT NULL DEFAULT 0,
    passed_flows         INTEGER NOT NULL DEFAULT 0,
    failed_flows         INTEGER NOT NULL DEFAULT 0,
    error                TEXT,
    status_report        TEXT NOT NULL DEFAULT '{}',
    report_target        TEXT,
    flows                TEXT NOT NULL DEFAULT '[]',
    environment_instance TEXT,
    trigger_ref          TEXT
);
CREATE INDEX runs_by_time ON runs (queued_at, id);
CREATE INDEX runs_by_suite ON runs (workspace, suite, queued_at, id);
CREATE INDEX runs_by_status ON runs (status, queued_at, id);
CREATE INDEX runs_by_serial_key ON runs (serial_key, status, queued_at) WHERE serial_key <> '';
CREATE INDEX runs_by_lease ON runs (lease_until) WHERE status = 'running';
CREATE INDEX runs_by_delivery ON runs (delivery_id);

CREATE TABLE outbox (
    id                    TEXT PRIMARY KEY,
    run_id                TEXT NOT NULL REFERENCES runs (id),
    seq                   INTEGER NOT NULL,
    integration_workspace TEXT NOT NULL,
    integration           TEXT NOT NULL,
    repo                  TEXT NOT NULL,
    sha                   TEXT NOT NULL,
    context               TEXT NOT NULL,
    state                 TEXT NOT NULL,
    description           TEXT NOT NULL,
    target_url            TEXT NOT NULL,
    created_at            INTEGER NOT NULL,
    next_attempt_at       INTEGER NOT NULL,
    attempts              INTEGER NOT NULL DEFAULT 0,
    last_error            TEXT,
    outcome               TEXT NOT NULL DEFAULT 'queued'
                          CHECK (outcome IN ('queued', 'sent', 'skipped', 'given_up')),
    finished_at           INTEGER
);
-- Queued entries per (repo, sha, context) group in posting order; and by due time.
CREATE INDEX outbox_queued_groups ON outbox (repo, sha, context, created_at, seq)
    WHERE outcome = 'queued';
CREATE INDEX outbox_queued_due ON outbox (next_attempt_at) WHERE outcome = 'queued';
CREATE INDEX outbox_given_up ON outbox (finished_at) WHERE outcome = 'given_up';
CREATE INDEX outbox_by_run ON outbox (run_id, seq);

CREATE TABLE environments (
    id                 TEXT PRIMARY KEY,
    workspace          TEXT NOT NULL,
    name               TEXT NOT NULL,
    context            TEXT NOT NULL,
    state              TEXT NOT NULL
                       CHECK (state IN ('cold', 'provisioning', 'warm', 'running', 'cooling',
                                        'destroyed')),
    provider           TEXT NOT NULL,
    provider_app_name  TEXT,
    namespace          TEXT,
    routing            TEXT NOT NULL DEFAULT '{}',
    ttl_minutes        REAL NOT NULL,
    created_at         INTEGER NOT NULL,
    last_used_at       INTEGER,
    expires_at         INTEGER,
    error              TEXT,
    users              INTEGER NOT NULL DEFAULT 0,
    teardown_requested INTEGER NOT NULL DEFAULT 0,
    owner              TEXT,
    lock_until         INTEGER
);
-- At most one live instance per reuse key, so two replicas provisioning race to one winner.
CREATE UNIQUE INDEX environments_live_key ON environments (workspace, name, context)
    WHERE state NOT IN ('cold', 'destroyed') AND teardown_requested = 0;
CREATE INDEX environments_by_time ON environments (created_at, id);
CREATE INDEX environments_by_state ON environments (state, created_at, id);

CREATE TABLE replicas (
    name     TEXT PRIMARY KEY,
    revision TEXT,
    seen_at  INTEGER NOT NULL
) WITHOUT ROWID;
