"""Several real bot processes (``python -m bot run``) sharing one PostgreSQL database and the
shards of one fake Discord, against one fake gateway: a process killed with jobs in flight,
an empty wallet seen by every process, commands seen by two processes at once, and a
webhook reaching a process that does not run the job.

Every process is a real subprocess (``tests.support.bot_process``) with its own
``CLUSTER_INDEX`` or ``SHARD_IDS``; SIGKILL runs no shutdown code, as when a host dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fake_pixazo import FakePixazo
from tests.fake_discord import FakeDiscord, FakeGuild, InteractionHandle
from tests.support.bot_process import BotProcess
from tests.support.checks import assert_no_traceback, bot_messages, eventually, job_rows
from tests.support.scenes import private_reply
from tests.support.stage import STARTUP_TIMEOUT, images_posted

#: A short lease, so that a killed process's jobs are taken within seconds.
LEASE = 3.0
#: What "within the lease plus a few seconds" allows on a loaded 2-core machine.
TAKEOVER_SLACK = 6.0


def guilds_on_shards(fake: FakeDiscord, shards: int, per_shard: int) -> list[FakeGuild]:
    """Exactly ``per_shard`` servers on each shard (``(guild_id >> 22) % shards``); ids
    differ in their timestamp, so the fake's clock moves a millisecond between guilds."""
    guilds: list[FakeGuild] = []

    def on(shard: int) -> int:
        return sum(1 for g in guilds if (g.id >> 22) % shards == shard)

    while any(on(s) < per_shard for s in range(shards)):
        fake.advance(0.001)
        guild = fake.add_guild(f"server {len(guilds)}")
        if on((guild.id >> 22) % shards) >= per_shard:
            del fake.guilds[guild.id]
        else:
            guilds.append(guild)
    return guilds


def shard_of(guild: FakeGuild, shards: int) -> int:
    return (guild.id >> 22) % shards


@dataclass
class Cluster:
    """Both fakes, the PostgreSQL database and the bot processes started so far."""

    discord: FakeDiscord
    pixazo: FakePixazo
    database: str
    tmp_path: Path
    processes: list[BotProcess]

    async def start(self, shards: int = 1, **settings: str) -> BotProcess:
        """A bot process; returns once its ``shards`` gateway connections are ready."""
        ready = sum(1 for c in self.discord.connections if c.ready)
        number = len(self.processes) + 1
        process = await BotProcess.start(
            self.discord,
            self.pixazo,
            self.database,
            self.tmp_path / f"bot-{number}.log",
            args=["run"],
            cwd=self.tmp_path,
            LEASE_SECONDS=str(LEASE),
            **settings,
        )
        self.processes.append(process)
        try:
            await self.discord.wait_for(
                lambda: (
                    sum(1 for c in self.discord.connections if c.ready) >= ready + shards
                    or not process.running()
                ),
                STARTUP_TIMEOUT,
                what=f"bot process {number} to connect",
            )
        except TimeoutError:
            raise AssertionError(f"bot {number} did not connect:\n{process.log()}") from None
        assert process.running(), f"bot {number} exited:\n{process.log()}"
        return process

    async def synced(self, guild: FakeGuild) -> None:
        """Wait until the slash commands are registered (one process syncs them)."""
        await self.discord.wait_for(
            lambda: self.discord.command("imagine", guild) is not None,
            STARTUP_TIMEOUT,
            what="the commands to be synced",
        )

    async def imagine(self, guild: FakeGuild, prompt: str, **options: Any) -> InteractionHandle:
        handle = await self.discord.slash(
            "imagine", {"prompt": prompt, "seed": 5, **options}, guild=guild, user=guild.member
        )
        await handle.wait_for_response(timeout=10.0)
        return handle

    def rows(self) -> list[dict[str, Any]]:
        return job_rows(self.database)

    def owners(self) -> dict[str, str]:
        """Prompt -> the owner id in its row."""
        return {r["params"]["prompt"]: r["owner"] for r in self.rows()}

    def logs(self) -> str:
        return "\n".join(f"--- bot {i + 1}\n{p.log()}" for i, p in enumerate(self.processes))


@contextlib.asynccontextmanager
async def cluster_of(
    tmp_path: Path, postgres_url: str, **discord_options: Any
) -> AsyncIterator[Cluster]:
    async with (
        FakePixazo(queued_seconds=0.02, processing_seconds=0.1, long_edge=256) as pixazo,
        FakeDiscord(**discord_options) as discord_fake,
    ):
        created = Cluster(discord_fake, pixazo, postgres_url, tmp_path, [])
        try:
            yield created
        finally:
            for process in created.processes:
                with contextlib.suppress(ProcessLookupError, TimeoutError):
                    await process.kill()
            print(created.logs())  # shown by pytest when the test failed


def of_process(owner: str | None, process: BotProcess) -> bool:
    """Whether an owner id names this process (``host:pid:random``)."""
    return owner is not None and owner.startswith(f"{socket.gethostname()[:40]}:{process.pid}:")


