-- Jobs: one row per image generation, every state transition persisted.
CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id          INTEGER,
    channel_id        INTEGER NOT NULL,
    user_id           INTEGER NOT NULL,
    state             TEXT    NOT NULL,
    params            TEXT    NOT NULL,  -- JSON body sent to the gateway (seed always set)
    sources           TEXT    NOT NULL DEFAULT '{}',  -- JSON: where each value came from
    refs              TEXT    NOT NULL DEFAULT '[]',  -- JSON: where each reference image lives
    request_id        TEXT,
    polling_url       TEXT,
    media_url         TEXT,
    application_id    INTEGER,
    interaction_token TEXT,
    token_expires_at  REAL,
    message_id        INTEGER,  -- the job's own message (the interaction response)
    result_message_id INTEGER,  -- the message holding the image
    filesize_limit    INTEGER NOT NULL DEFAULT 10485760,
    error_kind        TEXT,
    error_text        TEXT,
    parent_id         INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    variant           TEXT,
    created_at        REAL    NOT NULL,
    submitted_at      REAL,
    finished_at       REAL,
    delivered_at      REAL,
    updated_at        REAL    NOT NULL
);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_request ON jobs(request_id);
CREATE INDEX jobs_user ON jobs(guild_id, user_id, created_at);
CREATE INDEX jobs_result_message ON jobs(result_message_id);
