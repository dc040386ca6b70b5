"""Delivery on its own: the Discord side of the runner, driven like the runner drives it.

A bare discord.py client (no cogs, no runner) connects to the fake Discord; a slash command
of its own only defers, handing the real interaction to the test. The test then plays the
runner: it stores jobs, announces them, reports progress and hands over image bytes, and
reads back what a member would see. Delivery never downloads a generated image itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from bot.delivery import DiscordDelivery
from bot.events import Failure, Progress, Published
from bot.imaging import ImageWorker
from bot.pixazo import DownloadedMedia, build_request
from bot.storage.config import SERVER, ConfigStore
from bot.storage.db import open_database
from bot.storage.jobs import Job, JobRepository, JobState, NewJob
from tests.fake_discord import FakeDiscord, FakeMessage
from tests.fake_discord.fixtures import run_bot
from tests.fake_discord.models import walk_components
from tests.support.images import png_bytes


class Client(discord.Client):
    """A client whose one command defers and passes the interaction to the test."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default())
        self.tree = app_commands.CommandTree(self)
        self.interactions: asyncio.Queue[discord.Interaction[Any]] = asyncio.Queue()

        @self.tree.command(name="go", description="Defer and hand over")
        async def go(interaction: discord.Interaction[Any]) -> None:
            await interaction.response.defer(thinking=True)
            await self.interactions.put(interaction)

    async def setup_hook(self) -> None:
        await self.tree.sync()


@dataclass
class Scene:
    """The fake Discord, a connected client, the job store and the delivery under test."""

    fake: FakeDiscord
    client: Client
    repo: JobRepository
    config: ConfigStore
    delivery: DiscordDelivery

    async def interaction(self) -> discord.Interaction[Any]:
        """A member runs /go; the deferred interaction."""
        handle = await self.fake.slash("go", {})
        await handle.wait_for_response()
        return await asyncio.wait_for(self.client.interactions.get(), 5)

    async def jobs(self, interaction: discord.Interaction[Any] | None, count: int = 1) -> list[Job]:
        """Store ``count`` jobs (a batch when more than one), as the job service does."""
        guild = self.fake.guild
        batch = [
            NewJob(
                guild_id=guild.id,
                channel_id=guild.channel.id,
                user_id=guild.member.id,
                params=build_request(prompt="a red fox in snow", seed=10 + index),
                application_id=interaction.application_id if interaction else None,
                interaction_token=interaction.token if interaction else None,
                token_expires_at=self.repo.clock() + 600 if interaction else None,
            )
            for index in range(count)
        ]
        return await self.repo.create_many(batch)

    async def announced(self, jobs: list[Job], interaction: discord.Interaction[Any]) -> int:
        message_id = await self.delivery.announcer(interaction)(jobs, True)
        await self.repo.set_message(jobs, message_id)
        return message_id

    def message(self, message_id: int) -> FakeMessage:
        found = self.fake.message(message_id)
        assert found is not None
        return found


def media(seed: int) -> DownloadedMedia:
    """A generated image (a colour of its own for each seed)."""
    colour = (seed * 40 % 256, 80, 160)
    return DownloadedMedia(png_bytes(colour, (64, 48)), "image/png")


def custom_ids(message: FakeMessage) -> list[str]:
    return [str(c["custom_id"]) for c in walk_components(message.components) if "custom_id" in c]


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    db = await open_database(tmp_path / "kreabot.sqlite3")
    async with FakeDiscord() as fake, aiohttp.ClientSession() as session:
        fake.add_guild()
        with fake.patch_discord_py():
            client = Client()
            async with run_bot(client, fake):
                repo = JobRepository(db)
                config = ConfigStore(db)
                images = ImageWorker(2)
                delivery = DiscordDelivery(client, repo, config, session, images)
                yield Scene(fake, client, repo, config, delivery)
                images.close()
    await db.close()