def cluster_settings(index: int, count: int, shards: int) -> dict[str, str]:
    return {"SHARD_COUNT": str(shards), "CLUSTER_COUNT": str(count), "CLUSTER_INDEX": str(index)}


async def test_a_killed_process_s_jobs_are_delivered_once_by_the_others(
    tmp_path: Path, postgres_url: str
) -> None:
    async with cluster_of(tmp_path, postgres_url, shards=3, max_concurrency=3) as cluster:
        guilds = guilds_on_shards(cluster.discord, shards=3, per_shard=2)  # six servers
        cluster.pixazo.manual = True  # every job stays PROCESSING until finished
        processes = [await cluster.start(**cluster_settings(i, 3, 3)) for i in range(3)]
        await cluster.synced(guilds[0])
        handles: dict[str, InteractionHandle] = {}
        for guild in guilds:
            for n in range(2):
                prompt = f"shard {shard_of(guild, 3)} server {guild.id} job {n}"
                handles[prompt] = await cluster.imagine(guild, prompt)
        accepted = await cluster.pixazo.wait_for_jobs(12, timeout=15.0)
        await eventually(
            lambda: all(r["state"] == "processing" for r in cluster.rows()) or None,
            10.0,
            "every job to be generating",
        )
        # Each job belongs to the process running its server's shard.
        owners = cluster.owners()
        for prompt, owner in owners.items():
            shard = int(prompt.split()[1])
            assert of_process(owner, processes[shard]), (prompt, owner)

        victim = processes[1]
        theirs = [p for p in handles if p.startswith("shard 1 ")]
        assert len(theirs) == 4
        killed_at = time.time()
        await victim.kill()
        for job in accepted:
            cluster.pixazo.finish(job.request_id)  # the images are ready, one process gone

        results = {
            prompt: await handle.wait_for_original(
                lambda m: bool(m.attachments), timeout=LEASE + TAKEOVER_SLACK + 4
            )
            for prompt, handle in handles.items()
        }
        await eventually(
            lambda: all(r["state"] == "completed" for r in cluster.rows()) or None,
            5.0,
            "every job to be completed",
        )

    rows = {r["params"]["prompt"]: r for r in cluster.rows()}
    # Each image posted once, in its own job's message; nothing submitted twice.
    posted = images_posted(cluster.discord)
    assert sorted(m.id for m in posted) == sorted(m.id for m in results.values())
    assert len(posted) == 12
    assert len(cluster.pixazo.submits()) == 12 and len(cluster.pixazo.jobs) == 12
    for prompt in theirs:
        row = rows[prompt]
        assert not of_process(row["owner"], victim)
        assert any(of_process(row["owner"], p) for p in (processes[0], processes[2]))
        assert row["result_message_id"] == results[prompt].id
        # Taken and delivered within the lease plus a few seconds of the kill.
        assert row["delivered_at"] - killed_at <= LEASE + TAKEOVER_SLACK, row
    took_over = [p.log().count("took over") for p in (processes[0], processes[2])]
    assert sum(took_over) >= 1
    assert_no_traceback(bot_messages(cluster.discord))


async def test_an_empty_wallet_gives_one_notice_across_every_process(
    tmp_path: Path, postgres_url: str
) -> None:
    async with cluster_of(tmp_path, postgres_url, shards=3, max_concurrency=3) as cluster:
        guilds = guilds_on_shards(cluster.discord, shards=3, per_shard=1)
        cluster.pixazo.set_balance(0)
        for i in range(3):
            await cluster.start(**cluster_settings(i, 3, 3), BREAKER_PROBE_SECONDS="1")
        await cluster.synced(guilds[0])
        logs = [cluster.discord.add_channel(guild, "kreabot-log") for guild in guilds]
        await asyncio.sleep(0.5)  # each process hears of its new channel (CHANNEL_CREATE)
        for guild, channel in zip(guilds, logs, strict=True):
            handle = await cluster.discord.slash(
                "settings logchannel set", {"channel": channel}, guild=guild, user=guild.admin
            )
            await handle.wait_for_response(timeout=10.0)
            assert "will report trouble" in str(private_reply(handle))
        # One job in each server, so each process meets the empty wallet.
        handles = await asyncio.gather(
            *(cluster.imagine(g, f"wallet {i}") for i, g in enumerate(guilds))
        )
        for handle in handles:
            await handle.wait_for_original(lambda m: "balance is empty" in m.content, timeout=10.0)
        await eventually(
            lambda: all(cluster.discord.messages(c) for c in logs) or None,
            10.0,
            "the pause notice in every log channel",
        )
        await asyncio.sleep(LEASE)  # a few heartbeats: no process says it again
        cluster.pixazo.set_balance(None)  # topped up: the next probe, anywhere, resumes all
        for handle in handles:
            await handle.wait_for_original(lambda m: bool(m.attachments), timeout=15.0)

    for channel in logs:
        texts = [m.content for m in cluster.discord.messages(channel)]
        assert len(texts) == 1 and "balance" in texts[0].lower(), texts
    accepted = [r for r in cluster.pixazo.submits() if r.status == 202]
    assert len(accepted) == 3  # each job sent once it could be taken


