"""``/jobs`` (a member's jobs, cancelling queued ones) and ``/usage`` (what the server spent),
through both fakes: what members and admins see against what the gateway received."""

from __future__ import annotations

import time
from typing import Any

import pytest

import bot.runner
from tests.fake_discord import FakeMember, FakeMessage, InteractionHandle
from tests.support.fair_use import (
    imagine,
    launch,
    refusal,
    request_id_of,
    rows_by_prompt,
    shows,
    states,
    submitted_prompts,
)
from tests.support.scenes import DAY, reply_text, wait_for_submits
from tests.support.world import World


@pytest.fixture(autouse=True)
def quick_queue_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting jobs look at their place in line twice a second instead of every 2 s."""
    monkeypatch.setattr(bot.runner, "QUEUE_REFRESH_SECONDS", 0.5)


# --------------------------------------------------------------------------- /jobs


async def jobs_list(world: World, user: FakeMember) -> tuple[InteractionHandle, FakeMessage]:
    """``/jobs`` as ``user``: the handle and its (ephemeral) message."""
    handle = await world.discord.slash("jobs", {}, user=user)
    await handle.wait_for_response()
    return handle, await handle.wait_for_original()


async def test_a_cancelled_queued_job_never_reaches_the_gateway(world: World) -> None:
    world.pixazo.manual = True
    member = world.guild.member
    async with world.bot(MEMBER_MAX_IN_FLIGHT=1):
        running = await launch(world, "keep running")
        await wait_for_submits(world, 1)
        doomed = await launch(world, "cancel this one")
        kept = await launch(world, "keep waiting")
        await states(world, {"cancel this one": "pending", "keep waiting": "pending"})
        ids = {p: r["id"] for p, r in rows_by_prompt(world).items()}

        listing, message = await jobs_list(world, member)
        select_id = f"krea:cancel:{member.id}"
        options = [o["value"] for o in message.component(select_id)["options"]]
        stranger = await world.discord.click(
            message, select_id, values=[str(ids["cancel this one"])], user=world.guild.admin
        )
        refused_stranger = await refusal(stranger)
        click = await world.discord.click(message, select_id, values=[str(ids["cancel this one"])])
        answer = await refusal(click)
        cancelled = await shows(doomed, "Cancelled")
        too_late = await world.discord.click(message, select_id, values=[str(ids["keep running"])])
        too_late_answer = await refusal(too_late)

        world.pixazo.finish(request_id_of(world, "keep running"))
        await wait_for_submits(world, 2)
        world.pixazo.finish(request_id_of(world, "keep waiting"))
        await world.result_of(running)
        await world.result_of(kept)
        _, after = await jobs_list(world, member)

    assert listing.ephemeral
    assert "**Running**" in message.content and "keep running" in message.content
    assert "**Queued**" in message.content and "#1 in line" in message.content
    assert options == [str(ids["cancel this one"]), str(ids["keep waiting"])]
    assert refused_stranger == "These are not your jobs."
    assert answer == f"Cancelled #{ids['cancel this one']}."
    assert "nothing was charged" in cancelled.content
    assert "already reached the image service" in too_late_answer
    assert submitted_prompts(world, None) == ["keep running", "keep waiting"]
    assert all(job.prompt != "cancel this one" for job in world.pixazo.jobs.values())
    rows = rows_by_prompt(world)
    assert rows["cancel this one"]["state"] == "cancelled"
    assert rows["cancel this one"]["request_id"] is None
    assert "Cancel" not in "".join(after.custom_ids)  # nothing queued any more
    assert "cancelled: cancel this one" in after.content


async def test_jobs_lists_only_the_members_own_jobs_with_links(world: World) -> None:
    world.pixazo.outcome_for(contains="melting", status="FAILED", error="Generation failed")
    member = world.guild.member
    async with world.bot(MEMBER_MAX_IN_FLIGHT=1):
        done = await world.result_of(await launch(world, "a finished *bold* one"))
        await launch(world, "a melting clock")
        await states(world, {"a melting clock": "failed"})
        world.pixazo.manual = True
        running = await launch(world, "a running one")
        await wait_for_submits(world, 3)
        await states(world, {"a running one": "processing"})  # polled once: "generating"
        await launch(world, "a queued one")
        await launch(world, "someone else's", user=world.guild.admin)
        _, mine = await jobs_list(world, member)
        _, nothing = await jobs_list(world, world.guild.owner)
        for prompt in ("a running one", "someone else's"):
            world.pixazo.finish(request_id_of(world, prompt))
        await wait_for_submits(world, 5)
        world.pixazo.finish(request_id_of(world, "a queued one"))
        await world.result_of(running)

    rows = rows_by_prompt(world)
    guild, channel = world.guild.id, world.guild.channel.id
    text = mine.content
    running_part, queued_part, recent_part = (
        text.split("**Queued**")[0],
        text.split("**Queued**")[1].split("**Recent**")[0],
        text.split("**Recent**")[1],
    )
    assert "a running one" in running_part and "generating" in running_part
    assert f"`#{rows['a queued one']['id']}` queued #1 in line: a queued one" in queued_part
    link = f"https://discord.com/channels/{guild}/{channel}/{done.id}"
    assert f"done: a finished \\*bold\\* one · [open]({link})" in recent_part
    assert "failed: a melting clock" in recent_part
    assert recent_part.index("a melting clock") < recent_part.index("a finished")  # newest first
    assert "someone else's" not in text
    assert mine.ephemeral and nothing.ephemeral
    assert nothing.content == "You have no images here yet. Try `/imagine`."
    assert nothing.components == []


# --------------------------------------------------------------------------- /usage


async def usage(world: World, period: str, user: FakeMember | None = None) -> InteractionHandle:
    """Run /usage (as the admin unless ``user``) and wait for its answer."""
    handle = await world.discord.slash("usage", {"period": period}, user=user or world.guild.admin)
    await handle.wait_for_response()
    return handle


def usage_embed(handle: InteractionHandle) -> dict[str, Any]:
    """The embed of a /usage answer."""
    assert handle.response is not None and handle.response.data is not None
    (embed,) = handle.response.data["embeds"]
    return dict(embed)


async def test_usage_matches_what_the_gateway_was_sent_and_charged(world: World) -> None:
    world.pixazo.set_balance(100)
    world.pixazo.outcome_for(contains="melting", status="FAILED", error="Generation failed")
    world.pixazo.outcome_for(contains="crashing", status="ERROR", error="GPU worker crashed")
    member, admin = world.guild.member, world.guild.admin
    async with world.bot(PRICE_PER_IMAGE=0.05, MEMBER_DAILY_IMAGES=5):
        await world.result_of(await launch(world, "a week ago"))
        world.advance(DAY)
        await world.result_of(await launch(world, "six days ago"))
        world.advance(6 * DAY)
        for prompt in ("member today", "member again"):
            await world.result_of(await launch(world, prompt, user=member))
        await world.result_of(await launch(world, "admin today", user=admin))
        for prompt in ("melting clock", "crashing wave"):
            await shows(await launch(world, prompt, user=admin), prompt, "**")
        await states(world, {"melting clock": "failed", "crashing wave": "failed"})
        refused = await imagine(world, "over the cap", user=member, count=4)
        await refusal(refused)

        today = usage_embed(await usage(world, "today"))
        week = usage_embed(await usage(world, "7 days"))
        month = usage_embed(await usage(world, "30 days"))
        denied = await usage(world, "today", user=member)

    accepted_today = [j for j in world.pixazo.jobs.values() if " ago" not in j.prompt]
    charged = 100 - (world.pixazo.balance or 0)
    assert len(accepted_today) == 5 and charged == 6  # the ERROR job was refunded
    assert today["title"] == "Usage (today)"
    assert today["description"] == "Total: 5 image(s), 2 failed, ≈ $0.20"  # 4 charged × $0.05
    fields = {f["name"]: f["value"] for f in today["fields"]}
    assert fields["Per member"].splitlines() == [
        f"<@{admin.id}>: 3 image(s), 2 failed, ≈ $0.10",
        f"<@{member.id}>: 2 image(s), 0 failed, ≈ $0.10",
    ]
    day = time.strftime("%Y-%m-%d", time.gmtime(world.clock()))
    assert fields["Per day"] == f"{day}: 5 image(s), 2 failed, ≈ $0.20"
    assert "$0.05 per image" in today["footer"]["text"]
    # "7 days" is today and the six days before; 30 days reaches back further.
    assert week["description"] == "Total: 6 image(s), 2 failed, ≈ $0.25"
    assert month["description"] == f"Total: 7 image(s), 2 failed, ≈ ${charged * 0.05:.2f}"
    assert denied.ephemeral and "Manage Server" in reply_text(denied)
    assert not denied.response.data.get("embeds")  # type: ignore[union-attr]
    assert "over the cap" not in rows_by_prompt(world)
