-- Server and channel defaults (channel_id 0 = the whole server), named presets,
-- members' own preferences, and small bot-wide facts (e.g. the synced command hash).
CREATE TABLE scope_settings (
    guild_id   INTEGER NOT NULL,
    channel_id INTEGER NOT NULL DEFAULT 0,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,  -- JSON
    updated_by INTEGER,
    updated_at REAL    NOT NULL,
    PRIMARY KEY (guild_id, channel_id, key)
);
CREATE TABLE presets (
    guild_id   INTEGER NOT NULL,
    kind       TEXT    NOT NULL,  -- 'style' | 'moodboard'
    name       TEXT    NOT NULL COLLATE NOCASE,
    value      TEXT    NOT NULL,  -- JSON
    created_by INTEGER,
    created_at REAL    NOT NULL,
    PRIMARY KEY (guild_id, kind, name)
);
CREATE TABLE member_prefs (
    guild_id INTEGER NOT NULL,
    user_id  INTEGER NOT NULL,
    key      TEXT    NOT NULL,
    value    TEXT    NOT NULL,  -- JSON
    PRIMARY KEY (guild_id, user_id, key)
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
