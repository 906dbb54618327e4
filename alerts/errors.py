"""The alerts package's exceptions: one root, `AlertsError`, for every error it raises.

    AlertsError
    ├── PushConfigError   routes Apprise cannot use (raised at start-up; names routes by label)
    └── PushError         one push attempt did not deliver (the worker retries it)
        ├── PushFailedError   the service refused the message or could not be reached
        └── PushTimeoutError  no outcome within the per-attempt timeout

No message of these quotes a route's URL: URLs carry tokens and passwords.
"""

from __future__ import annotations

__all__ = ["AlertsError", "PushConfigError", "PushError", "PushFailedError", "PushTimeoutError"]


class AlertsError(Exception):
    """The root of every exception the alerts package defines."""


class PushConfigError(AlertsError):
    """Routes Apprise cannot use; `problems` holds one line per route, by label, no URL."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class PushError(AlertsError):
    """A push attempt did not deliver; the worker retries it with backoff."""


class PushFailedError(PushError):
    """The service refused the message or could not be reached (Apprise does not say which)."""


class PushTimeoutError(PushError):
    """No outcome within the per-attempt timeout; the attempt's thread may still be running."""
