"""The Discord side of the runner: announces jobs, shows progress, posts results and failures.

It implements :class:`~bot.events.JobObserver` (what the runner reports) and
:class:`~bot.job_service.ReferenceSource` (reference images signed afresh). It receives the
bytes it publishes: the runner downloads each image once, and a batch's images wait here,
in memory, until the last one arrives and the grid is posted.

While the interaction token lives (15 minutes) the job's message is edited through it;
afterwards the bot's own token is used: results are posted as a reply in the channel and
the original is edited when it still can be.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import discord

from bot.components import batch_view, result_view, retry_view
from bot.events import Failure, Progress, Published
from bot.imaging import fit_under, make_grid, thumbnail
from bot.job_service import Announce
from bot.pixazo import DownloadedMedia
from bot.presenter import (
    batch_embed,
    failure_content,
    progress_content,
    reference_embed,
    result_embed,
    tile_embed,
)
from bot.storage.config import ConfigStore
from bot.storage.jobs import Job, JobRepository, JobState, Reference

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
#: Seconds between two progress edits of the same job (Discord tolerates ~5 edits / 5 s).
PROGRESS_EDIT_INTERVAL = 3.0
PAUSE_NOTICES = {
    "balance": (
        "⏸️ **kreabot paused every image request: the Pixazo balance is empty.** "
        "Top up the wallet at pixazo.ai; waiting jobs resume on their own."
    ),
    "outage": (
        "⏸️ **kreabot paused image requests: the Pixazo gateway keeps failing.** "
        "Waiting jobs resume on their own when it recovers."
    ),
}
#: Long edge of the reference copies kept on result messages.
REFERENCE_EDGE = 768
MAX_REFERENCE_FETCH = 25 * 1024 * 1024
#: States in which a job of a batch will bring no image to its grid.
WITHOUT_IMAGE = (JobState.FAILED, JobState.INTERRUPTED, JobState.CANCELLED)

Channel = discord.TextChannel | discord.Thread | discord.VoiceChannel | discord.StageChannel


def jump_url(guild_id: int | None, channel_id: int, message_id: int) -> str:
    """A link to a message."""
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


class DiscordDelivery:
    """Shows jobs in Discord: announcements, progress, results, failures, pauses."""

    def __init__(
        self,
        client: discord.Client,
        repo: JobRepository,
        config: ConfigStore,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.repo = repo
        self.config = config
        self.session = session
        self.clock = clock
        self._last_edit: dict[int, tuple[float, str]] = {}
        self._batch_locks: dict[int, asyncio.Lock] = {}
        #: Images of a batch's jobs, until the grid is posted (None: that job failed).
        self._held: dict[int, dict[int, bytes | None]] = {}

    # -- plumbing ------------------------------------------------------------------

    def _webhook(self, job: Job) -> discord.Webhook:
        assert job.application_id is not None and job.interaction_token is not None
        return discord.Webhook.partial(
            job.application_id, job.interaction_token, client=self.client
        )

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
            self._announced(jobs)
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
            message = await channel.send(
                progress_content(jobs[0], Progress("queued"), batch=len(jobs)),
                reference=reference or discord.utils.MISSING,
                allowed_mentions=NO_MENTIONS,
            )
            self._announced(jobs)
            return message.id

        return announce

    def _announced(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._last_edit[self._edit_key(job)] = (time.monotonic(), "queued")

    @staticmethod
    def _edit_key(job: Job) -> int:
        return -job.batch_id if job.batch_id else job.id

    # -- JobObserver -----------------------------------------------------------------

    async def job_progress(self, job: Job, progress: Progress) -> None:
        """Edit the job's message, at most every few seconds unless the stage changed."""
        now = time.monotonic()
        key = self._edit_key(job)
        last = self._last_edit.get(key)
        if last and last[1] == progress.stage and now - last[0] < PROGRESS_EDIT_INTERVAL:
            return
        if job.batch_id and last and now - last[0] < PROGRESS_EDIT_INTERVAL:
            return  # a batch shares one message: one edit per interval for all its jobs
        self._last_edit[key] = (now, progress.stage)
        await self.edit_job_message(job, content=progress_content(job, progress))

    async def job_result(self, job: Job, media: DownloadedMedia) -> Published | None:
        """Upload the image with its embed and buttons (a batch's grid once its last image
        is here).

        The job's reference images ride along as small attachments, so that a regenerate
        pressed days later can re-fetch this message and send fresh, signed URLs.
        """
        if job.batch_id:
            return await self._batch_settled(job, media.data)
        self._last_edit.pop(job.id, None)
        ref_files = await self._reference_files(job)
        budget = job.filesize_limit - sum(len(data) for _, data, _ in ref_files)
        data, filename = await asyncio.to_thread(
            fit_under, media.data, max(budget, job.filesize_limit // 2), f"krea-{job.id}-{job.seed}"
        )
        parent_url = await self._parent_url(job)
        embeds = [result_embed(job, filename=filename, parent_url=parent_url)]
        embeds += [reference_embed(ref, name) for name, _, ref in ref_files]
        payload = [(filename, data), *((name, blob) for name, blob, _ in ref_files)]
        content = f"<@{job.user_id}>'s image is ready"
        message_id = await self._publish(job, content, embeds, result_view(job), payload)
        if ref_files:
            kept = [
                ref.model_copy(update={"message_id": message_id, "filename": name})
                for name, _, ref in ref_files
            ]
            await self.repo.update(job, refs=kept)
        return Published(message_id, (job.id,))

    async def job_failed(self, job: Job, failure: Failure) -> Published | None:
        """Say why in the job's message (or in a new one if it is gone)."""
        if job.batch_id:
            published = await self._batch_settled(job, None)
            if published is not None:
                return published  # the batch's grid shows the missing image
        self._last_edit.pop(self._edit_key(job), None)
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
            channel = self.client.get_channel(channel_id)
            if not isinstance(channel, discord.TextChannel | discord.Thread):
                continue
            try:
                await channel.send(text, allowed_mentions=NO_MENTIONS)
            except discord.HTTPException as exc:
                log.warning("guild %s: could not post the pause notice: %s", guild_id, exc)

    # -- results ---------------------------------------------------------------------

    async def _publish(
        self,
        job: Job,
        content: str,
        embeds: list[discord.Embed],
        view: discord.ui.View,
        payload: list[tuple[str, bytes]],
    ) -> int:
        """Put a result in the job's message while its token lives; else reply in the channel
        (once: a reply posted before a restart is found again) and point the original at it."""
        if job.message_id is not None and job.token_valid(self.clock()):
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
                return await self._post(job, content, embeds, view, payload, reply=False)
            except discord.HTTPException as exc:
                if exc.code != 50027:
                    raise
                job.token_expires_at = 0  # died early: use the bot's token from now on
        message_id = await self._find_earlier_reply(job)
        if message_id is not None:
            return message_id
        message_id = await self._post(
            job, content, embeds, view, payload, reply=job.message_id is not None
        )
        if job.message_id is not None:
            link = jump_url(job.guild_id, job.channel_id, message_id)
            await self.edit_job_message(
                job, content=f"✅ Finished: the image is in the reply below ({link})", view=None
            )
        return message_id

    async def _post(
        self,
        job: Job,
        content: str,
        embeds: list[discord.Embed],
        view: discord.ui.View,
        payload: list[tuple[str, bytes]],
        *,
        reply: bool,
    ) -> int:
        channel = await self.channel_for(job)
        reference = None
        if reply and job.message_id is not None:
            reference = discord.MessageReference(
                message_id=job.message_id, channel_id=job.channel_id, fail_if_not_exists=False
            )
        message = await channel.send(
            content,
            embeds=embeds,
            files=_files(payload),
            view=view,
            reference=reference or discord.utils.MISSING,
            allowed_mentions=NO_MENTIONS,
        )
        return message.id

    async def _find_earlier_reply(self, job: Job) -> int | None:
        """A result reply already posted for this job (a restart during delivery)."""
        if job.message_id is None or self.client.user is None:
            return None
        try:
            channel = await self.channel_for(job)
            try:
                own = await channel.fetch_message(job.message_id)
            except discord.NotFound:
                own = None
            if own is not None and any(
                a.filename.startswith(f"krea-{job.id}-") for a in own.attachments
            ):
                return own.id  # the result already replaced the job's own message
            history = channel.history(after=discord.Object(job.message_id), limit=50)
            async for message in history:
                ref = message.reference
                if (
                    message.author.id == self.client.user.id
                    and ref is not None
                    and ref.message_id == job.message_id
                    and message.attachments
                ):
                    return message.id
        except discord.HTTPException:
            return None
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
        """A job of a batch is done (``data`` is its image, None if it failed): post the grid
        once every job of the batch is done, with the images held until then.

        Returns the grid's publication (once posted), else None. A lock per batch makes
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
            message_id = await self._post_grid(jobs, images)
            self._forget_batch(batch_id)
            shown = tuple(j.id for j, image in zip(jobs, images, strict=True) if image)
            return Published(message_id, shown)

    def _forget_batch(self, batch_id: int) -> None:
        self._held.pop(batch_id, None)
        self._batch_locks.pop(batch_id, None)
        self._last_edit.pop(-batch_id, None)

    async def _post_grid(self, jobs: list[Job], images: list[bytes | None]) -> int:
        first = jobs[0]
        share = first.filesize_limit // (len(jobs) + 2)
        grid_data = await asyncio.to_thread(make_grid, images, share)
        payload: list[tuple[str, bytes]] = [("grid.jpg", grid_data)]
        tiles = []
        for member, data in zip(jobs, images, strict=True):
            if data is None:
                continue
            fitted, name = await asyncio.to_thread(
                fit_under, data, share, f"krea-{member.id}-{member.seed}"
            )
            payload.append((name, fitted))
            tiles.append((member, name))
        embeds = [batch_embed(jobs, images, filename="grid.jpg")]
        embeds += [tile_embed(member, name) for member, name in tiles][: 10 - len(embeds)]
        view = batch_view(jobs, [data is not None for data in images])
        content = f"<@{first.user_id}>'s {len(jobs)} images are ready"
        return await self._publish(first, content, embeds, view, payload)

    async def publish_open(self, job: Job, interaction: discord.Interaction[Any]) -> bool:
        """Post one image of a batch as a result of its own, in reply to ``interaction``
        (deferred). False when the image is gone."""
        found = await self.find_image(job)
        if found is None:
            return False
        async with self.session.get(found[1].proxy_url) as response:
            response.raise_for_status()
            data = await response.read()
        fitted, filename = await asyncio.to_thread(
            fit_under, data, job.filesize_limit, f"krea-{job.id}-{job.seed}"
        )
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
                small = await asyncio.to_thread(thumbnail, blob, REFERENCE_EDGE)
            except Exception as exc:  # a lost reference must not lose the result
                log.warning("job %s: could not keep reference %d: %r", job.id, index, exc)
                continue
            files.append((f"ref-{index + 1}.jpg", small, reference))
        return files

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


def _files(payload: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in payload]
