"""Where declaration files come from: a plain directory, or a Git repository."""

from __future__ import annotations
