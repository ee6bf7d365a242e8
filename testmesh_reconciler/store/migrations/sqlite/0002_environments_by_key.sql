-- 0002: every record of one reuse key (live or with a teardown requested), newest first,
-- for the acquisition's one lookup (environments_for_key) without a scan of the table.

CREATE INDEX environments_by_key ON environments (workspace, name, context, created_at);
