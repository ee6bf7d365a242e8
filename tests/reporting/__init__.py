"""Tests of commit-status reporting: the pure target and entry rules, and the outbox sender."""
