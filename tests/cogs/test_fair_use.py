"""Issue 6: fair use and the server's wallet, through both fakes.

Every test looks at what members and admins see (messages, ephemeral replies, the log
channel) and at what the gateway received (submits, their order and their times).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import bot.runner
from tests.fake_discord import InteractionHandle
from tests.support.checks import bot_messages, texts_of
from tests.support.fair_use import (
    channel_texts,
    contents,
    eventually,
    imagine,
    launch,
    public_texts,
    refusal,
    request_id_of,
    rows_by_prompt,
    shows,
    states,
    submits,
    submitted_prompts,
    use_log_channel,
)
from tests.support.scenes import (
    DAY,
    is_ephemeral_reply,
    reply_text,
    wait_for_submits,
)
from tests.support.world import World


@pytest.fixture(autouse=True)
def quick_queue_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting jobs look at their place in line twice a second instead of every 2 s.

    Discord edits stay rate-limited as in production (one per message every 3 s), so a
    place in line shows up about 3 s after the message's previous edit.
    """
    monkeypatch.setattr(bot.runner, "QUEUE_REFRESH_SECONDS", 0.5)


# --------------------------------------------------------------------------- the queue


async def test_a_third_job_of_a_member_waits_in_line_then_runs_when_one_finishes(
    world: World,
) -> None:
    world.pixazo.manual = True  # jobs stay PROCESSING until the test finishes them
    async with world.bot(MEMBER_MAX_IN_FLIGHT=2):
        first = await launch(world, "first lighthouse")
        second = await launch(world, "second lighthouse")
        await wait_for_submits(world, 2)
        third = await launch(world, "third lighthouse")
        fourth = await launch(world, "fourth lighthouse")

        in_line = await shows(third, "#1 in line", timeout=8)
        await shows(fourth, "#2 in line", timeout=8)
        assert "your other images" in in_line.content
        assert submitted_prompts(world) == ["first lighthouse", "second lighthouse"]
        await states(world, {"third lighthouse": "pending", "fourth lighthouse": "pending"})

        world.pixazo.finish(request_id_of(world, "first lighthouse"))
        await world.result_of(first)
        await wait_for_submits(world, 3)
        assert submitted_prompts(world)[2] == "third lighthouse"
        await shows(fourth, "#1 in line", timeout=8)  # it moved up

        for prompt in ("second lighthouse", "third lighthouse"):
            world.pixazo.finish(request_id_of(world, prompt))
        await wait_for_submits(world, 4)
        world.pixazo.finish(request_id_of(world, "fourth lighthouse"))
        for handle in (second, third, fourth):
            await world.result_of(handle)

    assert submitted_prompts(world, None) == [
        "first lighthouse",
        "second lighthouse",
        "third lighthouse",
        "fourth lighthouse",
    ]
    assert any("#1 in line" in text for text in contents(await third.wait_for_original()))


# --------------------------------------------------------------------------- daily caps


