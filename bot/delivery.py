"""The Discord side of the runner: announces jobs, shows progress, posts results and failures.

It implements :class:`~bot.events.JobObserver` (what the runner reports) and
:class:`~bot.job_service.ReferenceSource` (reference images signed afresh). It receives the
bytes it publishes: the runner downloads each image once, and a batch's images wait here,
in memory, until the last one arrives and the batch is posted, each image once.

While the interaction token lives (15 minutes) the job's message is edited through it and
may carry files up to the interaction's ``attachment_size_limit``; afterwards the bot's own
token is used, with the server's upload limit, each file fitted on its own: results are
posted as a reply in the channel and the original is edited when it still can be. Progress
edits never hold up the runner: they are coalesced per message, at most one every few
seconds, the latest text winning, and stop for a message the bot can no longer see.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord

from bot.components import batch_view, result_view, retired_view, retry_view
from bot.errors import UserError
from bot.events import DeliveryRefused, Failure, Progress, Published
from bot.imaging import ImageIncomplete, ImageRejected, ImageWorker
from bot.job_service import Announce
from bot.pixazo import DownloadedMedia
from bot.presenter import (
    batch_embed,
    failure_content,
    progress_content,
    reference_embed,
    result_embed,
)
from bot.storage.config import ConfigStore
from bot.storage.jobs import Job, JobRepository, JobState, Reference

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
#: Seconds between two progress edits of the same message (Discord's message edit bucket is
#: about 5 per 5 s per channel, shared by every job there).
PROGRESS_EDIT_INTERVAL = 3.0
#: Uploads with the bot token get the server's limit: 10 MiB below boost tier 2.
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
#: Messages whose progress edits are tracked at once (the oldest idle ones are forgotten).
MAX_TRACKED_MESSAGES = 10_000
#: HTTP statuses with which Discord refuses a result for good (the same body would fail again).
REFUSED_STATUSES = (400, 403, 413)
PAUSE_NOTICES = {
    "balance": (
        "⏸️ **kreabot paused every image request: the Pixazo balance is empty.** "
        "Top up the wallet at pixazo.ai; waiting jobs resume on their own."
    ),
    "outage": (
        "⏸️ **kreabot paused image requests: the Pixazo gateway keeps failing.** "
        "Waiting jobs resume on their own when it recovers."
    ),
    "unauthorized": (
        "🔑 **kreabot paused image requests: the Pixazo gateway refused the API key** "
        "(revoked, or over a quota). Check `PIXAZO_API_KEY` at pixazo.ai; waiting jobs "
        "resume on their own once the key is accepted."
    ),
}
#: Long edge of the reference copies kept on result messages.
REFERENCE_EDGE = 768
MAX_REFERENCE_FETCH = 25 * 1024 * 1024
#: How much of an attachment is read to check what it really is.
PROBE_BYTES = 64 * 1024
#: States in which a job of a batch will bring no image to its grid.
WITHOUT_IMAGE = (JobState.FAILED, JobState.INTERRUPTED, JobState.CANCELLED)

Channel = discord.TextChannel | discord.Thread | discord.VoiceChannel | discord.StageChannel


def jump_url(guild_id: int | None, channel_id: int, message_id: int) -> str:
    """A link to a message."""
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


#: Builds a result's embeds and files for an upload limit (per file).
Build = Callable[[int], "Awaitable[tuple[list[discord.Embed], list[tuple[str, bytes]]]]"]


@dataclass
class _Edits:
    """The progress edits of one message: what it shows, what it should show."""

    job: Job
    wanted: str
    shown: str | None = None
    stage: str = "queued"
    shown_stage: str | None = None
    last: float = 0.0
    gone: bool = False
    task: asyncio.Task[None] | None = None


class DiscordDelivery:
    """Shows jobs in Discord: announcements, progress, results, failures, pauses."""

    def __init__(
        self,
        client: discord.Client,
        repo: JobRepository,
        config: ConfigStore,
        session: aiohttp.ClientSession,
        images: ImageWorker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.repo = repo
        self.config = config
        self.session = session
        self.images = images
        self.clock = clock
        self._edits: dict[int, _Edits] = {}
        self._batch_locks: dict[int, asyncio.Lock] = {}
        #: Images of a batch's jobs, until the grid is posted (None: that job failed).
        self._held: dict[int, dict[int, bytes | None]] = {}

    # -- plumbing ------------------------------------------------------------------

    def _webhook(self, job: Job) -> discord.Webhook:
        assert job.application_id is not None and job.interaction_token is not None
        return discord.Webhook.partial(
            job.application_id, job.interaction_token, client=self.client
        )

    def upload_limit(self, job: Job, *, with_token: bool) -> int:
        """The largest file allowed on a path: the interaction's limit while its token is
        used, else the server's (boost tier) limit, for messages sent with the bot token."""
        if with_token:
            return job.filesize_limit
        guild = self.client.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def channel_for(self, job: Job) -> Channel:
        """The job's channel, from the cache or the API."""
        channel = self.client.get_channel(job.channel_id)
        if channel is None:
            channel = await self.client.fetch_channel(job.channel_id)
        assert isinstance(channel, Channel)
        return channel

    async def edit_job_message(self, job: Job, **fields: Any) -> bool:
        """Edit the job's own message by whichever token still works. False if it is gone."""
        if job.message_id is None:
            return False
        fields.setdefault("allowed_mentions", NO_MENTIONS)
        try:
            if job.token_valid(self.clock()):
                await self._webhook(job).edit_message(job.message_id, **fields)
            else:
                channel = await self.channel_for(job)
                partial = channel.get_partial_message(job.message_id)
                await partial.edit(**fields)
        except discord.NotFound:
            log.info("job %s: its message is gone", job.id)
            return False
        except discord.HTTPException as exc:
            if exc.code == 50027:  # token expired earlier than we thought
                job.token_expires_at = 0
                return await self.edit_job_message(job, **fields)
            raise
        return True

    # -- announcing ------------------------------------------------------------------

    def announcer(self, interaction: discord.Interaction[Any]) -> Announce:
        """Announce jobs in the deferred reply to ``interaction`` (further groups of the
        same request get follow-ups of their own)."""

        async def announce(jobs: list[Job], first: bool) -> int:
            content = progress_content(jobs[0], Progress("queued"), batch=len(jobs))
            message: discord.Message
            if first:
                message = await interaction.edit_original_response(
                    content=content, allowed_mentions=NO_MENTIONS
                )
            else:
                message = await interaction.followup.send(
                    content, allowed_mentions=NO_MENTIONS, wait=True
                )
            self._announced(jobs, content)
            return message.id

        return announce

    def channel_announcer(self, channel_id: int, reply_to: int | None) -> Announce:
        """Announce jobs in a channel message (no interaction to answer, e.g. a reaction)."""

        async def announce(jobs: list[Job], first: bool) -> int:
            channel = await self.channel_for(jobs[0])
            reference = (
                discord.MessageReference(
                    message_id=reply_to, channel_id=channel_id, fail_if_not_exists=False
                )
                if reply_to
                else None
            )
            content = progress_content(jobs[0], Progress("queued"), batch=len(jobs))
            message = await channel.send(
                content,
                reference=reference or discord.utils.MISSING,
                allowed_mentions=NO_MENTIONS,
            )
            self._announced(jobs, content)
            return message.id

        return announce

    def _announced(self, jobs: list[Job], content: str) -> None:
        edits = _Edits(jobs[0], content, shown=content, shown_stage="queued", last=time.monotonic())
        self._edits[self._edit_key(jobs[0])] = edits
        if len(self._edits) > MAX_TRACKED_MESSAGES:  # bounded, whatever happens to the jobs
            for key in [k for k, e in self._edits.items() if e.task is None or e.task.done()][
                : len(self._edits) - MAX_TRACKED_MESSAGES
            ]:
                del self._edits[key]

    async def cancelled(self, job: Job) -> None:
        """A queued job was cancelled by its member: say so on its message."""
        await self._settle(job)
        await self.edit_job_message(
            job, content=f"🚫 Cancelled by its requester (job #{job.id}); nothing was charged."
        )

    @staticmethod
    def _edit_key(job: Job) -> int:
        return -job.batch_id if job.batch_id else job.id

    # -- JobObserver -----------------------------------------------------------------

    async def job_progress(self, job: Job, progress: Progress) -> None:
        """Have the job's message show ``progress``, soon: never waits for Discord."""
        key = self._edit_key(job)
        content = progress_content(job, progress)
        edits = self._edits.get(key)
        if edits is None:
            edits = self._edits[key] = _Edits(job, content)
        if edits.gone:
            return
        edits.job, edits.wanted, edits.stage = job, content, progress.stage
        if edits.wanted != edits.shown and (edits.task is None or edits.task.done()):
            edits.task = asyncio.create_task(self._edit_soon(edits), name=f"progress-{key}")

    async def _edit_soon(self, edits: _Edits) -> None:
        """Edit a message to the latest wanted text: at once when the stage changed (queued,
        paused, generating…), else at most once per interval."""
        while edits.wanted != edits.shown and not edits.gone:
            wait = edits.last + PROGRESS_EDIT_INTERVAL - time.monotonic()
            if wait > 0 and edits.stage == edits.shown_stage:
                await asyncio.sleep(min(wait, 0.5))  # a stage change may come meanwhile
                continue
            content, stage = edits.wanted, edits.stage
            edits.last = time.monotonic()
            try:
                if not await self.edit_job_message(edits.job, content=content):
                    edits.gone = True  # deleted: nothing to edit any more
            except discord.Forbidden:
                log.info("job %s: its message can no longer be seen; not editing it", edits.job.id)
                edits.gone = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a progress edit is never worth a crash
                log.warning("job %s: progress edit failed: %r", edits.job.id, exc)
                return
            edits.shown, edits.shown_stage = content, stage

    async def close(self) -> None:
        """Drop the progress edits still pending (the jobs' states are stored)."""
        tasks = [e.task for e in self._edits.values() if e.task is not None and not e.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._edits.clear()

    async def _settle(self, job: Job) -> None:
        """No progress edit of this job's message runs, or will run, any more."""
        edits = self._edits.pop(self._edit_key(job), None)
        if edits is not None and edits.task is not None and not edits.task.done():
            edits.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await edits.task

    async def job_result(self, job: Job, media: DownloadedMedia) -> Published | None:
        """Upload the image with its embed and buttons (a batch's grid once its last image
        is here).

        The job's reference images ride along as small attachments, so that a regenerate
        pressed days later can re-fetch this message and send fresh, signed URLs.
        """
        if job.batch_id:
            return await self._batch_settled(job, media.data)
        await self._settle(job)
        ref_files = await self._reference_files(job)
        parent_url = await self._parent_url(job)

        async def build(limit: int) -> tuple[list[discord.Embed], list[tuple[str, bytes]]]:
            data, filename = await self._fit(media.data, limit, f"krea-{job.id}-{job.seed}")
            embeds = [result_embed(job, filename=filename, parent_url=parent_url)]
            embeds += [reference_embed(ref, name) for name, _, ref in ref_files]
            return embeds, [(filename, data), *((name, blob) for name, blob, _ in ref_files)]

        content = f"<@{job.user_id}>'s image is ready"
        message_id = await self._publish(job, content, result_view(job), build)
        await self._keep_references(job, ref_files, message_id)
        return Published(message_id, (job.id,))

    async def _fit(self, data: bytes, limit: int, stem: str) -> tuple[bytes, str]:
        """An image under ``limit`` bytes (re-encoded when needed); a broken image is refused
        for good."""
        try:
            return await self.images.fit_under(data, limit, stem)
        except ImageRejected as exc:
            raise DeliveryRefused(f"the image cannot be posted: {exc.message}") from exc

    async def _keep_references(
        self, job: Job, ref_files: list[tuple[str, bytes, Reference]], message_id: int
    ) -> None:
        """Remember that the job's reference copies now live on ``message_id``."""
        if ref_files:
            kept = [
                ref.model_copy(update={"message_id": message_id, "filename": name})
                for name, _, ref in ref_files
            ]
            await self.repo.update(job, refs=kept)

    async def job_failed(self, job: Job, failure: Failure) -> Published | None:
        """Say why in the job's message (or in a new one if it is gone)."""
        if job.batch_id:
            published = await self._batch_settled(job, None)
            if published is not None:
                return published  # the batch's message shows the images that exist
        await self._settle(job)
        content = failure_content(job, failure)
        view = retry_view(job) if failure.retryable else None
        fields: dict[str, Any] = {"content": content, "embed": None}
        if view is not None:
            fields["view"] = view
        if not await self.edit_job_message(job, **fields):
            channel = await self.channel_for(job)
            await channel.send(
                content, view=view or discord.utils.MISSING, allowed_mentions=NO_MENTIONS
            )
        return None

    async def gateway_paused(self, reason: str) -> None:
        """Tell each server's log channel (once per pause) that submissions stopped."""
        text = PAUSE_NOTICES.get(reason, PAUSE_NOTICES["outage"])
        for guild_id, channel_id in await self.config.log_channels():
            # By REST: the server may be on a shard another process runs (not in the cache).
            channel = self.client.get_channel(channel_id) or self.client.get_partial_messageable(
                channel_id, guild_id=guild_id
            )
            if not isinstance(
                channel, discord.TextChannel | discord.Thread | discord.PartialMessageable
            ):
                continue
            try:
                await channel.send(text, allowed_mentions=NO_MENTIONS)
            except discord.HTTPException as exc:
                log.warning("guild %s: could not post the pause notice: %s", guild_id, exc)

    # -- results ---------------------------------------------------------------------

    async def _publish(self, job: Job, content: str, view: discord.ui.View, build: Build) -> int:
        """Put a result in the job's message while its token lives; else reply in the channel
        (once: a reply posted before a restart is found again) and point the original at it.
        The files are fitted to the path actually used."""
        if job.message_id is not None and job.token_valid(self.clock()):
            embeds, payload = await build(self.upload_limit(job, with_token=True))
            try:
                await self._webhook(job).edit_message(
                    job.message_id,
                    content=content,
                    embeds=embeds,
                    attachments=_files(payload),
                    view=view,
                    allowed_mentions=NO_MENTIONS,
                )
                return job.message_id
            except discord.NotFound:
                log.info("job %s: message deleted; posting the result anew", job.id)
                return await self._post(job, content, view, build, reply=False)
            except discord.HTTPException as exc:
                if exc.code != 50027:
                    _refused(exc)
                    raise
                job.token_expires_at = 0  # died early: use the bot's token from now on
        message_id = await self._find_earlier_reply(job)
        if message_id is not None:
            return message_id
        message_id = await self._post(job, content, view, build, reply=job.message_id is not None)
        if job.message_id is not None:
            link = jump_url(job.guild_id, job.channel_id, message_id)
            with contextlib.suppress(discord.HTTPException):
                await self.edit_job_message(
                    job, content=f"✅ Finished: the image is in the reply below ({link})", view=None
                )
        return message_id

    async def _post(
        self, job: Job, content: str, view: discord.ui.View, build: Build, *, reply: bool
    ) -> int:
        """Send the result as a channel message with the bot's token (the server's limit)."""
        channel = await self.channel_for(job)
        embeds, payload = await build(self.upload_limit(job, with_token=False))
        reference = None
        if reply and job.message_id is not None:
            reference = discord.MessageReference(
                message_id=job.message_id, channel_id=job.channel_id, fail_if_not_exists=False
            )
        try:
            message = await channel.send(
                content,
                embeds=embeds,
                files=_files(payload),
                view=view,
                reference=reference or discord.utils.MISSING,
                allowed_mentions=NO_MENTIONS,
                # The job's own marker: sent again after a crash (within Discord's few
                # minutes), the same result comes back instead of a second post.
                nonce=f"krea-{job.id}",
            )
        except discord.HTTPException as exc:
            _refused(exc)
            raise
        return message.id

    async def _find_earlier_reply(self, job: Job) -> int | None:
        """The job's own message when it already holds the result, found by the result's
        own marker (its file names, ``krea-<job>-…``): a restart during delivery. A reply
        posted with the bot's token is found again by its nonce (see :meth:`_post`)."""
        if job.message_id is None:
            return None
        try:
            channel = await self.channel_for(job)
            own = await channel.fetch_message(job.message_id)
        except discord.HTTPException:
            return None
        if any(a.filename.startswith(f"krea-{job.id}-") for a in own.attachments):
            return own.id  # the result already replaced the job's own message
        return None

    async def _parent_url(self, job: Job) -> str | None:
        if job.parent_id is None:
            return None
        parent = await self.repo.get(job.parent_id)
        if parent is None:
            return None
        message_id = parent.result_message_id or parent.message_id
        if message_id is None:
            return None
        return jump_url(parent.guild_id, parent.channel_id, message_id)

    # -- batches ---------------------------------------------------------------------

    async def _batch_settled(self, job: Job, data: bytes | None) -> Published | None:
        """A job of a batch is done (``data`` is its image, None if it failed): post the batch
        once every job of it is done, with the images held until then.

        Returns the batch's publication (once posted), else None. A lock per batch makes
        sure only one job posts it.
        """
        assert job.batch_id is not None
        batch_id = job.batch_id
        lock = self._batch_locks.setdefault(batch_id, asyncio.Lock())
        async with lock:
            held = self._held.setdefault(batch_id, {})
            held[job.id] = data
            jobs = await self.repo.batch(batch_id)
            posted = next((j.result_message_id for j in jobs if j.result_message_id), None)
            if posted is not None:
                self._forget_batch(batch_id)
                return Published(posted, (job.id,)) if data is not None else None
            if any(j.id not in held and j.state not in WITHOUT_IMAGE for j in jobs):
                return None  # some image is still on its way
            images = [held.get(j.id) for j in jobs]
            if not any(images):
                self._forget_batch(batch_id)
                return None  # every job failed: each failure is shown as usual
            await self._settle(jobs[0])
            message_id = await self._post_batch(jobs, images)
            self._forget_batch(batch_id)
            shown = tuple(j.id for j, image in zip(jobs, images, strict=True) if image)
            return Published(message_id, shown)

    def _forget_batch(self, batch_id: int) -> None:
        self._held.pop(batch_id, None)
        self._batch_locks.pop(batch_id, None)

    async def _post_batch(self, jobs: list[Job], images: list[bytes | None]) -> int:
        """One message showing each image of the batch once (Discord lays attachments out
        as a gallery), with Open and Vary per image and the references kept as copies."""
        first = jobs[0]
        ref_files = await self._reference_files(first)

        async def build(limit: int) -> tuple[list[discord.Embed], list[tuple[str, bytes]]]:
            payload: list[tuple[str, bytes]] = []
            for member, data in zip(jobs, images, strict=True):
                if data is not None:
                    fitted, name = await self._fit(data, limit, f"krea-{member.id}-{member.seed}")
                    payload.append((name, fitted))
            embeds = [batch_embed(jobs, images)]
            embeds += [reference_embed(ref, name) for name, _, ref in ref_files]
            return embeds, payload + [(name, blob) for name, blob, _ in ref_files]

        view = batch_view(jobs, [data is not None for data in images])
        content = f"<@{first.user_id}>'s {len(jobs)} images are ready"
        message_id = await self._publish(first, content, view, build)
        for member in jobs:
            await self._keep_references(member, ref_files, message_id)
        return message_id

    async def publish_open(self, job: Job, interaction: discord.Interaction[Any]) -> bool:
        """Post one image of a batch as a result of its own, in reply to ``interaction``
        (deferred). False when the image is gone."""
        found = await self.find_image(job)
        if found is None:
            return False
        async with self.session.get(found[1].proxy_url) as response:
            response.raise_for_status()
            data = await response.read()
        limit = self.upload_limit(job, with_token=True)
        fitted, filename = await self._fit(data, limit, f"krea-{job.id}-{job.seed}")
        embed = result_embed(job, filename=filename, parent_url=await self._parent_url(job))
        message = await interaction.edit_original_response(
            content=f"Image #{(job.batch_index or 0) + 1} of the batch",
            embed=embed,
            attachments=_files([(filename, fitted)]),
            view=result_view(job),
            allowed_mentions=NO_MENTIONS,
        )
        await self.repo.update(job, result_message_id=message.id)
        return True

    async def retired(self, job: Job) -> None:
        """Show the failed job's Retry button as used (disabled)."""
        try:
            await self.edit_job_message(job, view=retired_view(job))
        except discord.HTTPException as exc:
            log.info("job %s: could not disable its Retry button: %s", job.id, exc)

    async def delete_result(self, job: Job, message_id: int | None) -> bool:
        """Delete a result message of ``job``; False when the bot may not delete it."""
        if not message_id:
            return True
        channel = await self.channel_for(job)
        try:
            await channel.get_partial_message(message_id).delete()
        except discord.NotFound:
            pass
        except discord.Forbidden:
            return False
        return True

    # -- references (ReferenceSource) ------------------------------------------------

    async def _reference_files(self, job: Job) -> list[tuple[str, bytes, Reference]]:
        """Small copies of the job's reference images, to keep them re-fetchable."""
        files = []
        for index, reference in enumerate(job.refs):
            try:
                blob = await self.fetch_reference(job, reference)
                small = await self.images.thumbnail(blob, REFERENCE_EDGE)
            except Exception as exc:  # a lost reference must not lose the result
                log.warning("job %s: could not keep reference %d: %r", job.id, index, exc)
                continue
            files.append((f"ref-{index + 1}.jpg", small, reference))
        return files

    async def probe_attachment(self, url: str, what: str) -> None:
        """Check an attachment by its bytes (its first 64 KiB): PNG, JPEG, WebP or GIF under
        the pixel limit; a PDF named ``.png`` is refused here, before anything is paid."""
        headers = {"Range": f"bytes=0-{PROBE_BYTES - 1}"}
        try:
            async with self.session.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=20)
            ) as response:
                response.raise_for_status()
                head = await response.content.read(PROBE_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UserError(f"{what} could not be read from Discord; try again") from exc
        try:
            await self.images.probe(head, partial=True)
        except ImageIncomplete:
            return  # a header past the first 64 KiB: checked again when it is used
        except ImageRejected as exc:
            raise UserError(f"{what} cannot be used: {exc.message}") from None

    async def fetch_reference(self, job: Job, reference: Reference) -> bytes:
        """The bytes of a reference: from its message when it lives on one, else its URL."""
        url = reference.proxy_url or reference.url
        if reference.message_id and reference.filename:
            url = await self.fresh_attachment_url(job, reference.message_id, reference.filename)
        if not url:
            raise LookupError("the reference's message is gone")
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
            response.raise_for_status()
            return await response.content.read(MAX_REFERENCE_FETCH)

    async def fresh_attachment_url(
        self, job: Job, message_id: int, filename: str, *, proxy: bool = True
    ) -> str | None:
        """Re-fetch a message to get a freshly signed URL for one of its attachments."""
        channel = await self.channel_for(job)
        try:
            message = await channel.fetch_message(message_id)
        except discord.NotFound:
            return None
        for attachment in message.attachments:
            if attachment.filename == filename:
                return attachment.proxy_url if proxy else attachment.url
        return None

    async def fresh_url(self, job: Job, reference: Reference) -> str | None:
        """A valid URL of a reference's kept copy (None when that message is gone)."""
        if not reference.message_id or not reference.filename:
            return None
        return await self.fresh_attachment_url(
            job, reference.message_id, reference.filename, proxy=False
        )

    async def result_reference(self, job: Job, strength: float) -> Reference | None:
        """The job's own image as a style reference, with a freshly signed URL.

        It is looked for in the result message, then in the job's own message (a batch's
        grid keeps every image), so deleting an opened copy does not lose it.
        """
        found = await self.find_image(job)
        if found is None:
            return None
        message_id, attachment = found
        return Reference(
            role="result",
            message_id=message_id,
            filename=attachment.filename,
            url=attachment.url,
            strength=strength,
        )

    async def find_image(self, job: Job) -> tuple[int, discord.Attachment] | None:
        """The job's image, freshly signed: in its result message, else in its own message
        (a batch's grid keeps every image). None when both are gone."""
        channel = await self.channel_for(job)
        for message_id in dict.fromkeys(m for m in (job.result_message_id, job.message_id) if m):
            try:
                message = await channel.fetch_message(message_id)
            except discord.NotFound:
                continue
            for attachment in message.attachments:
                if attachment.filename.startswith(f"krea-{job.id}-"):
                    return message_id, attachment
        return None


def _refused(exc: discord.HTTPException) -> None:
    """Raise :class:`DeliveryRefused` when Discord refused the result for good."""
    if exc.status in REFUSED_STATUSES:
        raise DeliveryRefused(f"{exc.status} {exc.code}: {exc.text[:200]}") from exc


def _files(payload: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in payload]
