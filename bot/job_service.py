"""Creating jobs: from a command, a button, a reaction or a remix, and from one another.

The cogs parse what a member did into an :class:`Origin` (who, where, how to answer) and
plain inputs, then call :class:`JobService`. It resolves the defaults, asks fair use
(:mod:`bot.fair_use`), stores the jobs (counting the day's images and inserting in one
step), has them announced, and hands them to the runner. No Discord here: announcing and
finding reference images are callables the Discord side provides.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bot.errors import UserError
from bot.fair_use import REQUESTER_ONLY, FairUse
from bot.pixazo import ImageStyleReference, TextToImageRequest
from bot.pixazo.models import RANDOM_SEED_MAX, SEED_MAX
from bot.resolution import OPTION, Inputs, resolve
from bot.runner import JobRunner
from bot.storage.config import ConfigStore
from bot.storage.jobs import AlreadyRetried, Job, JobRepository, JobState, NewJob, Reference

log = logging.getLogger(__name__)

#: Interaction tokens live 15 minutes; stop using them a little earlier.
TOKEN_LIFETIME = 15 * 60 - 30
UNAVAILABLE = "This result is no longer available."
ALREADY_RETRIED = "This job was already retried."
#: Failures of a job the gateway took that happened on our side (or were never seen
#: through): Retry polls the same request again instead of paying for a new one.
REPOLLABLE = ("timeout", "delivery", "download", "gateway_down", "internal", "storage")
Variant = Literal["regenerate", "vary_subtle", "vary_strong", "remix", "reframe", "retry"]


@dataclass(frozen=True)
class VaryValues:
    """How a variation reads its result: as a style reference of ``strength``."""

    strength: float
    creativity: Literal["low", "high"]
    new_seed: bool


#: Krea 2 has no image-to-image, so a variation uses the result as a style reference:
#: subtle keeps the seed (reference 1.2, creativity low); strong takes a new one (0.6, high).
VARY = {
    "subtle": VaryValues(strength=1.2, creativity="low", new_seed=False),
    "strong": VaryValues(strength=0.6, creativity="high", new_seed=True),
}


def new_seed() -> int:
    """A random seed (within a signed 32-bit integer)."""
    return secrets.randbelow(RANDOM_SEED_MAX + 1)


@dataclass(frozen=True)
class Origin:
    """Who asks for images, where, and how they can be answered later.

    ``application_id`` and ``token`` are those of the interaction that asked (None for a
    reaction); ``filesize_limit`` is the largest upload allowed for the answer.
    """

    guild_id: int | None
    channel_id: int
    user_id: int
    filesize_limit: int = 10 * 1024 * 1024
    application_id: int | None = None
    token: str | None = None


#: Shows freshly stored jobs (queued) in one message and returns its id; ``first`` is
#: False for the further messages of one request (reframe's second ratio, for example).
Announce = Callable[[list[Job], bool], Awaitable[int]]


class ReferenceSource(Protocol):
    """Where a job's reference images can be fetched again with valid URLs (Discord)."""

    async def fresh_url(self, job: Job, reference: Reference) -> str | None:
        """A currently valid URL of a kept reference copy, or None when it is gone."""
        ...

    async def result_reference(self, job: Job, strength: float) -> Reference | None:
        """The job's own image as a reference (role ``result``), or None when it is gone."""
        ...


