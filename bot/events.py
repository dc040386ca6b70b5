"""What the job runner tells the outside world, and the words they share.

The runner (:mod:`bot.runner`) produces these; the Discord side (:mod:`bot.delivery`)
implements :class:`JobObserver`. Both import this module, and it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from bot.pixazo import DownloadedMedia
    from bot.storage.jobs import Job

#: Where a running job stands.
Stage = Literal["queued", "submitted", "processing", "waiting", "paused"]


@dataclass(frozen=True)
class Progress:
    """Where a running job stands, for its message."""

    stage: Stage
    elapsed: float = 0.0
    note: str | None = None


@dataclass(frozen=True)
class Failure:
    """Why a job did not produce an image. ``kind`` picks the wording shown to members."""

    kind: str
    detail: str = ""
    retryable: bool = False


class DeliveryRefused(Exception):
    """Discord refused the result for good (the same request would be refused again): the
    job fails at once instead of being retried."""


@dataclass(frozen=True)
class Published:
    """A message now shows the images of these jobs (one job, or a whole batch)."""

    message_id: int
    job_ids: tuple[int, ...]


class JobObserver(Protocol):
    """What the runner tells the outside world (implemented by the Discord side)."""

    async def job_progress(self, job: Job, progress: Progress) -> None:
        """The job moved; show it (implementations rate-limit their edits)."""

    async def job_result(self, job: Job, media: DownloadedMedia) -> Published | None:
        """The image exists: post it. None while it waits for the rest of its batch."""

    async def job_failed(self, job: Job, failure: Failure) -> Published | None:
        """The job ended without an image: say why. A batch whose last job failed posts its
        grid then: that publication is returned."""

    async def gateway_paused(self, reason: str) -> None:
        """Submissions stopped (the breaker opened); tell the admins once."""
