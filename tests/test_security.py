"""The attempts a stranger, a race or a bad day would make on the server's money and on
other members, each shown to fail harmlessly. SECURITY.md lists each protection and points
at its test here (or in the module named there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.errors import UserError
from bot.job_service import Origin
from bot.pixazo import DownloadRejected, PixazoClient, UnexpectedResponse, build_request
from bot.pixazo.safety import PrivateAddress, PublicOnlyResolver, is_public
from bot.webhooks import webhook_url
from tests.bot.images import bomb_png
from tests.fake_discord import Upload
from tests.support.checks import job_rows
from tests.support.fair_use import shows, submitted_prompts
from tests.support.postgres import end_to_end_backend
from tests.support.scenes import (
    finished,
    forge,
    imagine_result,
    is_ephemeral_reply,
    press,
    private_reply,
)
from tests.support.world import World

PROMPT = "a paper crane on a windowsill"


def gather(*calls: Any) -> Any:
    return asyncio.gather(*calls)


# --------------------------------------------------------------------------- caps under races


async def test_ten_commands_at_once_with_three_images_left_make_three_jobs(world: World) -> None:
    async with world.bot(MEMBER_DAILY_IMAGES=3):
        handles = await gather(
            *(world.discord.slash("imagine", {"prompt": f"{PROMPT} {i}"}) for i in range(10))
        )
        await gather(*(h.wait_until_done() for h in handles))
    assert len(job_rows(world.db_path)) == 3
    refused = [h for h in handles if "you have used" in (private_reply(h) or "")]
    assert len(refused) == 7 and all(is_ephemeral_reply(h) for h in refused)


async def test_ten_presses_at_once_cannot_beat_the_member_cap(world: World) -> None:
    async with world.bot(MEMBER_DAILY_IMAGES=3) as bot:
        _, result = await imagine_result(world, prompt=PROMPT, seed=1)
        await finished(bot)
        presses = await gather(*(world.discord.click(result, "krea:regen:1") for _ in range(10)))
        await gather(*(p.wait_until_done() for p in presses))
    assert len(job_rows(world.db_path)) == 3  # the first image and two regenerations


async def test_many_members_at_once_cannot_beat_the_server_cap(world: World) -> None:
    people = [world.discord.add_member(world.guild, f"m{i}") for i in range(6)]
    async with world.bot(SERVER_DAILY_IMAGES=5):
        handles = await gather(
            *(
                world.discord.slash("imagine", {"prompt": f"{PROMPT} {i}", "count": 2}, user=p)
                for i, p in enumerate(people)
            )
        )
        await gather(*(h.wait_until_done() for h in handles))
    rows = job_rows(world.db_path)
    assert len(rows) == 4  # two batches of two; a third would pass five
    assert sum(1 for h in handles if "this server has used" in (private_reply(h) or "")) == 4


async def test_a_reframe_to_more_ratios_than_images_left_is_refused_whole(world: World) -> None:
    async with world.bot(MEMBER_DAILY_IMAGES=3):
        _, result = await imagine_result(world, prompt=PROMPT, seed=1)
        select = await press(world, result, "krea:reframe:1", values=["16:9", "9:16", "4:3"])
        await select.wait_until_done()
    assert "you have used 1 of your 3" in (private_reply(select) or "")
    assert len(job_rows(world.db_path)) == 1


# --------------------------------------------------------------------------- Retry


async def test_retry_pressed_five_times_by_two_members_makes_one_new_job(world: World) -> None:
    other = world.discord.add_member(world.guild, "other")
    world.pixazo.fail_next("submit", status=500)  # maybe charged: the member decides
    async with world.bot() as bot:
        handle = await world.imagine(prompt=PROMPT, seed=3)
        failed = await shows(handle, "did not confirm")
        await finished(bot)
        presses = await gather(
            *(
                world.discord.click(failed, "krea:retry:1", user=user)
                for user in (world.guild.member, other) * 2 + (other,)
            )
        )
        await gather(*(p.wait_until_done() for p in presses))
        await finished(bot)

    assert [r.status for r in world.pixazo.submits()] == [500, 202]  # one retry, one payment
    assert len(job_rows(world.db_path)) == 2
    refused = [p for p in presses if "already retried" in (private_reply(p) or "")]
    assert len(refused) == 4
    retry = next(c for c in failed.components[0]["components"] if "retry" in c["custom_id"])
    assert retry["disabled"] is True  # the button disabled itself


async def test_retry_of_a_job_the_gateway_took_polls_it_again_instead_of_paying(
    world: World,
) -> None:
    world.pixazo.manual = True  # generating until the test ends it
    async with world.bot(JOB_TIMEOUT_SECONDS=0.5) as bot:
        handle = await world.imagine(prompt=PROMPT, seed=4)
        failed = await shows(handle, "took too long")
        await finished(bot)
        (request_id,) = world.pixazo.jobs
        world.pixazo.finish(request_id)  # the image was made after all

        click = await press(world, failed, "krea:retry:1")
        await click.wait_until_done()
        result = await handle.wait_for_original(lambda m: bool(m.attachments), timeout=10.0)
        await finished(bot)

    assert len(world.pixazo.submits()) == 1  # nothing paid twice
    assert "Nothing new is paid" in (private_reply(click) or "")
    assert result.attachments[0].data.startswith(b"\x89PNG")
    (row,) = job_rows(world.db_path)
    assert row["state"] == "completed" and row["request_id"] == request_id


# --------------------------------------------------------------------------- reactions


async def test_a_regenerate_reaction_taken_off_and_on_is_not_a_free_loop(world: World) -> None:
    other = world.discord.add_member(world.guild, "other")
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt=PROMPT, seed=5)
        await finished(bot)
        for _ in range(4):
            await world.discord.react(result, "🔁", other)
            await world.discord.unreact(result, "🔁", other)
        await world.discord.wait_for(lambda: len(job_rows(world.db_path)) >= 2, 5.0)
        await asyncio.sleep(0.5)
        await finished(bot)
    assert len(job_rows(world.db_path)) == 2  # one regeneration per cooldown


# --------------------------------------------------------------------------- orphans


async def test_a_job_that_could_not_be_announced_is_cancelled_and_never_sent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.delivery import DiscordDelivery

    def broken(self: DiscordDelivery, interaction: Any) -> Any:
        async def announce(jobs: Any, first: bool) -> int:
            raise RuntimeError("Discord said no")

        return announce

    with monkeypatch.context() as patched:
        patched.setattr(DiscordDelivery, "announcer", broken)
        async with world.bot():
            handle = await world.imagine(prompt=PROMPT)
            await handle.wait_until_done()
    async with world.bot() as bot:  # a restart resumes nothing
        await asyncio.sleep(0.3)
        await finished(bot)

    (row,) = job_rows(world.db_path)
    assert row["state"] == "cancelled" and row["error_kind"] == "unannounced"
    assert world.pixazo.submits() == []
    assert "Something went wrong" in (private_reply(handle) or "")


# --------------------------------------------------------------------------- one server, others


async def test_a_catastrophic_pattern_does_not_delay_another_servers_commands(
    world: World,
) -> None:
    other = world.discord.add_guild("Other")
    async with world.bot():
        for entry in (r"re:(?:a|a)*b", r"re:\w*\w*\w*\w*\w*y"):
            added = await world.discord.slash(
                "settings blocklist add", {"entry": entry}, user=world.guild.admin
            )
            await added.wait_for_response()
        hostile = world.discord.slash("imagine", {"prompt": "a" * 40 + "!"})
        started = time.monotonic()
        elsewhere = await world.discord.slash("imagine", {"prompt": PROMPT}, guild=other)
        await elsewhere.wait_for_response()
        waited = time.monotonic() - started
        first = await hostile
        await first.wait_for_response()
        await world.result_of(elsewhere)
    # Acknowledged within Discord's 3 s (the fake refuses later answers); the figure itself
    # is measured by bench/blocklist.py.
    assert elsewhere.response is not None and waited < 3.0
    assert first.response is not None


async def test_a_decompression_bomb_is_refused_from_its_header(world: World) -> None:
    bomb = Upload("cute.png", bomb_png(), "image/png")
    async with world.bot():
        handle = await world.imagine(prompt=PROMPT, reference=bomb)
        await handle.wait_until_done()
    text = private_reply(handle) or ""
    assert "`reference` is 13000x13000 pixels" in text and "Nothing was sent" in text
    assert world.pixazo.requests == [] and job_rows(world.db_path) == []


# --------------------------------------------------------------------------- members' boundaries


async def test_a_result_cannot_be_reached_from_another_channel(world: World) -> None:
    elsewhere = world.discord.add_channel(world.guild, "elsewhere")
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt="a secret prompt", seed=6)
        await finished(bot)
        bait = await world.discord.post_message(elsewhere, "hi", author=world.guild.member)
        bait.components = result.components
        answers = [
            await press(world, bait, custom_id)
            for custom_id in ("krea:regen:1", "krea:vary:subtle:1", "krea:remix:1", "krea:delete:1")
        ]
    assert all("no longer available" in (private_reply(a) or "") for a in answers)
    assert all(a.modal is None for a in answers)  # the prompt was never shown there
    assert not result.deleted and len(world.pixazo.submits()) == 1
    assert not any("secret prompt" in m.content for m in world.discord.messages(elsewhere))


async def test_delete_removes_only_a_message_of_its_own_job(world: World) -> None:
    async with world.bot() as bot:
        _, first = await imagine_result(world, prompt="first", seed=1)
        _, second = await imagine_result(world, prompt="second", seed=2)
        await finished(bot)
        forge(second, "krea:delete:2", "krea:delete:1")  # job 1's Delete on job 2's message
        click = await press(world, second, "krea:delete:1")
    assert "no longer available" in (private_reply(click) or "")
    assert not first.deleted and not second.deleted


async def test_a_dm_cannot_reach_a_servers_job(world: World) -> None:
    from bot.job_service import JobService

    async with world.bot() as bot:
        await imagine_result(world, prompt=PROMPT, seed=7)
        await finished(bot)
        service: JobService = bot.services.job_service
        dm = Origin(guild_id=None, channel_id=world.guild.channel.id, user_id=world.guild.member.id)
        with pytest.raises(UserError, match="no longer available"):
            await service.load(1, dm)


async def test_a_prompt_cannot_make_the_result_lie(world: World) -> None:
    prompt = "[Free Nitro](https://evil.example/claim) **official** <@123456789012345678> # hi"
    async with world.bot():
        _, result = await imagine_result(world, prompt=prompt, seed=8)
    description = result.embeds[0]["description"]
    for text in (description, result.content, *(r.content for r in result.history)):
        assert "[Free Nitro](https" not in text and "**official**" not in text
        assert "<@123456789012345678>" not in text
    assert "Free Nitro" in description  # still shown, as plain text
    assert not result.pinged_user_ids


# --------------------------------------------------------------------------- the database


async def fill_up(connection: Any) -> None:
    """Make the database file unable to grow (as on a full disk), then use up the room left
    in it, in the jobs table itself (rows of a server nobody is in)."""
    import sqlite3

    row = await (await connection.execute("PRAGMA page_count")).fetchone()
    await connection.execute(f"PRAGMA max_page_count={row[0] + 2}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for size in [2000] * 10_000:
            await connection.execute(
                "INSERT INTO jobs (guild_id, channel_id, user_id, state, params, created_at,"
                " updated_at) VALUES (0, 0, 0, 'cancelled', ?, 0, 0)",
                ("x" * size,),
            )
    for size in (500, 100):  # the crumbs
        with contextlib.suppress(sqlite3.OperationalError):
            for _ in range(100):
                await connection.execute(
                    "INSERT INTO jobs (guild_id, channel_id, user_id, state, params, created_at,"
                    " updated_at) VALUES (0, 0, 0, 'cancelled', ?, 0, 0)",
                    ("x" * size,),
                )


@pytest.mark.skipif(
    end_to_end_backend() != "sqlite", reason="fills the SQLite file the bot writes to"
)
async def test_a_full_disk_is_told_plainly_and_the_bot_recovers(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with world.bot() as bot:
        await imagine_result(world, prompt="before", seed=1)
        await finished(bot)
        connection = bot.services.db.connection
        await fill_up(connection)  # the disk is full now
        full = await world.imagine(prompt="during")
        await full.wait_until_done()
        await connection.execute("DELETE FROM jobs WHERE guild_id = 0")
        await connection.execute("PRAGMA max_page_count=1073741823")  # room again
        _, after = await imagine_result(world, prompt="after", seed=2)

    text = private_reply(full) or ""
    assert "cannot save your request right now" in text and "full" in text
    assert "Nothing was sent" in text and "Traceback" not in text
    assert submitted_prompts(world) == ["before", "after"]
    assert after.attachments
    assert any("database is full" in r.getMessage() for r in caplog.records)


def test_an_unreadable_database_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    from tests.test_main import clean_env

    broken = tmp_path / "kreabot.sqlite3"
    broken.write_bytes(b"this is not a database " * 100)
    result = subprocess.run(
        [sys.executable, "-m", "bot", "run"],
        cwd=tmp_path,
        env=clean_env(DISCORD_TOKEN="MTAx.a.b", PIXAZO_API_KEY="key", DATABASE_PATH=str(broken)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot be opened (file is not a database)" in result.stderr
    assert "DATABASE_PATH" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the network


async def serve(routes: list[tuple[str, str, Any]]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_submit_and_status_follow_no_redirect_so_the_key_stays_home() -> None:
    stolen: list[web.Request] = []

    async def thief(request: web.Request) -> web.Response:
        stolen.append(request)
        return web.json_response({"request_id": "r"})

    elsewhere, elsewhere_url = await serve([("*", "/{tail:.*}", thief)])

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(elsewhere_url + request.path)

    gateway, gateway_url = await serve([("*", "/{tail:.*}", redirect)])
    try:
        async with aiohttp.ClientSession() as session:
            client = PixazoClient(session, "the-key", base_url=gateway_url)
            with pytest.raises(UnexpectedResponse, match="redirect"):
                await client.submit(build_request(prompt="p"))
            with pytest.raises(UnexpectedResponse, match="redirect"):
                await client.status("r")
    finally:
        await gateway.cleanup()
        await elsewhere.cleanup()
    assert stolen == []


async def test_media_redirects_are_checked_hop_by_hop() -> None:
    async def to_plain_http(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://203.0.113.9/image.png")  # a public host, but not https

    async def loop(request: web.Request) -> web.Response:
        hop = int(request.query.get("hop", "0"))
        raise web.HTTPFound(f"/loop?hop={hop + 1}")

    gateway, url = await serve([("GET", "/plain", to_plain_http), ("GET", "/loop", loop)])
    try:
        async with aiohttp.ClientSession() as session:
            client = PixazoClient(session, "k", base_url=url)
            with pytest.raises(DownloadRejected, match="non-https"):
                await client.download(url + "/plain")
            with pytest.raises(DownloadRejected, match="redirected more than"):
                await client.download(url + "/loop")
            await client.close()
    finally:
        await gateway.cleanup()


async def test_untrusted_hosts_must_resolve_to_public_addresses() -> None:
    assert not any(is_public(a) for a in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1"))
    assert not is_public("::ffff:192.168.0.1")
    assert is_public("93.184.216.34")
    with pytest.raises(PrivateAddress):
        await PublicOnlyResolver().resolve("localhost", 443)


async def test_forged_webhooks_from_one_address_are_throttled_and_logged_sparingly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.bot.test_web import SECRET, free_port, webhook_mode

    port = free_port()
    caplog.set_level(logging.WARNING, logger="bot.web")
    world.pixazo.manual = True
    async with world.bot(**webhook_mode(port)) as bot:
        handle = await world.imagine(prompt=PROMPT, seed=9)
        (job,) = await world.pixazo.wait_for_jobs(1)
        base = f"http://127.0.0.1:{port}"
        statuses = []
        async with aiohttp.ClientSession() as session:
            for attempt in range(40):
                async with session.post(f"{base}/webhooks/pixazo/1/{'0' * 39}{attempt % 10}") as r:
                    statuses.append(r.status)
        world.pixazo.finish(job.request_id)
        genuine = webhook_url(base, SECRET, 1)
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # Pixazo: another address
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(genuine) as response:
                accepted = response.status
        await handle.wait_for_original(lambda m: bool(m.attachments), timeout=10.0)
        webhooks = dict(bot.services.metrics.webhooks)

    assert statuses[:20] == [404] * 20 and set(statuses[20:]) == {429}
    assert accepted == 200 and webhooks["woke"] == 1
    refused_lines = [r for r in caplog.records if "bad token" in r.getMessage()]
    assert len(refused_lines) <= 5  # sampled, not one line per forged call


# --------------------------------------------------------------------------- bounded memory


async def test_nothing_keyed_by_a_job_outlives_it(world: World) -> None:
    async with world.bot() as bot:
        for index in range(3):
            await imagine_result(world, prompt=f"{PROMPT} {index}", count=2 if index else 1)
        await finished(bot)
        runner, delivery = bot.services.runner, bot.services.delivery
        assert runner.running() == 0
        assert not runner._jobs and not runner._wakes and not runner._gateway_done
        assert not runner.admission._waiting and not runner.admission._in_flight
        assert not runner.admission._per_member
        assert not delivery._held and not delivery._batch_locks
        assert len(delivery._edits) == 0
    assert {r["state"] for r in job_rows(world.db_path)} == {"completed"}
