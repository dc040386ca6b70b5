"""The limits Discord enforces on messages, components, embeds, modals and uploads.

Each check collects problems as (path, code, message) and raises one `DiscordApiError` with
Discord's nested "Invalid Form Body" structure (code 50035), as the real API does.
"""

from __future__ import annotations

from typing import Any

import emoji as emoji_data

from tests.fake_discord.models import (
    JSON,
    MESSAGE_FLAG_COMPONENTS_V2,
    DiscordApiError,
    UploadedFile,
    walk_components,
)

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_ATTACHMENTS = 10
MAX_ROWS = 5
MAX_BUTTONS_PER_ROW = 5
MAX_SELECT_OPTIONS = 25
MAX_CUSTOM_ID = 100
MAX_MODAL_TITLE = 45
MAX_CHOICES = 25
MAX_V2_COMPONENTS = 40
SELECT_TYPES = {3, 5, 6, 7, 8}

Problem = tuple[list[str | int], str, str]


class FormErrors:
    """Collects form problems and raises them as one 50035 error."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: list[str | int], code: str, message: str) -> None:
        """Record a problem at `path` (e.g. `["embeds", 0, "title"]`); duplicates are dropped
        (the schema and a hand-written rule may find the same one)."""
        problem = ([str(p) for p in path], code, message)
        if all(([str(p) for p in q[0]], q[1]) != (problem[0], code) for q in self.problems):
            self.problems.append((path, code, message))

    def too_long(self, path: list[str | int], value: Any, limit: int) -> None:
        """Record BASE_TYPE_MAX_LENGTH when `value` is a string longer than `limit`."""
        if isinstance(value, str) and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def raise_if_any(self) -> None:
        """Raise 400/50035 with Discord's nested `errors` if anything was recorded."""
        if not self.problems:
            return
        errors: JSON = {}
        for path, code, message in self.problems:
            node = errors
            for key in path:
                node = node.setdefault(str(key), {})
            node.setdefault("_errors", []).append({"code": code, "message": message})
        raise DiscordApiError(400, 50035, "Invalid Form Body", errors)


def _embed_length(embed: JSON) -> int:
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    for f in embed.get("fields") or []:
        total += len(f.get("name") or "") + len(f.get("value") or "")
    total += len((embed.get("footer") or {}).get("text") or "")
    total += len((embed.get("author") or {}).get("name") or "")
    return total


