"""End-to-end commit-status tests: the real daemon process against ``FakeGitea``."""
