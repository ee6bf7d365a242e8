"""``SecretValue``: a secret's plaintext that never prints itself.

Sits at the bottom of the package (beside ``errors``) so that ``settings``, ``log`` and
``config`` can all use it; ``config.model`` re-exports it for the declarations.
"""

from __future__ import annotations

from typing import Any


class SecretValue:
    """A secret's plaintext, which never prints itself (repr, str, f-strings, logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plaintext, for the one call that sends it (HMAC key, auth header)."""
        return self._value

    def __repr__(self) -> str:
        return "SecretValue('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("SecretValue", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("SecretValue cannot be pickled")