def next_utc_midnight(world: World) -> int:
    """When today's counts reset, as the bot's clock sees it."""
    return int(world.clock() // DAY * DAY + DAY)


async def test_the_member_daily_cap_refuses_privately_with_the_reset_time(world: World) -> None:
    async with world.bot(MEMBER_DAILY_IMAGES=2):
        for prompt in ("cap one", "cap two"):
            await world.result_of(await imagine(world, prompt))
        refused = await imagine(world, "cap three")
        text = await refusal(refused)
        other = await imagine(world, "someone else's", user=world.guild.admin)
        await world.result_of(other)

        assert f"<t:{next_utc_midnight(world)}:R>" in text
        assert "2 of your 2 images" in text
        assert is_ephemeral_reply(refused)
        assert submitted_prompts(world, None) == ["cap one", "cap two", "someone else's"]
        assert "cap three" not in rows_by_prompt(world)
        assert not any("cap three" in t for t in public_texts(world))

        world.advance(DAY)  # the next day (UTC) the member may ask again
        await world.result_of(await imagine(world, "cap three"))
    assert submitted_prompts(world)[-1] == "cap three"


async def test_the_server_daily_cap_counts_every_member_and_batches(world: World) -> None:
    async with world.bot(SERVER_DAILY_IMAGES=3):
        await world.result_of(await imagine(world, "server one", count=2))
        too_many = await imagine(world, "server batch", user=world.guild.admin, count=2)
        refused_batch = await refusal(too_many)
        await world.result_of(await imagine(world, "server two", user=world.guild.admin))
        refused = await imagine(world, "server three", user=world.guild.owner)
        text = await refusal(refused)

    assert "this server has used 2 of its 3" in refused_batch
    assert "this server has used 3 of its 3" in text
    assert f"<t:{next_utc_midnight(world)}:R>" in text
    assert is_ephemeral_reply(refused) and is_ephemeral_reply(too_many)
    assert sorted(submitted_prompts(world, None)) == ["server one", "server one", "server two"]


async def test_limits_set_with_the_settings_command_apply_to_new_jobs(world: World) -> None:
    async with world.bot(MEMBER_DAILY_IMAGES=50):
        handle = await world.discord.slash(
            "settings limits", {"member_daily": 1, "server_daily": 0}, user=world.guild.admin
        )
        await handle.wait_for_response()
        shown = reply_text(handle)
        await world.result_of(await imagine(world, "limit one"))
        refused = await imagine(world, "limit two")
        text = await refusal(refused)

        denied = await world.discord.slash("settings limits", {"member_daily": 99})
        await denied.wait_for_response()

    assert handle.ephemeral
    assert "1 per member per day" in shown and "no limit per server per day" in shown
    assert "1 of your 1 images" in text
    assert denied.ephemeral and "Manage Server" in reply_text(denied)
    assert submitted_prompts(world, None) == ["limit one"]


# --------------------------------------------------------------------------- restart


async def test_queued_jobs_resume_in_order_after_a_restart(world: World) -> None:
    people = [world.guild.member, world.guild.admin, world.guild.member, world.guild.owner]
    prompts = ["resume one", "resume two", "resume three", "resume four"]
    world.pixazo.set_balance(0)  # the first job is refused, and every job waits
    async with world.bot(BREAKER_PROBE_SECONDS=60):
        handles = [await launch(world, p, user=u) for p, u in zip(prompts, people, strict=True)]
        await states(world, dict.fromkeys(prompts, "pending"))
    refused_before = len(submits(world))
    assert [r.status for r in submits(world)] == [402]  # one refusal, then everything waited

    world.pixazo.set_balance(None)
    world.pixazo.manual = True
    async with world.bot(MAX_CONCURRENT_JOBS=1):
        for position, handle in enumerate(handles[1:], start=1):
            await shows(handle, f"#{position} in line")
        for count, prompt in enumerate(prompts, start=1):
            await wait_for_submits(world, count)
            world.pixazo.finish(request_id_of(world, prompt))
        for handle in handles:
            await world.result_of(handle)
        await states(world, dict.fromkeys(prompts, "completed"))

    assert submitted_prompts(world) == prompts
    assert [r.status for r in submits(world)[refused_before:]] == [202] * 4
    assert len(world.pixazo.jobs) == 4


# --------------------------------------------------------------------------- the wallet

PROBE = 0.4  # seconds between two probes of a paused gateway


async def test_an_empty_wallet_pauses_every_job_tells_admins_once_and_resumes(
    world: World,
) -> None:
    world.pixazo.set_balance(0)
    people = [world.guild.member, world.guild.admin, world.guild.member, world.guild.owner]
    prompts = ["wallet one", "wallet two", "wallet three", "wallet four"]
    async with world.bot(BREAKER_PROBE_SECONDS=PROBE):
        log_channel = await use_log_channel(world)
        first = await launch(world, prompts[0], user=people[0])
        await eventually(lambda: submits(world), what="the first submit")
        await eventually(lambda: channel_texts(world, log_channel), what="the admin notice")
        handles = [first] + [
            await launch(world, p, user=u) for p, u in zip(prompts[1:], people[1:], strict=True)
        ]
        paused = [(await shows(h, "Paused", "balance is empty")).content for h in handles]
        # Two probes come and go while the wallet is still empty.
        await eventually(lambda: len(submits(world)) >= 3, 3 * PROBE + 2, "two probes")
        assert nothing_accepted(world)

        world.pixazo.set_balance(10)  # an admin topped the wallet up
        results = [await world.result_of(h) for h in handles]
        await states(world, dict.fromkeys(prompts, "completed"))

    statuses = [r.status for r in submits(world)]
    refused = [r for r in submits(world) if r.status == 402]
    assert statuses == [402] * len(refused) + [202] * 4
    # After the first refusal only probes: one job at a time, spaced by the probe delay.
    gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(refused)]
    assert all(gap >= PROBE * 0.9 for gap in gaps), gaps
    first_accepted = submits(world)[len(refused)]
    assert first_accepted.time - refused[-1].time >= PROBE * 0.9
    assert sorted(submitted_prompts(world)) == sorted(prompts)
    assert world.pixazo.balance == 6

    notices = channel_texts(world, log_channel)
    assert len(notices) == 1, notices
    assert "balance is empty" in notices[0] and "paused" in notices[0]
    for prompt, shown in zip(prompts, paused, strict=True):
        assert "Ask a server admin to top it up" in shown and "continues on its own" in shown
        assert prompt in shown
    assert all(r.files and r.files[0].startswith(b"\x89PNG") for r in results)