def check_embeds(embeds: list[JSON], form: FormErrors) -> None:
    """Discord's embed limits."""
    if len(embeds) > MAX_EMBEDS:
        form.add(["embeds"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    for i, embed in enumerate(embeds):
        form.too_long(["embeds", i, "title"], embed.get("title"), 256)
        form.too_long(["embeds", i, "description"], embed.get("description"), 4096)
        fields = embed.get("fields") or []
        if len(fields) > 25:
            form.add(["embeds", i, "fields"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer.")
        for j, f in enumerate(fields):
            if not f.get("name"):
                form.add(["embeds", i, "fields", j, "name"], "BASE_TYPE_REQUIRED", "Required.")
            if not f.get("value"):
                form.add(["embeds", i, "fields", j, "value"], "BASE_TYPE_REQUIRED", "Required.")
            form.too_long(["embeds", i, "fields", j, "name"], f.get("name"), 256)
            form.too_long(["embeds", i, "fields", j, "value"], f.get("value"), 1024)
        form.too_long(
            ["embeds", i, "footer", "text"], (embed.get("footer") or {}).get("text"), 2048
        )
        form.too_long(["embeds", i, "author", "name"], (embed.get("author") or {}).get("name"), 256)
    if sum(_embed_length(e) for e in embeds) > MAX_EMBED_TOTAL:
        form.add(
            ["embeds"],
            "MAX_EMBED_SIZE_EXCEEDED",
            f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}",
        )


def _check_custom_id(
    path: list[str | int], custom_id: Any, seen: set[str], form: FormErrors
) -> None:
    if not isinstance(custom_id, str) or not custom_id:
        form.add([*path, "custom_id"], "BASE_TYPE_REQUIRED", "This field is required")
        return
    if len(custom_id) > MAX_CUSTOM_ID:
        form.too_long([*path, "custom_id"], custom_id, MAX_CUSTOM_ID)
    if custom_id in seen:
        form.add(
            [*path, "custom_id"],
            "COMPONENT_CUSTOM_ID_DUPLICATED",
            "Component custom id cannot be duplicated",
        )
    seen.add(custom_id)


def is_valid_component_emoji(emoji: Any) -> bool:
    """Whether Discord accepts `emoji` (a partial emoji object) on a button or select option.

    A custom emoji is named by its `id`; otherwise `name` must be one Unicode emoji (by the
    `emoji` package's list, which follows Unicode's). Plain symbols such as U+2922 "⤢" are
    refused. Sources: DISCORD_FACTS.md ("Component emoji") and
    https://discord.com/developers/docs/components/reference#button (`emoji`: partial emoji).
    """
    if not isinstance(emoji, dict):
        return False
    if emoji.get("id"):
        return True
    name = emoji.get("name")
    return isinstance(name, str) and emoji_data.is_emoji(name)


def _check_emoji(path: list[str | int], c: JSON, code: str, form: FormErrors) -> None:
    if c.get("emoji") is not None and not is_valid_component_emoji(c["emoji"]):
        form.add([*path, "emoji", "name"], code, "Invalid emoji")


def _check_interactive(path: list[str | int], c: JSON, seen: set[str], form: FormErrors) -> None:
    ctype = c.get("type")
    if ctype == 2:
        _check_emoji(path, c, "BUTTON_COMPONENT_INVALID_EMOJI", form)
        style = c.get("style")
        if style == 5:
            if not c.get("url"):
                form.add([*path, "url"], "BASE_TYPE_REQUIRED", "Link buttons need a url")
            if c.get("custom_id"):
                form.add(
                    [*path, "custom_id"],
                    "BUTTON_LINK_CUSTOM_ID",
                    "Link buttons cannot have a custom_id",
                )
        elif style != 6:
            _check_custom_id(path, c.get("custom_id"), seen, form)
        form.too_long([*path, "label"], c.get("label"), 80)
    elif ctype in SELECT_TYPES:
        _check_custom_id(path, c.get("custom_id"), seen, form)
        form.too_long([*path, "placeholder"], c.get("placeholder"), 150)
        if ctype == 3:
            options = c.get("options") or []
            if not options:
                form.add([*path, "options"], "BASE_TYPE_MIN_LENGTH", "Must be 1 or more in length.")
            if len(options) > MAX_SELECT_OPTIONS:
                form.add(
                    [*path, "options"],
                    "BASE_TYPE_MAX_LENGTH",
                    f"Must be {MAX_SELECT_OPTIONS} or fewer in length.",
                )
            for k, option in enumerate(options):
                _check_emoji(
                    [*path, "options", k], option, "SELECT_COMPONENT_OPTION_INVALID_EMOJI", form
                )
                form.too_long([*path, "options", k, "label"], option.get("label"), 100)
                form.too_long([*path, "options", k, "value"], option.get("value"), 100)
        for key in ("min_values", "max_values"):
            value = c.get(key)
            if value is not None and not 0 <= value <= 25:
                form.add([*path, key], "NUMBER_TYPE_MAX", "Must be between 0 and 25.")
    elif ctype == 4:
        _check_custom_id(path, c.get("custom_id"), seen, form)
        form.too_long([*path, "label"], c.get("label"), 45)


def check_components(components: list[JSON], flags: int, form: FormErrors) -> None:
    """Rows, buttons per row, selects, custom_id length and uniqueness."""
    seen: set[str] = set()
    if flags & MESSAGE_FLAG_COMPONENTS_V2:
        if len(list(walk_components(components))) > MAX_V2_COMPONENTS:
            form.add(["components"], "BASE_TYPE_MAX_LENGTH", "Must be 40 or fewer in length.")
        for i, c in enumerate(walk_components(components)):
            _check_interactive(["components", i], c, seen, form)
        return
    if len(components) > MAX_ROWS:
        form.add(["components"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ROWS} or fewer in length.")
    for i, row in enumerate(components):
        if row.get("type") != 1:
            form.add(
                ["components", i, "type"],
                "UNION_TYPE_CHOICES",
                "Top-level components must be action rows without the IS_COMPONENTS_V2 flag",
            )
            continue
        children = row.get("components") or []
        if not children:
            form.add(["components", i, "components"], "BASE_TYPE_MIN_LENGTH", "Must be 1 or more.")
        selects = [c for c in children if c.get("type") in SELECT_TYPES]
        if selects and len(children) > 1:
            form.add(
                ["components", i, "components"],
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "A select menu must be alone in its action row",
            )
        if len(children) > MAX_BUTTONS_PER_ROW:
            form.add(
                ["components", i, "components"],
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_BUTTONS_PER_ROW} or fewer in length.",
            )
        for j, c in enumerate(children):
            if c.get("type") == 4:
                form.add(
                    ["components", i, "components", j, "type"],
                    "COMPONENT_TYPE_INVALID",
                    "Text inputs are only allowed in modals",
                )
            _check_interactive(["components", i, "components", j], c, seen, form)


def check_message(
    payload: JSON,
    files: list[UploadedFile],
    *,
    size_limit: int,
    kept_attachments: int = 0,
    require_content: bool = True,
) -> None:
    """All message limits. Raises 413/40005 for oversized uploads, 400/50035 otherwise.

    `size_limit` applies to each file, not to their total
    (https://discord.com/developers/docs/reference#uploading-files: "The file upload size
    limit applies to each file in a request"). `kept_attachments` is the number of existing
    attachments an edit keeps.
    """
    if any(len(f.data) > size_limit for f in files):
        raise DiscordApiError(413, 40005, "Request entity too large")
    form = FormErrors()
    content = payload.get("content")
    if content is not None and not isinstance(content, str):
        content = str(content)
    form.too_long(["content"], content, MAX_CONTENT)
    check_embeds(payload.get("embeds") or [], form)
    check_components(payload.get("components") or [], int(payload.get("flags") or 0), form)
    if len(files) + kept_attachments > MAX_ATTACHMENTS:
        form.add(
            ["attachments"],
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_ATTACHMENTS} or fewer in length.",
        )
    form.raise_if_any()
    if require_content and not (
        content
        or payload.get("embeds")
        or payload.get("components")
        or files
        or kept_attachments
        or payload.get("sticker_ids")
        or payload.get("poll")
    ):
        raise DiscordApiError(400, 50006, "Cannot send an empty message")


def check_modal(data: JSON) -> None:
    """Modal limits: title 1..45, custom_id 1..100, 1..5 top-level components."""
    form = FormErrors()
    title = data.get("title")
    if not title:
        form.add(["data", "title"], "BASE_TYPE_REQUIRED", "This field is required")
    form.too_long(["data", "title"], title, MAX_MODAL_TITLE)
    _check_custom_id(["data"], data.get("custom_id"), set(), form)
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        form.add(
            ["data", "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
        )
    seen: set[str] = set()
    for i, c in enumerate(components):
        if c.get("type") == 18:
            form.too_long(["data", "components", i, "label"], c.get("label"), 45)
        for j, child in enumerate(walk_components([c])):
            if child is c:
                continue
            _check_interactive(["data", "components", i, j], child, seen, form)
    form.raise_if_any()


def check_choices(data: JSON) -> None:
    """Autocomplete: at most 25 choices, names 1..100 characters."""
    form = FormErrors()
    choices = data.get("choices") or []
    if len(choices) > MAX_CHOICES:
        form.add(
            ["data", "choices"],
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_CHOICES} or fewer in length.",
        )
    for i, choice in enumerate(choices):
        name = choice.get("name")
        if not name:
            form.add(["data", "choices", i, "name"], "BASE_TYPE_REQUIRED", "This field is required")
        form.too_long(["data", "choices", i, "name"], name, 100)
        form.too_long(["data", "choices", i, "value"], choice.get("value"), 100)
    form.raise_if_any()
