"""A job's deadline as seen inside the kernel: how much time is left, and who to stop when it runs out."""

from __future__ import annotations

import time

__all__ = ["Deadline"]


class Deadline:
    """A point in time (``time.time()`` seconds) after which the job has timed out.

    Parameters
    ----------
    at
        Wall-clock seconds since the epoch, or ``None`` for no deadline. Wall clock is used
        because the runner and the kernel are different processes.
    timeout_s
        The configured limit, kept for error messages.
    """

    def __init__(self, at: float | None, timeout_s: float | None = None) -> None:
        self.at = at
        self.timeout_s = timeout_s

    @classmethod
    def after(cls, timeout_s: float | None) -> Deadline:
        """A deadline ``timeout_s`` seconds from now (``None``: never)."""
        if timeout_s is None:
            return cls(None, None)
        return cls(time.time() + timeout_s, timeout_s)

    def remaining_s(self) -> float | None:
        """Seconds left (never negative), or ``None`` when there is no deadline."""
        if self.at is None:
            return None
        return max(0.0, self.at - time.time())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.at is not None and time.time() >= self.at

    def describe(self) -> str:
        """The limit in words, for error messages."""
        if self.timeout_s is None:
            return "no deadline"
        return f"the {self.timeout_s:g} s deadline"