async def test_a_refused_key_pauses_every_job_tells_admins_once_and_resumes(
    world: World,
) -> None:
    right_key, wrong_key = world.pixazo.api_key, "revoked-key-0451-do-not-show"
    world.pixazo.api_key = wrong_key  # the key the bot has was revoked at Pixazo
    async with world.bot(BREAKER_PROBE_SECONDS=PROBE, PIXAZO_API_KEY=right_key):
        log_channel = await use_log_channel(world)
        first = await launch(world, "key one")
        await eventually(lambda: channel_texts(world, log_channel), what="the admin notice")
        second = await launch(world, "key two", user=world.guild.admin)
        paused = [
            (await shows(h, "Paused", "refused this bot's key")).content for h in (first, second)
        ]
        await eventually(lambda: len(submits(world)) >= 2, 3 * PROBE + 2, "a probe")

        world.pixazo.api_key = right_key  # the admin fixed the key
        results = [await world.result_of(h, timeout=4 * PROBE + 3) for h in (first, second)]
        await states(world, {"key one": "completed", "key two": "completed"})

    statuses = [r.status for r in submits(world)]
    assert statuses[-2:] == [202, 202] and set(statuses[:-2]) == {401}
    notices = channel_texts(world, log_channel)
    assert len(notices) == 1, notices  # one notice, not one per job
    assert "refused the API key" in notices[0]
    assert all("continues on its own" in text for text in paused)
    assert all(r.files[0].startswith(b"\x89PNG") for r in results)
    for message in bot_messages(world.discord):
        for text in texts_of(message):
            assert right_key not in text and wrong_key not in text


def nothing_accepted(world: World) -> bool:
    """No submit was accepted (every one was refused for the balance)."""
    return all(r.status == 402 for r in submits(world))


async def test_a_probe_that_fails_for_good_does_not_stop_the_next_probes(world: World) -> None:
    world.pixazo.set_balance(0)
    async with world.bot(BREAKER_PROBE_SECONDS=PROBE):
        doomed = await launch(world, "probe fails")
        await eventually(lambda: submits(world), what="the first submit")
        waiting = await launch(world, "probe waits", user=world.guild.admin)
        await shows(waiting, "Paused")
        world.pixazo.fail_next("submit", status=500)  # the probe meets a real server error
        failed_text = (await shows(doomed, "did not confirm")).content
        await states(world, {"probe fails": "interrupted"})  # maybe charged: never re-sent

        world.pixazo.set_balance(10)
        await world.result_of(waiting, timeout=4 * PROBE + 3)

    assert [r.status for r in submits(world)][:2] == [402, 500]
    assert submits(world)[-1].status == 202
    assert submitted_prompts(world) == ["probe waits"]
    assert "Paused" not in failed_text and "probe fails" in failed_text
    assert failed_text.count("\n") == 1  # the failure and the prompt, nothing raw


# --------------------------------------------------------------------------- outages, 429


async def five_uncertain_jobs(world: World, status: int) -> list[InteractionHandle]:
    """Five jobs whose submits meet a 5xx: each may have been charged, so each ends
    interrupted (with Retry) and none is sent again; five in a row open the breaker."""
    world.pixazo.fail_next(
        "submit", status=status, text="<html>Service Unavailable</html>", times=5
    )
    people = [world.discord.add_member(world.guild, f"member-{i}") for i in range(5)]
    handles = []
    for index, person in enumerate(people):
        handle = await launch(world, f"outage {index}", user=person)
        await shows(handle, "did not confirm")
        handles.append(handle)
    return handles


async def test_a_streak_of_5xx_pauses_submissions_as_an_outage_and_recovers(
    world: World,
) -> None:
    async with world.bot(BREAKER_PROBE_SECONDS=PROBE):
        log_channel = await use_log_channel(world)
        failed = await five_uncertain_jobs(world, 503)
        await eventually(lambda: channel_texts(world, log_channel), what="the admin notice")
        waiting = await launch(world, "after the outage", user=world.guild.admin)
        paused = (await shows(waiting, "Paused", "failing")).content
        await world.result_of(waiting, timeout=4 * PROBE + 3)
        await states(world, {f"outage {i}": "interrupted" for i in range(5)})

    statuses = [r.status for r in submits(world)]
    assert statuses == [503] * 5 + [202]  # no failed submit was ever sent again
    times = [r.time for r in submits(world)]
    assert times[5] - times[4] >= PROBE * 0.9  # the breaker held the next one back
    assert submitted_prompts(world) == ["after the outage"]
    notices = channel_texts(world, log_channel)
    assert len(notices) == 1 and "keeps failing" in notices[0], notices
    assert "continues on its own" in paused and "after the outage" in paused
    for handle in failed:
        message = handle.original
        assert message is not None and message.custom_ids[0].startswith("krea:retry:")
        assert "<html>" not in message.content


