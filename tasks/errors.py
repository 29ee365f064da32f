"""The one exception type for problems a user can cause (bad data, missing credentials, bad uploads)."""

from pathlib import Path

from tasks.redaction import redact


class SliceWiseError(Exception):
    """A user-facing error: the CLI prints it as one red line and exits non-zero, never a traceback.

    Reason and path are redacted (tasks/redaction.py): a store URI with a password in it is shown as `user:***@`."""

    exit_code = 1

    def __init__(self, reason: str, path: Path | str | None = None):
        self.reason = redact(reason)
        self.path = redact(path) if path is not None else None
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)


class CredentialsError(SliceWiseError):
    """Missing or unusable credentials (Kaggle); exit code 2 as for a usage error."""

    exit_code = 2
