-- 0001: the runtime store's first schema (PostgreSQL), the same tables as SQLite's 0001.
-- Timestamps are timestamptz (UTC in and out); JSON columns are json (text kept as written);
-- ids and other ordered keys use COLLATE "C" so pages sort bytewise, as on SQLite.

CREATE TABLE deliveries (
    id             text COLLATE "C" PRIMARY KEY,
    source         text NOT NULL,
    integration    text,
    workspace      text NOT NULL,
    event          text NOT NULL,
    action         text,
    repo           text NOT NULL,
    branch         text,
    sha            text,
    app            text,
    pr_number      bigint,
    dedup_key      text,
    payload_digest text NOT NULL,
    received_at    timestamptz NOT NULL,
    processed_at   timestamptz,
    outcome        text NOT NULL
                   CHECK (outcome IN ('accepted', 'duplicate', 'ignored', 'rejected')),
    reason         text,
    matched_rules  text[] NOT NULL DEFAULT '{}',
    runs           text[] NOT NULL DEFAULT '{}',
    http_status    integer
);
CREATE INDEX deliveries_by_time ON deliveries (received_at, id);
CREATE INDEX deliveries_by_source ON deliveries (source, received_at, id);
CREATE INDEX deliveries_by_repo ON deliveries (repo, received_at, id);
CREATE INDEX deliveries_by_outcome ON deliveries (outcome, received_at, id);

-- One row per dedup key of an accepted delivery: the primary key makes two racing replicas
-- yield one winner (INSERT ... ON CONFLICT waits for the other transaction). A row older
-- than the window is taken over. The foreign key is checked at commit, so the key can be
-- claimed before the delivery row is written.
CREATE TABLE dedup_keys (
    key         text PRIMARY KEY,
    delivery_id text NOT NULL REFERENCES deliveries (id) DEFERRABLE INITIALLY DEFERRED,
    received_at timestamptz NOT NULL
);

CREATE TABLE runs (
    id                   text COLLATE "C" PRIMARY KEY,
    workspace            text NOT NULL,
    suite                text NOT NULL,
    suite_id             text NOT NULL,
    rule                 text,
    delivery_id          text REFERENCES deliveries (id),
    trigger_type         text NOT NULL CHECK (trigger_type IN ('manual', 'argocd', 'webhook')),
    trigger              json NOT NULL DEFAULT '{}',
    variables            json NOT NULL DEFAULT '{}',
    environment          text,
    status               text NOT NULL
                         CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    serial_key           text NOT NULL DEFAULT '',
    revision             text,
    queued_at            timestamptz NOT NULL,
    claimed_by           text,
    lease_until          timestamptz,
    started              boolean NOT NULL DEFAULT false,
    started_at           timestamptz,
    completed_at         timestamptz,
    duration_ms          bigint,
    total_flows          integer NOT NULL DEFAULT 0,
    passed_flows         integer NOT NULL DEFAULT 0,
    failed_flows         integer NOT NULL DEFAULT 0,
    error                text,
    status_report        json NOT NULL DEFAULT '{}',
    report_target        json,
    flows                json NOT NULL DEFAULT '[]',
    environment_instance text,
    trigger_ref          text
);
CREATE INDEX runs_by_time ON runs (queued_at, id);
CREATE INDEX runs_by_suite ON runs (workspace, suite, queued_at, id);
CREATE INDEX runs_by_status ON runs (status, queued_at, id);
CREATE INDEX runs_pending ON runs (queued_at, id) WHERE status = 'pending';
CREATE INDEX runs_by_serial_key ON runs (serial_key, status, queued_at) WHERE serial_key <> '';
CREATE INDEX runs_by_lease ON runs (lease_until) WHERE status = 'running';
CREATE INDEX runs_by_delivery ON runs (delivery_id);
-- At most one running run per serial key, enforced by the database: two replicas claiming
-- different pending runs of one key at once cannot both succeed (the second UPDATE fails
-- with a unique violation and that replica tries another run).
CREATE UNIQUE INDEX runs_one_running_per_key ON runs (serial_key)
    WHERE status = 'running' AND serial_key <> '';

CREATE TABLE outbox (
    id                    text COLLATE "C" PRIMARY KEY,
    pos                   bigint GENERATED ALWAYS AS IDENTITY,  -- insertion order (SQLite's rowid)
    run_id                text NOT NULL REFERENCES runs (id),
    seq                   integer NOT NULL,
    integration_workspace text NOT NULL,
    integration           text NOT NULL,
    repo                  text NOT NULL,
    sha                   text NOT NULL,
    context               text NOT NULL,
    state                 text NOT NULL,
    description           text NOT NULL,
    target_url            text NOT NULL,
    created_at            timestamptz NOT NULL,
    next_attempt_at       timestamptz NOT NULL,
    attempts              integer NOT NULL DEFAULT 0,
    last_error            text,
    outcome               text NOT NULL DEFAULT 'queued'
                          CHECK (outcome IN ('queued', 'sent', 'skipped', 'given_up')),
    finished_at           timestamptz,
    -- A replica's short claim while it posts the entry, so two replicas never post it at once.
    claimed_until         timestamptz
);
-- Queued entries per (repo, sha, context) group in posting order; and by due time.
CREATE INDEX outbox_queued_groups ON outbox (repo, sha, context, created_at, seq, pos)
    WHERE outcome = 'queued';
CREATE INDEX outbox_queued_due ON outbox (next_attempt_at) WHERE outcome = 'queued';
CREATE INDEX outbox_given_up ON outbox (finished_at) WHERE outcome = 'given_up';
CREATE INDEX outbox_by_run ON outbox (run_id, created_at, seq, pos);

CREATE TABLE environments (
    id                 text COLLATE "C" PRIMARY KEY,
    workspace          text NOT NULL,
    name               text NOT NULL,
    context            text NOT NULL,
    state              text NOT NULL
                       CHECK (state IN ('cold', 'provisioning', 'warm', 'running', 'cooling',
                                        'destroyed')),
    provider           text NOT NULL,
    provider_app_name  text,
    namespace          text,
    routing            json NOT NULL DEFAULT '{}',
    ttl_minutes        double precision NOT NULL,
    created_at         timestamptz NOT NULL,
    last_used_at       timestamptz,
    expires_at         timestamptz,
    error              text,
    users              integer NOT NULL DEFAULT 0,
    teardown_requested boolean NOT NULL DEFAULT false,
    owner              text,
    lock_until         timestamptz
);
-- At most one live instance per reuse key, so two replicas provisioning race to one winner.
CREATE UNIQUE INDEX environments_live_key ON environments (workspace, name, context)
    WHERE state NOT IN ('cold', 'destroyed') AND NOT teardown_requested;
CREATE INDEX environments_by_time ON environments (created_at, id);
CREATE INDEX environments_by_state ON environments (state, created_at, id);

CREATE TABLE replicas (
    name     text COLLATE "C" PRIMARY KEY,
    revision text,
    seen_at  timestamptz NOT NULL
);
