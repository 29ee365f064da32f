"""Secrets out of everything a person or another program can read: one function, `redact`, for every text.

A tracking URI may carry credentials (`http://user:PASSWORD@host`, `postgresql://user:PASSWORD@host/db`, a
`?token=...` query). `redact` masks them wherever they appear in a text: the password of any `scheme://user:pw@`,
the value of token-like query parameters, and, literally, every secret found in the environment's store URIs
(so an error message that quotes the password on its own is masked too). It is used by SliceWiseError (every
user-facing error line), the reports and caches that record a store (reports/register.json, the serving cache),
the API's answers (/healthz, /model/info) and, through `install_log_redaction`, every log record of the process.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote

MASK = "***"
# Environment variables whose values are store URIs that may hold credentials.
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL", "DATABASE_URL")
# Other environment variables that are secrets outright.
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "SLICEWISE_ADMIN_TOKEN", "KAGGLE_KEY",
                    "POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY")
USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s'\"]*):(?P<password>[^@/\s'\"]+)@")
TOKEN_QUERY = re.compile(
    r"(?P<key>[?&;](?:[\w.\-]*(?:token|password|passwd|pwd|secret|signature|sig|credential|api[_\-]?key|apikey|"
    r"access[_\-]?key|auth)[\w.\-]*)=)(?P<value>[^&#\s'\"]+)", re.IGNORECASE)
MIN_LITERAL = 4  # shorter "secrets" would mask ordinary words


def _env_secrets() -> list[str]:
    secrets = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    for name in URI_VARIABLES:
        uri = os.environ.get(name) or ""
        secrets += [m.group("password") for m in USERINFO.finditer(uri)]
        secrets += [m.group("value") for m in TOKEN_QUERY.finditer(uri)]
    found = {s for s in secrets if len(s) >= MIN_LITERAL} | {unquote(s) for s in secrets if len(s) >= MIN_LITERAL}
    return sorted(found, key=len, reverse=True)  # longest first: a secret containing another is masked whole


def redact(text: object) -> str:
    """`text` with every credential masked: `scheme://user:***@`, `?token=***`, and each secret of the environment."""
    text = str(text)
    text = USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
    text = TOKEN_QUERY.sub(lambda m: f"{m.group('key')}{MASK}", text)
    for secret in _env_secrets():
        text = text.replace(secret, MASK)
    return text


class _RedactedRecords:
    """A log record factory that masks the message (arguments merged in) and any exception text at creation,
    before any handler, formatter or library logger configuration can see it."""

    def __init__(self, factory):
        self.factory = factory

    def __call__(self, *args, **kwargs) -> logging.LogRecord:
        record = self.factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return record
        if (masked := redact(message)) != message:  # untouched otherwise: some formatters read record.args
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None  # formatters would render the raw traceback again
        return record


def install_log_redaction() -> None:
    """Mask credentials in every log record of this process, whichever logger or handler emits it (idempotent)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactedRecords):
        logging.setLogRecordFactory(_RedactedRecords(current))


def install_beneath_redaction(wrapper: type) -> None:
    """Install `wrapper(factory)` as a log record factory that sees each record before the redaction does (which then
    masks what it leaves), however early the redaction was installed; idempotent."""
    install_log_redaction()
    redacted = logging.getLogRecordFactory()
    if isinstance(redacted, _RedactedRecords) and not isinstance(redacted.factory, wrapper):
        redacted.factory = wrapper(redacted.factory)
