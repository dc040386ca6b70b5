"""Which gateway events need which intents, as in Discord's "List of Intents".

Source: https://discord.com/developers/docs/events/gateway#list-of-intents ("Any events not
listed means it's not associated with an intent and will always be sent to your app") and its
"Caveats" (GUILD_MEMBER_UPDATE for the current user is sent regardless of GUILD_MEMBERS).
"""

from __future__ import annotations

from tests.fake_discord.models import JSON


class Intent:
    """Gateway intent bits."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1  # privileged
    GUILD_MODERATION = 1 << 2
    GUILD_EXPRESSIONS = 1 << 3
    GUILD_INTEGRATIONS = 1 << 4
    GUILD_WEBHOOKS = 1 << 5
    GUILD_INVITES = 1 << 6
    GUILD_VOICE_STATES = 1 << 7
    GUILD_PRESENCES = 1 << 8  # privileged
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    DIRECT_MESSAGE_TYPING = 1 << 14
    MESSAGE_CONTENT = 1 << 15  # privileged; changes payloads, not which events arrive
    GUILD_SCHEDULED_EVENTS = 1 << 16
    AUTO_MODERATION_CONFIGURATION = 1 << 20
    AUTO_MODERATION_EXECUTION = 1 << 21
    GUILD_MESSAGE_POLLS = 1 << 24
    DIRECT_MESSAGE_POLLS = 1 << 25

    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


_GUILD_ONLY: dict[int, tuple[str, ...]] = {
    Intent.GUILDS: (
        "GUILD_CREATE",
        "GUILD_UPDATE",
        "GUILD_DELETE",
        "GUILD_ROLE_CREATE",
        "GUILD_ROLE_UPDATE",
        "GUILD_ROLE_DELETE",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
        "CHANNEL_DELETE",
        "THREAD_CREATE",
        "THREAD_UPDATE",
        "THREAD_DELETE",
        "THREAD_LIST_SYNC",
        "THREAD_MEMBER_UPDATE",
        "THREAD_MEMBERS_UPDATE",
        "STAGE_INSTANCE_CREATE",
        "STAGE_INSTANCE_UPDATE",
        "STAGE_INSTANCE_DELETE",
        "VOICE_CHANNEL_STATUS_UPDATE",
        "VOICE_CHANNEL_START_TIME_UPDATE",
    ),
    Intent.GUILD_MEMBERS: ("GUILD_MEMBER_ADD", "GUILD_MEMBER_UPDATE", "GUILD_MEMBER_REMOVE"),
    Intent.GUILD_MODERATION: ("GUILD_AUDIT_LOG_ENTRY_CREATE", "GUILD_BAN_ADD", "GUILD_BAN_REMOVE"),
    Intent.GUILD_EXPRESSIONS: (
        "GUILD_EMOJIS_UPDATE",
        "GUILD_STICKERS_UPDATE",
        "GUILD_SOUNDBOARD_SOUND_CREATE",
        "GUILD_SOUNDBOARD_SOUND_UPDATE",
        "GUILD_SOUNDBOARD_SOUND_DELETE",
        "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
    ),
    Intent.GUILD_INTEGRATIONS: (
        "GUILD_INTEGRATIONS_UPDATE",
        "INTEGRATION_CREATE",
        "INTEGRATION_UPDATE",
        "INTEGRATION_DELETE",
    ),
    Intent.GUILD_WEBHOOKS: ("WEBHOOKS_UPDATE",),
    Intent.GUILD_INVITES: ("INVITE_CREATE", "INVITE_DELETE"),
    Intent.GUILD_VOICE_STATES: ("VOICE_CHANNEL_EFFECT_SEND", "VOICE_STATE_UPDATE"),
    Intent.GUILD_PRESENCES: ("PRESENCE_UPDATE",),
    Intent.GUILD_SCHEDULED_EVENTS: (
        "GUILD_SCHEDULED_EVENT_CREATE",
        "GUILD_SCHEDULED_EVENT_UPDATE",
        "GUILD_SCHEDULED_EVENT_DELETE",
        "GUILD_SCHEDULED_EVENT_USER_ADD",
        "GUILD_SCHEDULED_EVENT_USER_REMOVE",
    ),
    Intent.AUTO_MODERATION_CONFIGURATION: (
        "AUTO_MODERATION_RULE_CREATE",
        "AUTO_MODERATION_RULE_UPDATE",
        "AUTO_MODERATION_RULE_DELETE",
    ),
    Intent.AUTO_MODERATION_EXECUTION: ("AUTO_MODERATION_ACTION_EXECUTION",),
}

# Events sent for guilds and for DMs, each under its own intent: (guild intent, DM intent).
_GUILD_OR_DM: dict[str, tuple[int, int]] = {
    "MESSAGE_CREATE": (Intent.GUILD_MESSAGES, Intent.DIRECT_MESSAGES),
    "MESSAGE_UPDATE": (Intent.GUILD_MESSAGES, Intent.DIRECT_MESSAGES),
    "MESSAGE_DELETE": (Intent.GUILD_MESSAGES, Intent.DIRECT_MESSAGES),
    "MESSAGE_DELETE_BULK": (Intent.GUILD_MESSAGES, Intent.DIRECT_MESSAGES),
    "CHANNEL_PINS_UPDATE": (Intent.GUILDS, Intent.DIRECT_MESSAGES),
    "MESSAGE_REACTION_ADD": (Intent.GUILD_MESSAGE_REACTIONS, Intent.DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE": (Intent.GUILD_MESSAGE_REACTIONS, Intent.DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE_ALL": (
        Intent.GUILD_MESSAGE_REACTIONS,
        Intent.DIRECT_MESSAGE_REACTIONS,
    ),
    "MESSAGE_REACTION_REMOVE_EMOJI": (
        Intent.GUILD_MESSAGE_REACTIONS,
        Intent.DIRECT_MESSAGE_REACTIONS,
    ),
    "TYPING_START": (Intent.GUILD_MESSAGE_TYPING, Intent.DIRECT_MESSAGE_TYPING),
    "MESSAGE_POLL_VOTE_ADD": (Intent.GUILD_MESSAGE_POLLS, Intent.DIRECT_MESSAGE_POLLS),
    "MESSAGE_POLL_VOTE_REMOVE": (Intent.GUILD_MESSAGE_POLLS, Intent.DIRECT_MESSAGE_POLLS),
}

_EVENT_INTENT = {event: bit for bit, events in _GUILD_ONLY.items() for event in events}


def required_intent(event: str, data: JSON, *, current_user_id: int | None = None) -> int:
    """The intent bit a session needs to receive `event` with `data`; 0 if none is needed."""
    if event in _GUILD_OR_DM:
        guild_intent, dm_intent = _GUILD_OR_DM[event]
        return guild_intent if data.get("guild_id") is not None else dm_intent
    if event == "GUILD_MEMBER_UPDATE" and current_user_id is not None:
        user = data.get("user") or {}
        if str(user.get("id")) == str(current_user_id):
            return 0  # "sent for current-user updates regardless" (Caveats)
    return _EVENT_INTENT.get(event, 0)


def event_guild_id(event: str, data: JSON) -> int | None:
    """The guild an event belongs to (for shard routing), or None."""
    raw = data.get("guild_id")
    if raw is None and event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"):
        raw = data.get("id")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
