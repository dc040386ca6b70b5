"""/imagine end to end: the real bot against the fake Discord and the fake Pixazo gateway.

Every test looks at what a member would see (messages, embeds, files, buttons), at what
the gateway was sent, and at the job rows in the SQLite file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from fake_pixazo import FakePixazo
from tests.fake_discord import INTERACTION_RESPONSE_DEADLINE, FakeMessage, InteractionHandle, Upload
from tests.fake_discord.fixtures import DEFAULT_TOKEN
from tests.support.checks import (
    assert_no_traceback,
    assert_pings_nobody,
    bot_messages,
    eventually,
    job_rows,
    only_request_id,
    texts_of,
)
from tests.support.images import noisy_png, png_bytes
from tests.support.world import World

BOARD = "123e4567-e89b-12d3-a456-426614174000"
PROMPT = "a lighthouse at dusk, oil on canvas"
SEED_MAX = 2**32 - 1


# --------------------------------------------------------------------------- helpers


def only_job(world: World) -> dict[str, Any]:
    """The single job row of the test."""
    rows = job_rows(world.db_path)
    assert len(rows) == 1, rows
    return rows[0]


async def job_in_state(world: World, state: str, within: float = 5.0) -> dict[str, Any]:
    """Wait until the single job row reaches ``state``."""

    def check() -> dict[str, Any] | None:
        rows = job_rows(world.db_path)
        return rows[0] if rows and rows[0]["state"] == state else None

    return await eventually(check, within, f"the job to be {state}")


def full_options() -> dict[str, Any]:
    """Every /imagine option, with real PNGs for the attachments."""
    return {
        "prompt": PROMPT,
        "aspect": "16:9",
        "creativity": "high",
        "seed": 123456789,
        "styles": "watercolor-v2:0.6, ink_wash",
        "moodboard": f"{BOARD}:0.4",
        "reference": Upload("red.png", png_bytes("red"), "image/png"),
        "reference2": Upload("blue.png", png_bytes("blue", (40, 40)), "image/png"),
        "reference_strength": 0.7,
        "avoid": Upload("green.png", png_bytes("green"), "image/png"),
    }


def attachment_url(handle: InteractionHandle, option: str) -> str:
    """The signed CDN URL Discord resolved for an attachment option of the interaction."""
    data = handle.payload["data"]
    attachment_id = next(o["value"] for o in data["options"] if o["name"] == option)
    url: str = data["resolved"]["attachments"][attachment_id]["url"]
    return url


def field_values(message: FakeMessage) -> dict[str, str]:
    """The result embed's fields, by name."""
    return {f["name"]: f["value"] for f in message.embeds[0].get("fields", [])}


