"""The config store on both backends: scoped values, presets, preferences, the blocklist,
limits and bot-wide facts, read back through a second handle as another process would."""

from __future__ import annotations

from pathlib import Path

from bot.pixazo.models import Moodboard, Style
from bot.storage.config import SERVER, ConfigStore, LimitOverrides, StoredMoodboard
from bot.storage.db import Database, open_database

GUILD = 111
OTHER = 999
CHANNEL = 222
ADMIN = 5
BOARD = "123e4567-e89b-12d3-a456-426614174000"


def clock() -> float:
    return 1_700_000_000.0


async def test_set_and_clear_scoped_values(db: Database, target: Path | str) -> None:
    store = ConfigStore(db, clock)
    await store.set(GUILD, SERVER, "aspect_ratio", "16:9", by=ADMIN)
    await store.set(GUILD, SERVER, "creativity", "low")
    await store.set(GUILD, CHANNEL, "aspect_ratio", "9:16", by=ADMIN)
    await store.set(GUILD, SERVER, "moodboard", {"id": BOARD, "strength": 0.4, "name": "brand"})
    await store.set(GUILD, SERVER, "aspect_ratio", "4:3", by=ADMIN)  # replaces
    await store.set(OTHER, SERVER, "aspect_ratio", "1:1")

    config = await store.server(GUILD)
    assert config.server.aspect_ratio == "4:3"
    assert config.channel(CHANNEL).aspect_ratio == "9:16"
    assert config.effective("aspect_ratio", CHANNEL) == ("9:16", "channel")
    assert config.effective("creativity", CHANNEL) == ("low", "server")
    assert config.effective("styles", CHANNEL) == (None, None)
    assert config.server.moodboard == StoredMoodboard(id=BOARD, strength=0.4, name="brand")
    assert await store.server(GUILD) is config  # cached

    # Another process (a second handle on the same database) reads the same.
    other = await open_database(target)
    try:
        assert await ConfigStore(other, clock).server(GUILD) == config
    finally:
        await other.close()

    assert await store.clear(GUILD, CHANNEL, "aspect_ratio", "creativity") is True
    assert await store.clear(GUILD, CHANNEL, "aspect_ratio") is False
    config = await store.server(GUILD)  # the cache was dropped
    assert config.channel(CHANNEL).aspect_ratio is None
    assert config.effective("aspect_ratio", CHANNEL) == ("4:3", "server")
    assert (await store.server(OTHER)).server.aspect_ratio == "1:1"


async def test_presets_are_case_insensitive_like_sqlites_nocase(db: Database) -> None:
    store = ConfigStore(db, clock)
    await store.add_preset(GUILD, "style", "Ink", [{"id": "krea/ink", "strength": 0.7}], by=ADMIN)
    await store.add_preset(GUILD, "style", "ink", [{"id": "krea/ink", "strength": 0.9}])
    await store.add_preset(GUILD, "style", "aqua", [{"id": "krea/aqua"}])
    await store.add_preset(GUILD, "moodboard", "ink", {"id": BOARD, "strength": 0.5})
    await store.add_preset(OTHER, "style", "Ink", [{"id": "krea/other"}])

    config = await store.server(GUILD)
    # One preset: the first spelling kept, the later value stored.
    assert config.style_presets == {
        "aqua": (Style(id="krea/aqua"),),
        "Ink": (Style(id="krea/ink", strength=0.9),),
    }
    assert list(config.style_presets) == ["aqua", "Ink"]  # ordered by name, any case
    assert config.moodboard_presets == {
        "ink": Moodboard.model_validate({"id": BOARD, "strength": 0.5})
    }

    assert await store.remove_preset(GUILD, "style", "INK") is True
    assert await store.remove_preset(GUILD, "style", "INK") is False
    assert list((await store.server(GUILD)).style_presets) == ["aqua"]
    assert list((await store.server(OTHER)).style_presets) == ["Ink"]