async def test_announce_progress_and_result_in_the_members_reply(scene: Scene) -> None:
    interaction = await scene.interaction()
    (job,) = await scene.jobs(interaction)
    message_id = await scene.announced([job], interaction)
    assert "Queued" in scene.message(message_id).content

    await scene.delivery.job_progress(job, Progress("processing", 12.0))
    await scene.fake.wait_for(
        lambda: "Generating" in scene.message(message_id).content, what="the progress edit"
    )

    published = await scene.delivery.job_result(job, media(1))

    assert published == Published(message_id, (job.id,))
    shown = scene.message(message_id)
    assert shown.attachments[0].filename == f"krea-{job.id}-{job.seed}.png"
    assert shown.attachments[0].data == media(1).data  # the very bytes it was handed
    assert shown.embeds[0]["footer"]["text"] == f"Krea 2 Large · job #{job.id}"
    assert f"krea:regen:{job.id}" in custom_ids(shown)
    assert shown.pinged_user_ids == set()


def edits_of(scene: Scene, message_id: int) -> list[Any]:
    return [r for r in scene.fake.requests if r.method == "PATCH" and str(message_id) in r.path]


async def test_progress_never_waits_for_discord_and_is_coalesced(scene: Scene) -> None:
    interaction = await scene.interaction()
    (job,) = await scene.jobs(interaction)
    message_id = await scene.announced([job], interaction)
    await scene.repo.update(job, token_expires_at=0.0)  # the bot's token: rate limited

    loop = asyncio.get_running_loop()
    started = loop.time()
    for second in range(20):
        await scene.delivery.job_progress(job, Progress("processing", float(second)))
    assert loop.time() - started < 0.5  # the runner's poll loop is never held up

    await scene.fake.wait_for(
        lambda: "19 s" in scene.message(message_id).content, what="the latest progress"
    )
    assert len(edits_of(scene, message_id)) <= 2  # twenty updates, one or two edits


async def test_progress_stops_for_a_message_that_is_gone(scene: Scene) -> None:
    interaction = await scene.interaction()
    (job,) = await scene.jobs(interaction)
    message_id = await scene.announced([job], interaction)
    await scene.repo.update(job, token_expires_at=0.0)
    await scene.fake.delete_message(scene.message(message_id))

    await scene.delivery.job_progress(job, Progress("processing", 1.0))
    await scene.fake.wait_for(lambda: edits_of(scene, message_id), what="one edit attempt")
    await asyncio.sleep(0.1)
    await scene.delivery.job_progress(job, Progress("submitted"))
    await scene.delivery.job_progress(job, Progress("processing", 2.0))
    await asyncio.sleep(0.2)

    assert len(edits_of(scene, message_id)) == 1  # not tried again


async def test_a_batch_is_held_until_its_last_image_then_posted_once(scene: Scene) -> None:
    interaction = await scene.interaction()
    jobs = await scene.jobs(interaction, count=4)
    message_id = await scene.announced(jobs, interaction)

    for job in jobs[:3]:
        assert await scene.delivery.job_result(job, media(job.seed)) is None
        await scene.repo.update(job, state=JobState.DELIVERING)
    assert scene.message(message_id).attachments == []  # nothing posted yet

    published = await scene.delivery.job_result(jobs[3], media(jobs[3].seed))

    assert published == Published(message_id, tuple(job.id for job in jobs))
    shown = scene.message(message_id)
    # Each image once: the four images as attachments, no grid repeating them.
    assert [a.filename for a in shown.attachments] == [f"krea-{j.id}-{j.seed}.png" for j in jobs]
    assert [a.data for a in shown.attachments] == [media(j.seed).data for j in jobs]
    assert all("image" not in embed and "thumbnail" not in embed for embed in shown.embeds)
    assert custom_ids(shown) == [
        *(f"krea:open:{j.id}" for j in jobs),
        *(f"krea:vary:subtle:{j.id}" for j in jobs),
        f"krea:delete:{jobs[0].id}",
    ]