async def download(url: str) -> bytes:
    """GET ``url`` and return the body."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, url
        return await response.read()


def secrets_of(world: World) -> list[str]:
    """Strings no member may ever see."""
    return [world.pixazo.api_key, DEFAULT_TOKEN]


def assert_nothing_leaked(world: World, extra: list[str] | None = None) -> None:
    """No traceback and no secret in any message the bot ever showed."""
    messages = bot_messages(world.discord)
    assert_no_traceback(messages)
    for message in messages:
        for text in texts_of(message):
            for secret in [*secrets_of(world), *(extra or [])]:
                assert secret not in text, f"a secret was shown to members in {text!r}"


# --------------------------------------------------------------------------- the request


async def test_deferred_publicly_in_time_and_the_gateway_gets_exactly_the_resolved_params(
    world: World,
) -> None:
    options = full_options()
    async with world.bot():
        handle = await world.imagine(**options)
        await world.result_of(handle)

    assert handle.response is not None
    assert handle.response_type == 5
    assert not handle.ephemeral
    assert handle.response.time - handle.created_at < INTERACTION_RESPONSE_DEADLINE
    assert 10062 not in [error.code for error in world.discord.errors]
    assert 40060 not in [error.code for error in world.discord.errors]

    submits = world.pixazo.submits()
    assert len(submits) == 1
    # Acknowledged before anything was sent to the gateway (both clocks are monotonic).
    assert handle.response.time <= submits[0].time

    urls = {name: attachment_url(handle, name) for name in ("reference", "reference2", "avoid")}
    for name, url in urls.items():
        query = parse_qs(urlsplit(url).query)
        assert {"ex", "is", "hm"} <= set(query), url
        assert world.discord.fetch_cdn(url) == options[name].data
    assert world.submitted_bodies() == [
        {
            "prompt": PROMPT,
            "aspect_ratio": "16:9",
            "creativity": "high",
            "seed": 123456789,
            "image_style_references": [
                {"image_url": urls["reference"], "strength": 0.7},
                {"image_url": urls["reference2"], "strength": 0.7},
                {"image_url": urls["avoid"], "strength": -1.0},
            ],
            "styles": [
                {"id": "watercolor-v2", "strength": 0.6},
                {"id": "ink_wash", "strength": 1.0},
            ],
            "moodboards": [{"id": BOARD, "strength": 0.4}],
        }
    ]
    row = only_job(world)
    assert row["params"] == world.submitted_bodies()[0]
    assert row["user_id"] == handle.user.id
    assert row["channel_id"] == world.guild.channel.id
    assert row["guild_id"] == world.guild.id
    assert row["request_id"] == submits[0].request_id


async def test_without_a_seed_one_is_picked_sent_stored_and_shown(world: World) -> None:
    async with world.bot():
        first = await world.imagine(prompt="a quiet harbour")
        first_result = await world.result_of(first)
        second = await world.imagine(prompt="a quiet harbour")
        second_result = await world.result_of(second)

    bodies = world.submitted_bodies()
    seeds = [body["seed"] for body in bodies]
    assert all(isinstance(seed, int) and 0 <= seed <= SEED_MAX for seed in seeds)
    assert seeds[0] != seeds[1]  # picked per job (a clash has odds of 1 in 2**32)
    rows = job_rows(world.db_path)
    assert [row["params"]["seed"] for row in rows] == seeds
    assert [row["sources"]["seed"] for row in rows] == ["random", "random"]
    for result, seed in zip((first_result, second_result), seeds, strict=True):
        assert field_values(result)["Seed"] == f"`{seed}`"


# --------------------------------------------------------------------------- the result


async def test_result_message_has_the_gateway_png_the_embed_and_the_buttons(world: World) -> None:
    options = full_options()
    async with world.bot():
        handle = await world.imagine(**options)
        message = await world.result_of(handle)
        row = await job_in_state(world, "completed")

    served = await download(world.pixazo.media_url(only_request_id(world.pixazo)))
    assert served.startswith(b"\x89PNG")
    assert message.files[0] == served
    assert message.filenames[0].endswith(".png")
    assert not message.ephemeral

    embed = message.embeds[0]
    assert embed["description"] == PROMPT
    assert embed["image"]["url"] == f"attachment://{message.filenames[0]}"
    fields = field_values(message)
    assert fields["Seed"] == "`123456789`"
    assert fields["Aspect"] == "16:9"
    assert fields["Creativity"] == "high"
    assert "`watercolor-v2` ×0.6" in fields["Styles"]
    assert "`ink_wash` ×1" in fields["Styles"]
    assert BOARD in fields["Moodboard"] and "×0.4" in fields["Moodboard"]
    assert "2 image(s) ×0.7, 0.7" in fields["Style references"]
    assert "avoid 1 ×-1" in fields["Style references"]
    assert fields["Requested by"] == f"<@{handle.user.id}>"

    job_id = row["id"]
    assert sorted(message.custom_ids) == sorted(
        [
            f"krea:regen:{job_id}",
            f"krea:vary:subtle:{job_id}",
            f"krea:vary:strong:{job_id}",
            f"krea:remix:{job_id}",
            f"krea:delete:{job_id}",
            f"krea:reframe:{job_id}",
        ]
    )
    assert all(1 <= len(custom_id) <= 100 for custom_id in message.custom_ids)
    assert len(set(message.custom_ids)) == len(message.custom_ids)

    assert row["state"] == "completed"
    assert row["message_id"] == message.id
    assert row["result_message_id"] == message.id
    assert row["delivered_at"] is not None
    # Exactly one image in the channel, on the job's own message.
    with_images = [m for m in bot_messages(world.discord) if m.attachments and not m.deleted]
    assert with_images == [message]
    assert_nothing_leaked(world)


async def test_a_result_over_the_upload_limit_is_re_encoded_to_fit(world: World) -> None:
    world.pixazo.noisy = True  # a nearly incompressible PNG
    world.pixazo.long_edge = 512
    limit = 200_000
    async with world.bot():
        handle = await world.discord.slash(
            "imagine", {"prompt": PROMPT, "seed": 4}, attachment_size_limit=limit
        )
        await handle.wait_for_response()
        message = await world.result_of(handle)
        await job_in_state(world, "completed")

    served = await download(world.pixazo.media_url(only_request_id(world.pixazo)))
    assert len(served) > limit
    assert message.filenames[0].endswith(".jpg")
    assert message.files[0].startswith(b"\xff\xd8")
    assert sum(len(data) for data in message.files) <= limit
    assert message.embeds[0]["image"]["url"] == f"attachment://{message.filenames[0]}"
    assert 40005 not in [error.code for error in world.discord.errors]


# --------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class FailureCase:
    """One way the gateway can let a job down, and what the member must read."""

    script: Callable[[FakePixazo], None]
    expect: tuple[str, ...]
    error_kind: str
    retry: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    forbidden: tuple[str, ...] = ()
    state: str = "failed"


def _manual(pixazo: FakePixazo) -> None:
    pixazo.manual = True


WRONG_KEY = "not-the-right-key-4821"

FAILURES = {
    "refused": FailureCase(
        lambda p: p.next_outcome("FAILED", "Content flagged by the safety filter"),
        ("Refused by the model's content filter",),
        "refused",
        retry=False,
    ),
    "error": FailureCase(
        lambda p: p.next_outcome("ERROR", "GPU worker crashed"),
        ("internal error", "not charged"),
        "error",
        retry=True,
    ),
    "submit-500": FailureCase(  # a 5xx may have been charged: never sent again blindly
        lambda p: p.fail_next("submit", status=500),
        ("did not confirm", "may already have been charged"),
        "uncertain",
        retry=True,
        state="interrupted",
    ),
    "timeout": FailureCase(
        _manual,
        ("took too long",),
        "timeout",
        retry=True,
        overrides={"JOB_TIMEOUT_SECONDS": 0.5},
    ),
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
async def test_each_gateway_failure_is_a_readable_message(world: World, case: FailureCase) -> None:
    case.script(world.pixazo)
    async with world.bot(**case.overrides):
        handle = await world.imagine(prompt=PROMPT, seed=5)
        message = await handle.wait_for_original(
            lambda m: all(text in m.content for text in case.expect), timeout=5.0
        )
        row = await job_in_state(world, case.state)

    assert PROMPT in message.content  # the member sees which job failed
    assert message.embeds == []
    assert message.attachments == []
    assert row["error_kind"] == case.error_kind
    retry_ids = [c for c in message.custom_ids if c.startswith("krea:retry:")]
    assert retry_ids == ([f"krea:retry:{row['id']}"] if case.retry else [])
    for text in case.forbidden:
        assert text.lower() not in message.content.lower()
    assert_nothing_leaked(world, extra=[WRONG_KEY])
    # A paid submit is never blindly repeated.
    assert len(world.pixazo.submits()) == 1
    assert handle.error_codes() == []


async def test_an_empty_balance_pauses_the_job_and_tells_the_member_to_ask_an_admin(
    world: World,
) -> None:
    world.pixazo.set_balance(0)
    async with world.bot(BREAKER_PROBE_SECONDS=0.2):
        handle = await world.imagine(prompt=PROMPT, seed=5)
        paused = await handle.wait_for_original(lambda m: "balance is empty" in m.content)
        shown = paused.content
        assert only_job(world)["state"] == "pending"  # waiting, not failed

        world.pixazo.set_balance(None)  # an admin topped the wallet up
        result = await world.result_of(handle)
        row = await job_in_state(world, "completed")

    assert "admin" in shown
    assert "key" not in shown.lower()
    assert PROMPT in shown
    statuses = [r.status for r in world.pixazo.submits()]
    assert statuses[-1] == 202 and set(statuses[:-1]) == {402}
    assert len(world.pixazo.jobs) == 1
    assert row["result_message_id"] == result.id
    assert_nothing_leaked(world)


async def test_rate_limited_submit_waits_then_completes_with_one_accepted_job(
    world: World,
) -> None:
    # More 429s than the client retries on its own, so the runner has to wait too.
    world.pixazo.fail_next("submit", status=429, headers={"Retry-After": "0"}, times=6)
    async with world.bot():
        handle = await world.imagine(prompt=PROMPT, seed=9)
        message = await world.result_of(handle)
        row = await job_in_state(world, "completed")

    assert [r.status for r in world.pixazo.submits()] == [429] * 6 + [202]
    assert len(world.pixazo.jobs) == 1
    assert row["request_id"] == only_request_id(world.pixazo)
    shown = [revision.content for revision in message.history]
    assert any("Waiting" in text and "busy, retrying" in text for text in shown), shown
    assert message.files[0].startswith(b"\x89PNG")
    assert_nothing_leaked(world)


# --------------------------------------------------------------------------- bad input


BAD_ATTACHMENTS = {
    "not-an-image": (
        {},
        {"reference": Upload("notes.txt", b"hello", "text/plain")},
        ("`reference`", "PNG, JPEG, WebP or GIF", "notes.txt"),
    ),
    "oversized": (
        {"MAX_REFERENCE_BYTES": 2048},
        {
            "reference": Upload("small.png", png_bytes("red"), "image/png"),
            "reference2": Upload("big.png", noisy_png((64, 64)), "image/png"),
        },
        ("`reference2`", "limit"),
    ),
}


@pytest.mark.parametrize(
    ("overrides", "uploads", "expect"), BAD_ATTACHMENTS.values(), ids=BAD_ATTACHMENTS.keys()
)
async def test_a_bad_attachment_is_explained_privately_and_nothing_is_submitted(
    world: World, overrides: dict[str, Any], uploads: dict[str, Upload], expect: tuple[str, ...]
) -> None:
    async with world.bot(**overrides):
        handle = await world.imagine(prompt=PROMPT, **uploads)
        await handle.wait_until_done()

    assert handle.response_type == 4
    assert handle.ephemeral
    assert handle.response is not None and handle.response.data is not None
    content = handle.response.data["content"]
    for text in expect:
        assert text in content, content
    assert "Nothing was sent" in content
    assert world.pixazo.submits() == []
    assert world.pixazo.requests == []
    assert job_rows(world.db_path) == []
    assert bot_messages(world.discord, include_ephemeral=False) == []
    assert_nothing_leaked(world)


async def test_input_refused_after_the_deferral_is_explained_privately(world: World) -> None:
    async with world.bot():
        handle = await world.imagine(prompt=PROMPT, moodboard="not-a-moodboard")
        await handle.wait_until_done()

    assert world.pixazo.requests == []
    assert job_rows(world.db_path) == []
    visible = [m for m in bot_messages(world.discord) if not m.deleted]
    assert len(visible) == 1
    assert visible[0].ephemeral
    assert "not-a-moodboard" in visible[0].content
    assert "Nothing was sent" in visible[0].content


# --------------------------------------------------------------------------- after 15 minutes


async def test_a_result_after_15_minutes_is_a_channel_reply_and_the_original_points_to_it(
    world: World,
) -> None:
    world.pixazo.manual = True
    async with world.bot(JOB_TIMEOUT_SECONDS=3600):
        handle = await world.imagine(prompt=PROMPT, seed=77)
        (accepted,) = await world.pixazo.wait_for_jobs(1)
        await world.pixazo.wait_for_job(accepted.request_id, "PROCESSING")
        job_message = await handle.wait_for_original(lambda m: "Generating" in m.content)

        world.advance(16 * 60)
        world.pixazo.finish(accepted.request_id)
        result = await world.discord.wait_for_message(
            lambda m: m.author.id == world.discord.bot_user.id and bool(m.attachments)
        )
        await handle.wait_for_original(lambda m: "reply below" in m.content)
        row = await job_in_state(world, "completed")

    assert handle.error_codes() == []  # the bot's clock knew the token was dead
    assert result.id != job_message.id
    assert result.webhook_id is None and result.interaction_id is None
    assert result.message_reference is not None
    assert result.message_reference["message_id"] == str(job_message.id)
    posts = [
        r
        for r in world.discord.find_requests("POST", f"/channels/{world.guild.channel.id}/messages")
        if r.files
    ]
    assert len(posts) == 1
    assert posts[0].authorization == f"Bot {DEFAULT_TOKEN}"
    assert posts[0].status == 200

    served = await download(world.pixazo.media_url(accepted.request_id))
    assert result.files[0] == served
    assert f"krea:regen:{row['id']}" in result.custom_ids
    assert len(result.custom_ids) == 6
    assert_pings_nobody(result)

    assert job_message.attachments == []
    assert job_message.components == []
    assert str(result.id) in job_message.content  # the link to the reply
    assert row["result_message_id"] == result.id
    assert row["message_id"] == job_message.id
    with_images = [m for m in bot_messages(world.discord) if m.attachments and not m.deleted]
    assert with_images == [result]
    assert_nothing_leaked(world)


async def test_a_token_that_died_earlier_than_expected_still_delivers_once(world: World) -> None:
    """Only Discord's clock moves: the bot learns of the expiry from a 50027 and recovers."""
    world.pixazo.manual = True
    async with world.bot(JOB_TIMEOUT_SECONDS=3600):
        handle = await world.imagine(prompt=PROMPT, seed=78)
        (accepted,) = await world.pixazo.wait_for_jobs(1)
        await handle.wait_for_original(lambda m: "Generating" in m.content)

        world.discord.advance(16 * 60)
        world.pixazo.finish(accepted.request_id)
        result = await world.discord.wait_for_message(
            lambda m: m.author.id == world.discord.bot_user.id and bool(m.attachments)
        )
        await handle.wait_for_original(lambda m: "reply below" in m.content)
        row = await job_in_state(world, "completed")

    assert handle.error_codes() == [50027]  # learnt once, then the bot's token only
    assert result.message_reference is not None
    assert result.message_reference["message_id"] == str(row["message_id"])
    with_images = [m for m in bot_messages(world.discord) if m.attachments and not m.deleted]
    assert with_images == [result]
    assert row["result_message_id"] == result.id
    assert_nothing_leaked(world)


