"""Per-job webhook URLs for Pixazo callbacks, signed so that only Pixazo can know them."""

from __future__ import annotations

import hashlib
import hmac

WEBHOOK_PATH = "/webhooks/pixazo/{job_id}/{token}"


def webhook_token(secret: str, job_id: int) -> str:
    """The unguessable part of a job's webhook URL: an HMAC of its id."""
    return hmac.new(secret.encode(), f"job:{job_id}".encode(), hashlib.sha256).hexdigest()[:40]


def webhook_url(public_url: str, secret: str, job_id: int) -> str:
    """The URL Pixazo calls back for one job."""
    path = WEBHOOK_PATH.format(job_id=job_id, token=webhook_token(secret, job_id))
    return public_url.rstrip("/") + path


def verify(secret: str | None, raw_job_id: str, token: str) -> int | None:
    """The job id a callback path names, when its token is the one we signed; else None."""
    if not secret or not (raw_job_id.isascii() and raw_job_id.isdigit() and len(raw_job_id) < 20):
        return None
    job_id = int(raw_job_id)
    # As bytes: compare_digest refuses str with non-ASCII characters (a forged path may).
    expected = webhook_token(secret, job_id).encode()
    if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected):
        return None
    return job_id
