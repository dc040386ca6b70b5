"""Settings: one-line errors naming the setting, secrets never printed, .env and secret
files read."""

from __future__ import annotations

from pathlib import Path

import pytest

import bot.settings
from bot.settings import Settings, SettingsError, load_settings, secrets_dir

TOKEN = "MTAxNDk.discord-token-value.Zx9"
API_KEY = "pixazo-key-5a7c1e"
FIELDS = [name for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting comes from the developer's environment or a stray ``.env``."""
    for name in FIELDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRETS_DIR", "")  # no secret files unless a test gives some
    monkeypatch.chdir(tmp_path)


def set_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("PIXAZO_API_KEY", API_KEY)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    settings = load_settings(env_file=None)
    assert settings.DISCORD_TOKEN.get_secret_value() == TOKEN
    assert settings.PIXAZO_API_KEY.get_secret_value() == API_KEY
    assert settings.PIXAZO_BASE_URL == "https://gateway.pixazo.ai"
    assert settings.MAX_CONCURRENT_JOBS == 20
    assert settings.LOG_LEVEL == "INFO"


def test_missing_discord_token_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXAZO_API_KEY", API_KEY)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith("DISCORD_TOKEN is not set")
    assert "\n" not in message
    assert API_KEY not in message


def test_every_missing_setting_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"^DISCORD_TOKEN is not set.*1 more problem"):
        load_settings(env_file=None)