async def test_a_batch_whose_last_job_failed_posts_the_others(scene: Scene) -> None:
    interaction = await scene.interaction()
    jobs = await scene.jobs(interaction, count=3)
    message_id = await scene.announced(jobs, interaction)
    for job in jobs[:2]:
        assert await scene.delivery.job_result(job, media(job.seed)) is None
        await scene.repo.update(job, state=JobState.DELIVERING)

    await scene.repo.update(jobs[2], state=JobState.FAILED, error_kind="refused")
    published = await scene.delivery.job_failed(jobs[2], Failure("refused", "flagged"))

    assert published == Published(message_id, (jobs[0].id, jobs[1].id))
    batch = scene.message(message_id)
    assert "(failed)" in batch.embeds[0]["fields"][0]["value"]
    assert [a.filename for a in batch.attachments] == [
        f"krea-{j.id}-{j.seed}.png" for j in jobs[:2]
    ]


async def test_a_failure_says_why_with_a_retry_button(scene: Scene) -> None:
    interaction = await scene.interaction()
    (job,) = await scene.jobs(interaction)
    message_id = await scene.announced([job], interaction)

    published = await scene.delivery.job_failed(job, Failure("uncertain", retryable=True))

    assert published is None
    failed = scene.message(message_id)
    assert "did not confirm" in failed.content and "Retry" in failed.content
    assert custom_ids(failed) == [f"krea:retry:{job.id}"]


async def test_after_the_token_expired_the_result_is_a_reply_by_the_bot(scene: Scene) -> None:
    interaction = await scene.interaction()
    (job,) = await scene.jobs(interaction)
    message_id = await scene.announced([job], interaction)
    await scene.repo.update(job, token_expires_at=0.0)  # the 15 minutes are over

    published = await scene.delivery.job_result(job, media(2))

    assert published is not None and published.message_id != message_id
    reply = scene.message(published.message_id)
    assert reply.message_reference is not None
    assert int(reply.message_reference["message_id"]) == message_id
    assert reply.attachments[0].data == media(2).data
    assert "Finished" in scene.message(message_id).content


async def test_each_file_is_fitted_to_the_limit_of_the_path_it_takes(scene: Scene) -> None:
    big = DownloadedMedia(png_bytes((10, 200, 30), (900, 900)) + b"", "image/png")
    interaction = await scene.interaction()
    jobs = await scene.jobs(interaction, count=2)
    await scene.announced(jobs, interaction)
    for job in jobs:
        await scene.repo.update(job, token_expires_at=0.0)  # the bot's token: the server limit
    scene.delivery.upload_limit = lambda job, *, with_token: 4000  # type: ignore[method-assign]

    await scene.delivery.job_result(jobs[0], big)
    published = await scene.delivery.job_result(jobs[1], big)

    assert published is not None
    shown = scene.message(published.message_id)
    assert len(shown.attachments) == 2
    assert all(a.size <= 4000 for a in shown.attachments)  # each file on its own


async def test_a_result_posted_again_after_a_crash_is_the_same_message(scene: Scene) -> None:
    interaction = await scene.interaction()
    (job,) = await scene.jobs(interaction)
    await scene.announced([job], interaction)
    await scene.repo.update(job, token_expires_at=0.0)  # the bot's token: a channel reply

    first = await scene.delivery.job_result(job, media(3))
    # The bot died before it recorded that post; after the restart it delivers again.
    again = await scene.delivery.job_result(job, media(3))

    assert first is not None and again is not None
    assert again.message_id == first.message_id  # the job's nonce found the earlier post
    posted = [m for m in scene.fake.messages() if m.attachments and not m.deleted]
    assert [m.id for m in posted] == [first.message_id]


async def test_a_pause_is_told_in_each_servers_log_channel(scene: Scene) -> None:
    guild = scene.fake.guild
    await scene.config.set(guild.id, SERVER, "log_channel", guild.channel.id)

    await scene.delivery.gateway_paused("balance")

    notice = scene.fake.last_message(guild.channel)
    assert notice is not None and "balance is empty" in notice.content