async def test_member_preferences(db: Database) -> None:
    store = ConfigStore(db, clock)
    assert await store.prefs(GUILD, 333) == {}
    await store.set_pref(GUILD, 333, "aspect_ratio", "3:2")
    await store.set_pref(GUILD, 333, "suffix", "in ink, 'quoted' and \"double\"?")
    await store.set_pref(GUILD, 333, "aspect_ratio", "2:3")
    await store.set_pref(GUILD, 444, "creativity", "high")

    assert await store.prefs(GUILD, 333) == {
        "aspect_ratio": "2:3",
        "suffix": "in ink, 'quoted' and \"double\"?",
    }
    await store.set_pref(GUILD, 333, "aspect_ratio", None)  # removes it
    assert await store.prefs(GUILD, 333) == {"suffix": "in ink, 'quoted' and \"double\"?"}
    assert await store.prefs(GUILD, 444) == {"creativity": "high"}


async def test_blocklist_limits_and_log_channel(db: Database) -> None:
    store = ConfigStore(db, clock)
    word = {"kind": "word", "value": "gore"}
    pattern = {"kind": "re", "value": "blood\\w*"}
    await store.add_block(GUILD, word, by=ADMIN)
    await store.add_block(GUILD, pattern, by=ADMIN)
    await store.add_block(GUILD, word, by=ADMIN)  # once
    assert (await store.server(GUILD)).blocklist == (pattern, word)
    assert await store.remove_block(GUILD, lambda e: e["value"] == "gore", by=ADMIN) is True
    assert await store.remove_block(GUILD, lambda e: e["value"] == "gore", by=ADMIN) is False
    assert (await store.server(GUILD)).blocklist == (pattern,)

    await store.set_limits(GUILD, {"member_daily": 5}, reset=False, by=ADMIN)
    await store.set_limits(GUILD, {"server_daily": 50}, reset=False, by=ADMIN)
    await store.set_limits(GUILD, {}, reset=False, by=ADMIN)  # nothing to change
    assert (await store.server(GUILD)).limits == LimitOverrides(member_daily=5, server_daily=50)
    await store.set_limits(GUILD, {}, reset=True, by=ADMIN)
    assert (await store.server(GUILD)).limits == LimitOverrides()

    await store.set(GUILD, SERVER, "log_channel", 2**60, by=ADMIN)  # a snowflake
    await store.set(OTHER, SERVER, "log_channel", 77, by=ADMIN)
    assert (await store.server(GUILD)).log_channel == 2**60
    assert sorted(await store.log_channels()) == [(GUILD, 2**60), (OTHER, 77)]


async def test_forget_server_deletes_only_that_server(db: Database) -> None:
    store = ConfigStore(db, clock)
    for guild in (GUILD, OTHER):
        await store.set(guild, SERVER, "creativity", "high")
        await store.add_preset(guild, "style", "ink", [{"id": "krea/ink"}])
        await store.set_pref(guild, 333, "aspect_ratio", "1:1")
    await store.server(GUILD)
    await store.prefs(GUILD, 333)

    await store.forget_server(GUILD)

    config = await store.server(GUILD)
    assert config.server.creativity is None and config.style_presets == {}
    assert await store.prefs(GUILD, 333) == {}
    assert (await store.server(OTHER)).server.creativity == "high"
    assert await store.prefs(OTHER, 333) == {"aspect_ratio": "1:1"}


async def test_bot_wide_facts(db: Database) -> None:
    store = ConfigStore(db, clock)
    assert await store.get_meta("commands_hash") is None
    await store.set_meta("commands_hash", "abc")
    await store.set_meta("commands_hash", "def")
    await store.set_meta(f"removed:{GUILD}", "1700000000.0")
    await store.set_meta(f"removed:{OTHER}", "1700000001.0")
    await store.set_meta("removal_note", "not a removal")

    assert await store.get_meta("commands_hash") == "def"
    assert sorted(await store.meta_with_prefix("removed:")) == [
        (f"removed:{GUILD}", "1700000000.0"),
        (f"removed:{OTHER}", "1700000001.0"),
    ]
    await store.delete_meta(f"removed:{GUILD}")
    assert await store.meta_with_prefix("removed:") == [(f"removed:{OTHER}", "1700000001.0")]
    assert await store.get_meta(f"removed:{GUILD}") is None
