"""The Discord side of the runner: shows progress, posts results and failures.

While the interaction token lives (15 minutes) the job's message is edited through it;
afterwards the bot's own token is used: results are posted as a reply in the channel and
the original is edited when it still can be.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot.components import batch_view, result_view, retry_view
from bot.imaging import fit_under, make_grid, thumbnail
from bot.presenter import (
    batch_embed,
    failure_content,
    progress_content,
    reference_embed,
    result_embed,
    tile_embed,
)
from bot.storage.jobs import JobState

#: States in which a job of a batch is done (its image exists, or never will).
SETTLED = (JobState.DELIVERING, JobState.COMPLETED, JobState.FAILED, JobState.INTERRUPTED)

if TYPE_CHECKING:
    from bot.pixazo import DownloadedMedia
    from bot.runner import Failure, Progress
    from bot.storage.jobs import Job, JobRepository
    from bot.storage.settings import SettingsRepository

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
#: Seconds between two progress edits of the same job (Discord tolerates ~5 edits / 5 s).
PROGRESS_EDIT_INTERVAL = 3.0
#: Interaction tokens live 15 minutes; stop using them a little earlier.
TOKEN_LIFETIME = 15 * 60 - 30
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


def jump_url(guild_id: int | None, channel_id: int, message_id: int) -> str:
    """A link to a message."""
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


class DiscordDelivery:
    """Implements the runner's :class:`~bot.runner.JobObserver` against Discord."""

    def __init__(
        self,
        client: discord.Client,
        repo: JobRepository,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
        download: Callable[[str], Awaitable[bytes]] | None = None,
        settings_repo: SettingsRepository | None = None,
    ) -> None:
        self.client = client
        self.repo = repo
        self.session = session
        self.download = download or self._plain_download
        self._batch_locks: dict[int, asyncio.Lock] = {}
        self.settings_repo = settings_repo
        self.clock = clock
        self._last_edit: dict[int, tuple[float, str]] = {}

    # -- plumbing ------------------------------------------------------------------

    def _webhook(self, job: Job) -> discord.Webhook:
        assert job.application_id is not None and job.interaction_token is not None
        return discord.Webhook.partial(
            job.application_id, job.interaction_token, client=self.client
        )

    async def channel_for(
        self, job: Job
    ) -> discord.TextChannel | discord.Thread | discord.VoiceChannel:
        """The job's channel, from the cache or the API."""
        channel = self.client.get_channel(job.channel_id)
        if channel is None:
            channel = await self.client.fetch_channel(job.channel_id)
        assert isinstance(channel, discord.TextChannel | discord.Thread | discord.VoiceChannel)
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

    async def announce(
        self, jobs: list[Job], interaction: discord.Interaction[Any], *, followup: bool = False
    ) -> None:
        """Turn the deferred reply (or a new follow-up) into the jobs' message, queued."""
        from bot.runner import Progress

        content = progress_content(jobs[0], Progress("queued"), batch=len(jobs))
        message: discord.Message
        if followup:
            message = await interaction.followup.send(
                content, allowed_mentions=NO_MENTIONS, wait=True
            )
        else:
            message = await interaction.edit_original_response(
                content=content, allowed_mentions=NO_MENTIONS
            )
        await self._remember_message(jobs, message.id)

    async def announce_in_channel(self, jobs: list[Job], *, reply_to: int | None) -> None:
        """Post the jobs' message in their channel (no interaction to answer)."""
        from bot.runner import Progress

        channel = await self.channel_for(jobs[0])
        reference = (
            discord.MessageReference(
                message_id=reply_to, channel_id=jobs[0].channel_id, fail_if_not_exists=False
            )
            if reply_to
            else None
        )
        message = await channel.send(
            progress_content(jobs[0], Progress("queued"), batch=len(jobs)),
            reference=reference or discord.utils.MISSING,
            allowed_mentions=NO_MENTIONS,
        )
        await self._remember_message(jobs, message.id)

    async def _remember_message(self, jobs: list[Job], message_id: int) -> None:
        for job in jobs:
            self._last_edit[self._edit_key(job)] = (time.monotonic(), "queued")
            await self.repo.update(job, message_id=message_id)

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

    async def job_result(self, job: Job, media: DownloadedMedia) -> int | None:
        """Upload the image with its embed and buttons; return the message holding it.

        The job's reference images ride along as small attachments, so that a regenerate
        pressed days later can re-fetch this message and send fresh, signed URLs.
        """
        if job.batch_id:
            return await self._batch_settled(job)
        self._last_edit.pop(job.id, None)
        ref_files = await self._reference_files(job)
        budget = job.filesize_limit - sum(len(data) for _, data, _ in ref_files)
        data, filename = await asyncio.to_thread(
            fit_under, media.data, max(budget, job.filesize_limit // 2), f"krea-{job.id}-{job.seed}"
        )
        parent_url = await self._parent_url(job)
        embeds = [result_embed(job, filename=filename, parent_url=parent_url)]
        embeds += [reference_embed(entry, name) for name, _, entry in ref_files]
        payload = [(filename, data), *((name, blob) for name, blob, _ in ref_files)]
        view = result_view(job)
        content = f"<@{job.user_id}>'s image is ready"
        message_id = await self._publish(job, content, embeds, view, payload)
        if ref_files:
            stored = [
                dict(entry, message_id=message_id, filename=name) for name, _, entry in ref_files
            ]
            await self.repo.update(job, refs=stored)
        return message_id

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

    async def _reference_files(self, job: Job) -> list[tuple[str, bytes, dict[str, Any]]]:
        """Small copies of the job's reference images, to keep them re-fetchable."""
        files = []
        for index, entry in enumerate(job.refs):
            try:
                blob = await self.fetch_reference(job, entry)
                small = await asyncio.to_thread(thumbnail, blob, REFERENCE_EDGE)
            except Exception as exc:  # a lost reference must not lose the result
                log.warning("job %s: could not keep reference %d: %r", job.id, index, exc)
                continue
            files.append((f"ref-{index + 1}.jpg", small, entry))
        return files

    async def fetch_reference(self, job: Job, entry: dict[str, Any]) -> bytes:
        """The bytes of a reference: from its message when it lives on one, else its URL."""
        url = entry.get("proxy_url") or entry.get("url")
        if entry.get("message_id"):
            url = await self.fresh_attachment_url(job, entry["message_id"], entry["filename"])
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

    async def job_failed(self, job: Job, failure: Failure) -> None:
        """Say why in the job's message (or in a new one if it is gone)."""
        if job.batch_id and await self._batch_settled(job) is not None:
            return  # the batch's grid shows the missing image
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

    async def gateway_paused(self, reason: str) -> None:
        """Tell each server's log channel (once per pause) that submissions stopped."""
        if self.settings_repo is None:
            return
        text = PAUSE_NOTICES.get(reason, PAUSE_NOTICES["outage"])
        for guild_id, channel_id in await self.settings_repo.server_values("log_channel"):
            channel = self.client.get_channel(int(channel_id))
            if not isinstance(channel, discord.TextChannel | discord.Thread):
                continue
            try:
                await channel.send(text, allowed_mentions=NO_MENTIONS)
            except discord.HTTPException as exc:
                log.warning("guild %s: could not post the pause notice: %s", guild_id, exc)

    # -- batches ---------------------------------------------------------------------

    async def _batch_settled(self, job: Job) -> int | None:
        """A job of a batch is done: post the grid once every job of the batch is done.

        Returns the grid message's id (once posted), else None. A lock per batch makes
        sure only one job posts it; the grid's id is stored on every job of the batch.
        """
        assert job.batch_id is not None
        lock = self._batch_locks.setdefault(job.batch_id, asyncio.Lock())
        async with lock:
            jobs = await self.repo.batch(job.batch_id)
            done = [j for j in jobs if j.id == job.id or j.state in SETTLED]
            posted = next((j.result_message_id for j in jobs if j.result_message_id), None)
            if posted is not None:
                return posted
            if len(done) < len(jobs):
                return None
            images: list[bytes | None] = []
            for member in jobs:
                data = None
                if member.media_url and member.state is not JobState.FAILED:
                    try:
                        data = await self.download(member.media_url)
                    except Exception as exc:
                        log.warning(
                            "batch %s: image of job %s lost: %r", job.batch_id, member.id, exc
                        )
                images.append(data)
            if not any(images):
                return None  # every job failed: each failure is shown as usual
            message_id = await self._post_grid(jobs, images)
            for member in jobs:
                await self.repo.update(member, result_message_id=message_id)
            self._batch_locks.pop(job.batch_id, None)
            return message_id

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

    async def publish_open(
        self, job: Job, interaction: discord.Interaction[Any], data: bytes
    ) -> int:
        """Post one image of a batch as a result of its own, in reply to ``interaction``."""
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
        return message.id

    # -- helpers ---------------------------------------------------------------------

    async def _plain_download(self, url: str) -> bytes:
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as response:
            response.raise_for_status()
            return await response.read()

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


def _files(payload: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in payload]
