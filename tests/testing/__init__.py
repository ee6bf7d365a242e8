"""Test doubles and builders for the external systems (Gitea, Argo CD)."""