async def test_two_processes_on_one_shard_answer_each_command_once_within_the_cap(
    tmp_path: Path, postgres_url: str
) -> None:
    # A rolling restart: the new process connects to the shard before the old one stops,
    # and both receive every event.
    async with cluster_of(tmp_path, postgres_url) as cluster:
        guild = cluster.discord.add_guild()
        both = {"SHARD_COUNT": "1", "SHARD_IDS": "0", "MEMBER_DAILY_IMAGES": "3"}
        await cluster.start(**both)
        await cluster.start(**both)
        await cluster.synced(guild)

        handles = await asyncio.gather(
            *(
                cluster.discord.slash(
                    "imagine", {"prompt": f"capped {n}", "seed": n}, guild=guild, user=guild.member
                )
                for n in range(10)
            )
        )
        for handle in handles:
            await handle.wait_for_response(timeout=10.0)

        def outcome(handle: InteractionHandle) -> str | None:
            """ "image" once the result is in, the text of a private refusal, or None."""
            original = handle.original
            if original is not None and original.attachments and not original.deleted:
                return "image"
            return private_reply(handle)

        outcomes = [
            await eventually(lambda h=h: outcome(h), 15.0, "an image or a refusal")  # type: ignore[misc]
            for h in handles
        ]
        made = [o for o in outcomes if o == "image"]
        refusals = [o for o in outcomes if o != "image"]
        await asyncio.sleep(1.0)  # anything a second process would add

    assert len(job_rows(cluster.database)) == 3
    assert len(cluster.pixazo.submits()) == 3
    assert len(made) == 3 and len(refusals) == 7
    assert all("of your 3 images for today" in text for text in refusals), refusals
    # Each command was answered exactly once: one initial response, no error anywhere.
    for handle in handles:
        callbacks = [r for r in handle.requests if r.path.endswith("/callback")]
        assert len([r for r in callbacks if r.status < 300]) == 1
    assert_no_traceback(bot_messages(cluster.discord))
    assert "Something went wrong" not in " ".join(str(private_reply(h)) for h in handles)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_webhook_reaching_another_process_wakes_the_job_s_owner(
    tmp_path: Path, postgres_url: str
) -> None:
    async with cluster_of(tmp_path, postgres_url, shards=2, max_concurrency=2) as cluster:
        guilds = guilds_on_shards(cluster.discord, shards=2, per_shard=1)
        ports = [free_port(), free_port()]
        # The "load balancer" sends every callback to the first process.
        common = {
            "WEBHOOK_PUBLIC_URL": f"http://127.0.0.1:{ports[0]}",
            "WEBHOOK_SECRET": "a-webhook-secret-of-some-length",
            "WEBHOOK_SAFETY_POLL_SECONDS": "120",  # so only a webhook can finish it in time
            "HTTP_HOST": "127.0.0.1",
        }
        processes = [
            await cluster.start(**cluster_settings(i, 2, 2), HTTP_PORT=str(ports[i]), **common)
            for i in range(2)
        ]
        await cluster.synced(guilds[0])
        on_second = next(g for g in guilds if shard_of(g, 2) == 1)
        handle = await cluster.imagine(on_second, "woken from elsewhere")
        result = await handle.wait_for_original(lambda m: bool(m.attachments), timeout=15.0)
        await cluster.pixazo.wait_for_webhooks(1)

    (row,) = cluster.rows()
    assert of_process(row["owner"], processes[1])
    assert row["result_message_id"] == result.id
    assert "webhook received" in processes[0].log()
    assert row["delivered_at"] - row["submitted_at"] < 30  # long before a safety poll
    assert_no_traceback(bot_messages(cluster.discord))


async def test_processes_starting_at_once_take_turns_to_identify(
    tmp_path: Path, postgres_url: str
) -> None:
    # One identify per 5 s for the whole bot (max_concurrency 1): Discord answers a second
    # one sooner with "invalid session", whichever process sends it.
    async with cluster_of(
        tmp_path, postgres_url, shards=2, max_concurrency=1, enforce_identify_rate=True
    ) as cluster:
        cluster.discord.add_guild()
        await asyncio.gather(*(cluster.start(**cluster_settings(i, 2, 2)) for i in range(2)))
        await cluster.discord.wait_for(
            lambda: sum(1 for c in cluster.discord.connections if c.ready) >= 2,
            STARTUP_TIMEOUT,
            what="both processes to connect",
        )

    log = cluster.discord.identify_log
    assert [record.accepted for record in log] == [True, True], log
    assert sorted(record.shard for record in log) == [(0, 2), (1, 2)]
    assert log[1].time - log[0].time >= 5.0
