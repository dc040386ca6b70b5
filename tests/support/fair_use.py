"""Helpers for the fair-use scenes: several members' jobs, the queue, the gateway's wallet."""

from __future__ import annotations

from typing import Any

from fake_pixazo import RecordedRequest
from tests.fake_discord import FakeChannel, FakeMember, FakeMessage, InteractionHandle
from tests.support.checks import eventually, job_rows, texts_of
from tests.support.scenes import private_reply
from tests.support.world import World


async def imagine(
    world: World, prompt: str, *, user: FakeMember | None = None, **options: Any
) -> InteractionHandle:
    """A member runs /imagine; wait for the (public, deferred) response."""
    options.setdefault("seed", 7)
    handle = await world.discord.slash("imagine", {"prompt": prompt, **options}, user=user)
    await handle.wait_for_response()
    return handle


async def launch(
    world: World, prompt: str, *, user: FakeMember | None = None, **options: Any
) -> InteractionHandle:
    """/imagine, then wait until its job is stored and announced, so that jobs launched one
    after the other get increasing ids."""
    handle = await imagine(world, prompt, user=user, **options)

    def announced() -> bool:
        row = rows_by_prompt(world).get(prompt)
        return row is not None and row["message_id"] is not None

    await eventually(announced, what=f"the job of {prompt!r}")
    return handle


async def refusal(handle: InteractionHandle, timeout: float = 5.0) -> str:
    """The text the bot sent the member alone (an ephemeral reply or follow-up)."""
    return await eventually(lambda: private_reply(handle), timeout, f"a private reply to {handle}")


async def shows(handle: InteractionHandle, *needles: str, timeout: float = 5.0) -> FakeMessage:
    """The job's message once its content holds every one of ``needles``."""
    return await handle.wait_for_original(
        lambda m: all(n in m.content for n in needles), timeout=timeout
    )


def contents(message: FakeMessage) -> list[str]:
    """Every content the message ever had, oldest first."""
    return [r.content for r in message.history] + [message.content]


def submits(world: World) -> list[RecordedRequest]:
    """Every submit request the gateway received, oldest first."""
    return world.pixazo.submits()


def submitted_prompts(world: World, status: int | None = 202) -> list[str]:
    """The prompts of the submits the gateway answered with ``status`` (any when None)."""
    return [
        str(r.body.get("prompt"))
        for r in world.pixazo.submits()
        if isinstance(r.body, dict) and (status is None or r.status == status)
    ]


def request_id_of(world: World, prompt: str) -> str:
    """The request id of the accepted job with ``prompt``."""
    (request_id,) = [rid for rid, job in world.pixazo.jobs.items() if job.prompt == prompt]
    return request_id


def rows_by_prompt(world: World) -> dict[str, dict[str, Any]]:
    """The job rows keyed by prompt (prompts are unique in these tests)."""
    return {row["params"]["prompt"]: row for row in job_rows(world.database)}


async def states(world: World, wanted: dict[str, str], timeout: float = 5.0) -> None:
    """Wait until the job of each prompt is in the wanted state."""

    def check() -> bool:
        rows = rows_by_prompt(world)
        return all(p in rows and rows[p]["state"] == s for p, s in wanted.items())

    await eventually(check, timeout, f"job states {wanted}")


async def use_log_channel(world: World) -> FakeChannel:
    """An admin makes a new #kreabot-log the server's log channel."""
    channel = world.discord.add_channel(world.guild, "kreabot-log")
    handle = await world.discord.slash(
        "settings logchannel set", {"channel": channel}, user=world.guild.admin
    )
    await handle.wait_for_response()
    assert handle.ephemeral
    return channel


def channel_texts(world: World, channel: FakeChannel) -> list[str]:
    """The contents of the messages in ``channel``."""
    return [m.content for m in world.discord.messages(channel)]


def public_texts(world: World) -> list[str]:
    """Everything anyone in the server can read (contents and embeds, every revision)."""
    return [
        text
        for message in world.discord.messages(include_ephemeral=False)
        for text in texts_of(message)
    ]
