"""The pure core: declaration files in, a frozen ``Snapshot`` or a list of ``Problem``s out.

Nothing here does IO, reads a clock or imports aiohttp/httpx/git/watchfiles (an
import-linter contract enforces it). ``validate`` and the daemon call the same loader.
"""

from __future__ import annotations