@pytest.mark.parametrize("value", ["lots", "0", "2.5"])
def test_malformed_max_concurrent_jobs_is_named(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", value)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith("MAX_CONCURRENT_JOBS is invalid")
    assert "\n" not in message
    assert TOKEN not in message and API_KEY not in message


@pytest.mark.parametrize("secret", ["two words token", " padded-token-value "])
def test_a_bad_secret_is_named_but_never_shown(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("DISCORD_TOKEN", secret)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith("DISCORD_TOKEN contains spaces")
    assert secret.strip() not in message


def test_secrets_not_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    settings = load_settings(env_file=None)
    for text in (repr(settings), str(settings), repr(settings.model_dump())):
        assert TOKEN not in text
        assert API_KEY not in text


def test_malformed_base_url_and_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("PIXAZO_BASE_URL", "gateway.pixazo.ai")
    with pytest.raises(SettingsError, match=r"^PIXAZO_BASE_URL is not an http\(s\) URL"):
        load_settings(env_file=None)
    monkeypatch.setenv("PIXAZO_BASE_URL", "http://127.0.0.1:8080/")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings(env_file=None)
    assert settings.PIXAZO_BASE_URL == "http://127.0.0.1:8080"
    assert settings.LOG_LEVEL == "DEBUG"


def test_env_file_is_read(tmp_path: Path) -> None:
    env = tmp_path / "custom.env"
    env.write_text(
        f"DISCORD_TOKEN={TOKEN}\nPIXAZO_API_KEY={API_KEY}\nMAX_CONCURRENT_JOBS=3\n",
        encoding="utf-8",
    )
    settings = load_settings(env_file=env)
    assert settings.DISCORD_TOKEN.get_secret_value() == TOKEN
    assert settings.MAX_CONCURRENT_JOBS == 3


def test_default_env_file_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"DISCORD_TOKEN={TOKEN}\nPIXAZO_API_KEY={API_KEY}\nDEV_GUILD_ID=1234\n", encoding="utf-8"
    )
    settings = load_settings()
    assert settings.DEV_GUILD_ID == 1234


def test_environment_wins_over_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        f"DISCORD_TOKEN={TOKEN}\nPIXAZO_API_KEY={API_KEY}\nMAX_CONCURRENT_JOBS=3\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "7")
    assert load_settings().MAX_CONCURRENT_JOBS == 7


def test_env_file_ignored_when_none(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DISCORD_TOKEN={TOKEN}\nPIXAZO_API_KEY={API_KEY}\n")
    with pytest.raises(SettingsError, match="DISCORD_TOKEN"):
        load_settings(env_file=None)


def test_log_format_defaults_to_plain_and_accepts_json(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    assert load_settings(env_file=None).LOG_FORMAT == "plain"
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert load_settings(env_file=None).LOG_FORMAT == "json"
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match=r"^LOG_FORMAT is invalid.*plain.*json"):
        load_settings(env_file=None)


# -- secret files (Docker secrets) -------------------------------------------------------------


def secret_files(folder: Path, **values: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, value in values.items():
        (folder / name).write_text(value, encoding="utf-8")
    return folder


def test_secrets_are_read_from_files_in_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = secret_files(
        tmp_path / "secrets",
        DISCORD_TOKEN=TOKEN + "\n",  # `echo token > file` leaves a newline: ignored
        PIXAZO_API_KEY=API_KEY,
        WEBHOOK_SECRET="0123456789abcdef-webhook",
    )
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    settings = load_settings(env_file=None)
    assert settings.DISCORD_TOKEN.get_secret_value() == TOKEN
    assert settings.PIXAZO_API_KEY.get_secret_value() == API_KEY
    assert settings.WEBHOOK_SECRET is not None
    assert settings.WEBHOOK_SECRET.get_secret_value() == "0123456789abcdef-webhook"


def test_environment_and_env_file_win_over_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = secret_files(tmp_path / "secrets", DISCORD_TOKEN="from-file", PIXAZO_API_KEY="file")
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    (tmp_path / ".env").write_text(f"PIXAZO_API_KEY={API_KEY}\n", encoding="utf-8")
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    settings = load_settings()
    assert settings.DISCORD_TOKEN.get_secret_value() == TOKEN
    assert settings.PIXAZO_API_KEY.get_secret_value() == API_KEY


def test_an_empty_line_in_env_file_does_not_mask_a_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """.env copied from .env.example keeps `DISCORD_TOKEN=`; the file must still count."""
    folder = secret_files(tmp_path / "secrets", DISCORD_TOKEN=TOKEN, PIXAZO_API_KEY=API_KEY)
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    (tmp_path / ".env").write_text("DISCORD_TOKEN=\nPIXAZO_API_KEY=\n", encoding="utf-8")
    settings = load_settings()
    assert settings.DISCORD_TOKEN.get_secret_value() == TOKEN
    assert settings.PIXAZO_API_KEY.get_secret_value() == API_KEY


def test_empty_secret_files_stand_for_values_kept_in_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = secret_files(tmp_path / "secrets", DISCORD_TOKEN="", WEBHOOK_SECRET="")
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    (tmp_path / ".env").write_text(
        f"DISCORD_TOKEN={TOKEN}\nPIXAZO_API_KEY={API_KEY}\n", encoding="utf-8"
    )
    settings = load_settings()
    assert settings.DISCORD_TOKEN.get_secret_value() == TOKEN
    assert settings.WEBHOOK_SECRET is None


def test_a_missing_secret_is_named_without_showing_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = secret_files(tmp_path / "secrets", DISCORD_TOKEN=TOKEN)
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    assert str(caught.value).startswith("PIXAZO_API_KEY is not set")
    assert TOKEN not in str(caught.value)


def test_secrets_dir_that_is_not_a_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SettingsError, match=r"^SECRETS_DIR is not a directory"):
        load_settings(env_file=None)


def test_run_secrets_is_used_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECRETS_DIR")
    monkeypatch.setattr(bot.settings, "DEFAULT_SECRETS_DIR", tmp_path / "run-secrets")
    assert secrets_dir() is None  # absent: no secret files, no warning
    folder = secret_files(tmp_path / "run-secrets", DISCORD_TOKEN=TOKEN, PIXAZO_API_KEY=API_KEY)
    assert secrets_dir() == folder
    assert load_settings(env_file=None).PIXAZO_API_KEY.get_secret_value() == API_KEY
    assert secrets_dir({"SECRETS_DIR": ""}) is None  # turned off


def test_an_unreadable_secret_file_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = secret_files(tmp_path / "secrets", DISCORD_TOKEN=TOKEN, PIXAZO_API_KEY=API_KEY)
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    original = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self.parent == folder:  # as for a file owned by another user, mode 0600
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith(f"cannot read the secret file {folder}")
    assert "Permission denied" in message and "\n" not in message


@pytest.mark.parametrize(
    ("values", "shards"),
    [
        ({}, None),
        ({"SHARD_COUNT": "4"}, None),
        ({"SHARD_COUNT": "8", "SHARD_IDS": "0,2, 5-7"}, [0, 2, 5, 6, 7]),
        ({"SHARD_COUNT": "10", "CLUSTER_INDEX": "0", "CLUSTER_COUNT": "3"}, [0, 1, 2, 3]),
        ({"SHARD_COUNT": "10", "CLUSTER_INDEX": "2", "CLUSTER_COUNT": "3"}, [8, 9]),
    ],
)
def test_a_process_runs_the_shards_its_settings_name(
    values: dict[str, str], shards: list[int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("PIXAZO_API_KEY", API_KEY)
    assert load_settings(env_file=None).own_shards() == shards


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"SHARD_IDS": "0,1"}, "need SHARD_COUNT"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "0,2"}, "from 0 to 1"),
        (
            {"SHARD_COUNT": "4", "SHARD_IDS": "0", "CLUSTER_INDEX": "0", "CLUSTER_COUNT": "2"},
            "not both",
        ),
        ({"SHARD_COUNT": "4", "CLUSTER_INDEX": "2", "CLUSTER_COUNT": "2"}, "below CLUSTER_COUNT"),
        ({"SHARD_COUNT": "4", "CLUSTER_INDEX": "1"}, "go together"),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "one"}, "SHARD_IDS"),
    ],
)
def test_inconsistent_shard_settings_stop_start_up_with_one_line(
    values: dict[str, str], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("PIXAZO_API_KEY", API_KEY)
    with pytest.raises(SettingsError, match=problem):
        load_settings(env_file=None)


def test_database_url_is_optional_secret_and_must_be_postgresql(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    set_required(monkeypatch)
    assert load_settings(env_file=None).DATABASE_URL is None  # SQLite, the default

    url = "postgresql://kreabot:pw-5e3c1d@db.example.org:5432/kreabot?sslmode=require"
    monkeypatch.setenv("DATABASE_URL", url)
    settings = load_settings(env_file=None)
    assert settings.DATABASE_URL is not None
    assert settings.DATABASE_URL.get_secret_value() == url
    assert "pw-5e3c1d" not in repr(settings) and "pw-5e3c1d" not in str(settings)
    monkeypatch.setenv("DATABASE_URL", "postgres://kreabot@localhost/kreabot")
    assert load_settings(env_file=None).DATABASE_URL is not None

    monkeypatch.setenv("DATABASE_URL", "mysql://kreabot:pw-5e3c1d@db.example.org/kreabot")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith("DATABASE_URL is not a postgresql:// URL: use a URL such as ")
    assert "pw-5e3c1d" not in message

    # From a secret file; an empty one means SQLite.
    monkeypatch.delenv("DATABASE_URL")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "DATABASE_URL").write_text(url + "\n")
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "secrets"))
    from_file = load_settings(env_file=None).DATABASE_URL
    assert from_file is not None and from_file.get_secret_value() == url
    (tmp_path / "secrets" / "DATABASE_URL").write_text("")
    assert load_settings(env_file=None).DATABASE_URL is None
