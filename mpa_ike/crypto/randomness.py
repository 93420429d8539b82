"""Randomness as the core takes it: injected, so that a test can replay an exchange."""

from __future__ import annotations

from collections.abc import Callable

Random = Callable[[int], bytes]
"""``random(n)`` returns ``n`` random bytes (:func:`os.urandom` in the daemons)."""