class JobService:
    """Owns making jobs: resolve, decide, store, announce, start."""

    def __init__(
        self,
        jobs: JobRepository,
        config: ConfigStore,
        fair_use: FairUse,
        runner: JobRunner,
        references: ReferenceSource,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._jobs = jobs
        self._config = config
        self._fair_use = fair_use
        self._runner = runner
        self._references = references
        self._clock = clock

    # -- finding jobs --------------------------------------------------------------

    async def load(self, job_id: int, origin: Origin) -> Job:
        """The job a press names, when it is one of this server's and this channel's jobs.

        A custom_id is a claim, not a proof (any client can send any custom_id): a job of
        another server or channel, or asked for from a DM, is "no longer available" here.
        """
        job = await self._jobs.get(job_id)
        if job is None or job.guild_id != origin.guild_id or job.channel_id != origin.channel_id:
            raise UserError(UNAVAILABLE, plain=True)
        return job

    async def pressable(self, job_id: int, origin: Origin) -> Job:
        """A result the member may make new images from (the server's button rule)."""
        job = await self.load(job_id, origin)
        if not await self.may_press(job, origin.user_id, origin.channel_id):
            raise UserError(REQUESTER_ONLY, plain=True)
        return job

    async def may_press(self, job: Job, user_id: int, channel_id: int | None) -> bool:
        """Whether ``user_id`` may make new images from ``job``."""
        config = await self._config.server(job.guild_id) if job.guild_id is not None else None
        return self._fair_use.may_press(config, job.user_id, user_id, channel_id)

    async def by_message(self, message_id: int) -> Job | None:
        """The job whose result (or own message) is ``message_id``."""
        return await self._jobs.by_result_message(message_id)

    # -- making jobs ---------------------------------------------------------------

    async def imagine(
        self, origin: Origin, inputs: Inputs, announce: Announce, *, count: int = 1
    ) -> list[Job]:
        """``/imagine``: resolve the defaults, check fair use, store, announce and start
        ``count`` jobs (a batch of seeds ``seed, seed+1, …`` sharing one message)."""
        config = prefs = None
        if origin.guild_id is not None:
            config = await self._config.server(origin.guild_id)
            prefs = await self._config.prefs(origin.guild_id, origin.user_id)
        resolved = resolve(inputs, config=config, channel_id=origin.channel_id, prefs=prefs)
        decision = await self._fair_use.decide(
            origin.guild_id, origin.channel_id, resolved.request.prompt, count, batch=True
        )
        batch = []
        for index in range(count):
            params = resolved.request
            if count > 1:
                first = params.seed or 0
                seed = first + index if first + index <= SEED_MAX else first - index
                params = params.model_copy(update={"seed": seed})
            batch.append(self._new_job(origin, params, resolved.sources, inputs.references))
        jobs = await self._jobs.create_many(batch, admit=decision.admit, since=decision.since)
        await self._announce_and_start([jobs], announce)
        return jobs

    async def derive(
        self,
        parent: Job,
        origin: Origin,
        variant: Variant,
        announce: Announce,
        *,
        prompt: str | None = None,
        seed: int | None = None,
        ratios: list[str] | None = None,
    ) -> list[Job]:
        """New job(s) from ``parent``: regenerate, vary, remix, reframe (one job per
        ratio) or retry. Its reference images are fetched again with valid URLs."""
        targets: list[str | None] = list(ratios) if ratios else [None]
        decision = await self._fair_use.decide(
            parent.guild_id, origin.channel_id, prompt or parent.params.prompt, len(targets)
        )
        references = await self._current_references(parent)
        changes: dict[str, Any] = {}
        if variant in ("vary_subtle", "vary_strong"):
            vary = VARY[variant.removeprefix("vary_")]
            result = await self._references.result_reference(parent, vary.strength)
            if result is None:
                raise UserError("The image of this result is no longer available.")
            references.append(result)
            changes["creativity"] = vary.creativity
            if vary.new_seed:
                changes["seed"] = new_seed()
        if prompt is not None:
            changes["prompt"] = prompt
        if seed is not None:
            changes["seed"] = seed
        base = parent.params.model_copy(
            update={
                "image_style_references": tuple(
                    ImageStyleReference(image_url=r.url or "", strength=r.strength)
                    for r in references
                )
            }
        )
        batch = []
        for ratio in targets:
            update = dict(changes)
            if ratio is not None:
                update["aspect_ratio"] = ratio
            params = TextToImageRequest.model_validate({**base.model_dump(), **update})
            sources = dict(parent.sources)
            sources.update({key: OPTION for key in update})
            batch.append(
                self._new_job(origin, params, sources, references, parent=parent, variant=variant)
            )
        try:
            jobs = await self._jobs.create_many(
                batch,
                admit=decision.admit,
                since=decision.since,
                grouped=False,
                retry_of=parent.id if variant == "retry" else None,
            )
        except AlreadyRetried:
            raise UserError(ALREADY_RETRIED, plain=True) from None
        await self._announce_and_start([[job] for job in jobs], announce)
        return jobs

    async def retryable(self, job_id: int, origin: Origin) -> Job:
        """A failed or interrupted job the member may retry (once)."""
        job = await self.pressable(job_id, origin)
        if job.retried_by is not None:
            raise UserError(ALREADY_RETRIED, plain=True)
        if job.state not in (JobState.FAILED, JobState.INTERRUPTED):
            raise UserError("This job does not need a retry.", plain=True)
        return job

    async def retry(self, job: Job, origin: Origin, announce: Announce) -> list[Job]:
        """Retry a failed job, paying only when it must: a job the gateway took (it has a
        request id) and that failed on our side is polled again (and its image fetched
        again if it exists), no new request; otherwise one new job, at most one however many
        times Retry is pressed. Returns the new job(s) (none when polled again)."""
        if job.request_id and job.error_kind in REPOLLABLE:
            state = JobState.DELIVERING if job.media_url else JobState.SUBMITTED
            if not await self._jobs.reopen(job, state):
                raise UserError(ALREADY_RETRIED, plain=True)
            log.info("job %s: retried by polling request %s again", job.id, job.request_id)
            self._runner.start(job)
            return []
        return await self.derive(job, origin, "retry", announce)

    async def cancel(self, job_ids: list[int], user_id: int) -> tuple[list[Job], list[Job]]:
        """Cancel queued jobs of a member (never sent, so never paid): (cancelled, kept)."""
        cancelled: list[Job] = []
        kept: list[Job] = []
        for job_id in job_ids:
            job = await self._jobs.get(job_id)
            if job is None or job.user_id != user_id:
                continue
            (cancelled if await self._runner.cancel(job) else kept).append(job)
        return cancelled, kept

    async def take_window(self, key: str, seconds: float) -> bool:
        """Take a one-shot window shared by every process (True for the one that got it)."""
        return await self._config.take_window(key, seconds)

    async def member_jobs(self, guild_id: int | None, user_id: int) -> list[tuple[Job, int]]:
        """A member's recent jobs with their place in line (0 when not waiting)."""
        recent = await self._jobs.for_member(guild_id, user_id, 25)
        return [(job, self._runner.position(job.id)) for job in recent]

    # -- helpers -------------------------------------------------------------------

    def _new_job(
        self,
        origin: Origin,
        params: TextToImageRequest,
        sources: dict[str, str],
        references: list[Reference],
        *,
        parent: Job | None = None,
        variant: str | None = None,
    ) -> NewJob:
        with_token = origin.token is not None and origin.application_id is not None
        return NewJob(
            guild_id=origin.guild_id,
            channel_id=origin.channel_id,
            user_id=origin.user_id,
            params=params,
            sources=sources,
            refs=list(references),
            application_id=origin.application_id if with_token else None,
            interaction_token=origin.token if with_token else None,
            token_expires_at=self._clock() + TOKEN_LIFETIME if with_token else None,
            filesize_limit=origin.filesize_limit,
            parent_id=parent.id if parent else None,
            variant=variant,
        )

    async def _current_references(self, job: Job) -> list[Reference]:
        """The job's references with URLs that are valid now (re-fetched from their message)."""
        result = []
        for reference in job.refs:
            url = await self._references.fresh_url(job, reference)
            if url is None:
                raise UserError(
                    "The reference images of this result are no longer available "
                    "(its message was deleted)."
                )
            result.append(reference.model_copy(update={"url": url}))
        return result

    async def _announce_and_start(self, groups: list[list[Job]], announce: Announce) -> None:
        """Show each group of jobs in a message of its own, then start them. A job that
        could not be announced is cancelled at once (never paid, never orphaned)."""
        for index, group in enumerate(groups):
            try:
                message_id = await announce(group, index == 0)
                await self._jobs.set_message(group, message_id)
            except BaseException:
                leftover = [job for later in groups[index:] for job in later]
                log.warning(
                    "jobs %s could not be announced; cancelled", [job.id for job in leftover]
                )
                for job in leftover:
                    await self._jobs.update(
                        job,
                        state=JobState.CANCELLED,
                        error_kind="unannounced",
                        finished_at=self._clock(),
                    )
                raise
            for job in group:
                self._runner.start(job)