# --------------------------------------------------------------------------- mentions


async def test_a_prompt_with_mentions_pings_nobody(world: World) -> None:
    guild = world.guild
    assert guild.admin_role is not None and guild.owner is not None
    role, owner = guild.admin_role.id, guild.owner.id
    prompt = f"@everyone @here look <@&{role}> and <@{owner}> <@!{owner}>"
    world.pixazo.outcome_for(contains="refuse me", status="FAILED", error="Content flagged")
    async with world.bot():
        done = await world.imagine(prompt=prompt, seed=1)
        await world.result_of(done)
        failed = await world.imagine(prompt=f"{prompt} refuse me", seed=2)
        await failed.wait_for_original(lambda m: "content filter" in m.content)
        refused = await world.imagine(
            prompt=prompt,
            reference=Upload(f"@everyone <@&{role}>.txt", b"hi", "text/plain"),
        )
        await refused.wait_until_done()

    messages = bot_messages(world.discord)
    assert len(messages) == 3
    assert any("@everyone" in m.content for m in messages)  # the text is there, the ping is not
    for message in messages:
        assert_pings_nobody(message)
    assert refused.ephemeral
    assert_nothing_leaked(world)


# --------------------------------------------------------------------------- progress


async def test_progress_is_shown_and_edits_are_rate_limited(world: World) -> None:
    world.pixazo.manual = True
    async with world.bot(STATUS_POLLS_PER_SECOND=100):
        handle = await world.imagine(prompt=PROMPT, seed=3)
        (accepted,) = await world.pixazo.wait_for_jobs(1)
        message = await handle.wait_for_original(lambda m: "Generating" in m.content)

        polls_before = len(world.pixazo.status_calls(accepted.request_id))
        edits_before = message.edit_count
        await world.pixazo.wait_for_status_calls(polls_before + 25, accepted.request_id)
        edits_during = message.edit_count - edits_before

        world.pixazo.finish(accepted.request_id)
        await world.result_of(handle)

    assert edits_during <= 1, f"{edits_during} edits for 25 polls"
    shown = [revision.content for revision in message.history]
    assert any("Sent to Krea 2" in text or "Queued" in text for text in shown), shown
    assert any("Generating" in text for text in shown), shown
    assert all(PROMPT in text for text in shown if text)
    assert world.discord.rate_limited == []