async def test_an_outage_ending_on_an_empty_wallet_tells_the_admins_why(world: World) -> None:
    async with world.bot(BREAKER_PROBE_SECONDS=PROBE):
        log_channel = await use_log_channel(world)
        await five_uncertain_jobs(world, 502)
        handle = await launch(world, "unlucky job", user=world.guild.admin)
        await shows(handle, "Paused", "failing")
        world.pixazo.set_balance(0)  # the gateway is back, but the wallet ran dry
        await shows(handle, "Paused", "balance is empty", timeout=PROBE + 3)
        await eventually(lambda: len(channel_texts(world, log_channel)) == 2, what="2 notices")
        world.pixazo.set_balance(1)
        await world.result_of(handle, timeout=2 * PROBE + 3)

    outage, balance = channel_texts(world, log_channel)
    assert "keeps failing" in outage and "balance is empty" in balance
    assert [r.status for r in submits(world)][:6] == [502] * 5 + [402]
    assert submits(world)[-1].status == 202


async def test_a_429_on_a_poll_holds_back_every_poll_and_submit_for_its_retry_after(
    world: World,
) -> None:
    world.pixazo.manual = True
    async with world.bot():
        polling = await launch(world, "polled job")
        await wait_for_submits(world, 1)
        await world.pixazo.wait_for_status_calls(2)
        world.pixazo.fail_next("status", status=429, headers={"Retry-After": "0.8"})
        limited = await eventually(
            lambda: [r for r in world.pixazo.status_calls() if r.status == 429], what="a 429"
        )
        later = await launch(world, "submitted during the pause", user=world.guild.admin)
        await wait_for_submits(world, 2)
        await world.pixazo.wait_for(
            lambda: [r for r in world.pixazo.status_calls() if r.time > limited[0].time],
            what="a poll after the 429",
        )
        for prompt in ("polled job", "submitted during the pause"):
            world.pixazo.finish(request_id_of(world, prompt))
        await world.result_of(polling)
        await world.result_of(later)

    t429 = limited[0].time
    after = [r.time - t429 for r in world.pixazo.requests if r.time > t429 and r.kind != "media"]
    assert after and min(after) >= 0.8 * 0.95, after  # nobody called the gateway meanwhile
    second_submit = [r for r in submits(world) if r.body["prompt"] == "submitted during the pause"]
    assert second_submit[0].time - t429 >= 0.8 * 0.95


async def test_a_429_on_a_submit_holds_back_the_polls_of_other_jobs(world: World) -> None:
    world.pixazo.manual = True
    async with world.bot():
        polling = await launch(world, "busy polling")
        await wait_for_submits(world, 1)
        await world.pixazo.wait_for_status_calls(2)
        world.pixazo.fail_next("submit", status=429, headers={"Retry-After": "0.6"})
        later = await launch(world, "limited submit", user=world.guild.admin)
        await wait_for_submits(world, 2)
        for prompt in ("busy polling", "limited submit"):
            world.pixazo.finish(request_id_of(world, prompt))
        await world.result_of(polling)
        await world.result_of(later)

    (limited,) = [r for r in submits(world) if r.status == 429]
    after = [r for r in world.pixazo.requests if r.time > limited.time and r.kind != "media"]
    assert min(r.time for r in after) - limited.time >= 0.6 * 0.95, after
    assert [r.status for r in submits(world)] == [202, 429, 202]


# --------------------------------------------------------------------------- moderation


async def admin_says(world: World, name: str, options: dict[str, Any]) -> str:
    """Run a /settings command as the admin; return its ephemeral reply."""
    handle = await world.discord.slash(name, options, user=world.guild.admin)
    await handle.wait_for_response()
    assert handle.ephemeral, reply_text(handle)
    return reply_text(handle)


