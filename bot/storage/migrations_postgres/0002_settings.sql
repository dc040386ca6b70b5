-- Server and channel defaults (channel_id 0 = the whole server), named presets,
-- members' own preferences, and small bot-wide facts (e.g. the synced command hash).
-- As migrations/0002_settings.sql (SQLite).
CREATE TABLE scope_settings (
    guild_id   BIGINT  NOT NULL,
    channel_id BIGINT  NOT NULL DEFAULT 0,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,  -- JSON
    updated_by BIGINT,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (guild_id, channel_id, key)
);
-- SQLite compares preset names with COLLATE NOCASE ("Ink" and "ink" are one preset): here
-- a case-insensitive ICU collation does, in the key, in WHERE name = ? and in ORDER BY.
-- (It folds the case of every script; SQLite's NOCASE folds only A-Z.)
CREATE COLLATION kreabot_nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE presets (
    guild_id   BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,  -- 'style' | 'moodboard'
    name       TEXT    NOT NULL COLLATE kreabot_nocase,
    value      TEXT    NOT NULL,  -- JSON
    created_by BIGINT,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (guild_id, kind, name)
);
CREATE TABLE member_prefs (
    guild_id BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    key      TEXT   NOT NULL,
    value    TEXT   NOT NULL,  -- JSON
    PRIMARY KEY (guild_id, user_id, key)
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