async def test_a_blocked_prompt_is_refused_privately_and_never_submitted(world: World) -> None:
    async with world.bot():
        added = await admin_says(world, "settings blocklist add", {"entry": "Blood Moon"})
        added_re = await admin_says(world, "settings blocklist add", {"entry": r"re:n[s5]fw"})
        # RE2 matches in linear time, so this pattern is harmless; look-ahead RE2 cannot run.
        linear = await admin_says(world, "settings blocklist add", {"entry": "re:(a+)+$"})
        lookahead = await admin_says(world, "settings blocklist add", {"entry": "re:x(?=y)"})
        everything = await admin_says(world, "settings blocklist add", {"entry": "re:(x)?"})
        listed = await admin_says(world, "settings blocklist list", {})
        by_member = await world.discord.slash("settings blocklist add", {"entry": "lake"})
        await by_member.wait_for_response()

        refusals = {}
        for prompt in ("a BLOOD   moon over the sea", "an N5FW poster"):
            handle = await imagine(world, prompt)
            refusals[prompt] = (await refusal(handle), is_ephemeral_reply(handle))
        allowed = await world.result_of(await launch(world, "a bloodmoon cocktail"))

        calm = await world.result_of(await launch(world, "a calm lake"))
        await admin_says(world, "settings blocklist add", {"entry": "lake"})
        regen = await world.discord.click(calm, calm.custom_id_matching("krea:regen:"))
        regen_refusal = await refusal(regen)

    assert added.startswith("✅") and "blood moon" in added
    assert added_re.startswith("✅")
    assert linear.startswith("✅")
    assert (
        lookahead.startswith("❌") and "look-ahead" in lookahead and "Nothing changed" in lookahead
    )
    assert everything.startswith("❌") and "every prompt" in everything
    assert listed == r"Blocked: `blood moon`, `re:n[s5]fw`, `re:(a+)+$`"
    assert "Manage Server" in reply_text(by_member)
    for prompt, (text, private) in refusals.items():
        assert private, prompt
        assert "does not allow" in text and "Nothing was sent" in text
        assert prompt not in text
        assert not any(prompt in public for public in public_texts(world))
    assert "does not allow" in regen_refusal and is_ephemeral_reply(regen)
    assert submitted_prompts(world, None) == ["a bloodmoon cocktail", "a calm lake"]
    assert allowed.files
    assert set(rows_by_prompt(world)) == {"a bloodmoon cocktail", "a calm lake"}


# --------------------------------------------------------------------------- giving up


@pytest.mark.parametrize(
    ("trouble", "wording"),
    [("balance", "balance is empty**, so nothing was generated"), ("outage", "unreachable")],
)
async def test_a_paused_job_gives_up_after_the_give_up_time_and_is_not_counted(
    world: World, trouble: str, wording: str
) -> None:
    if trouble == "balance":
        world.pixazo.set_balance(0)
    settings = {"BREAKER_PROBE_SECONDS": 600, "QUEUE_GIVE_UP_SECONDS": 3600}
    async with world.bot(MEMBER_DAILY_IMAGES=1, **settings):
        if trouble == "outage":
            await five_uncertain_jobs(world, 502)  # other members' jobs open the breaker
        handle = await launch(world, "patient job")
        await shows(handle, "Paused")
        world.advance(3601)
        failed = await shows(handle, wording)
        await states(world, {"patient job": "failed"})
        # Never sent, so not counted against the member's one image a day.
        await shows(await launch(world, "next one"), "Paused")

    assert wording in failed.content and "patient job" in failed.content
    assert failed.custom_ids == [f"krea:retry:{rows_by_prompt(world)['patient job']['id']}"]
    row = rows_by_prompt(world)["patient job"]
    assert row["request_id"] is None and row["error_kind"] == (
        "balance" if trouble == "balance" else "gateway_down"
    )
    assert "patient job" not in submitted_prompts(world)


async def test_a_server_can_lower_the_jobs_a_member_has_in_flight(world: World) -> None:
    world.pixazo.manual = True
    async with world.bot(MEMBER_MAX_IN_FLIGHT=2):
        handle = await world.discord.slash(
            "settings limits", {"member_in_flight": 1}, user=world.guild.admin
        )
        await handle.wait_for_response()
        first = await launch(world, "one at a time")
        await wait_for_submits(world, 1)
        second = await launch(world, "after the first")
        others = await launch(world, "another member's", user=world.guild.owner)
        await wait_for_submits(world, 2)
        await states(world, {"after the first": "pending"})
        assert submitted_prompts(world) == ["one at a time", "another member's"]

        world.pixazo.finish(request_id_of(world, "one at a time"))
        await wait_for_submits(world, 3)
        for prompt in ("after the first", "another member's"):
            world.pixazo.finish(request_id_of(world, prompt))
        for done in (first, second, others):
            await world.result_of(done)

    assert "1 image(s) per member at once" in reply_text(handle)
    assert submitted_prompts(world)[2] == "after the first"
