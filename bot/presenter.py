"""Turns jobs and their outcomes into message content, embeds and files."""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.events import Failure, Progress
from bot.storage.jobs import Job, Reference

EMBED_COLOUR = discord.Colour(0x7C5CFF)
#: Sources that link to a message (a jump URL), with the name of their field on the result.
LINKED_SOURCES = {"style_from": "Style from", "avoid_style_of": "Avoiding the style of"}
FAILED_COLOUR = discord.Colour(0xE5484D)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: Characters Discord's markdown gives a meaning to (emphasis, code, spoilers, quotes,
#: headings, masked links, and ``<…>`` mentions, emoji and timestamps), and a list's dash.
_MARKDOWN = re.compile(r"([\\*_~`|>\[\]()#<])|(?m:^(\s*)-)")


def plain(text: str, limit: int | None = None) -> str:
    """Member text shown as itself: every markdown character escaped (``[label](url)`` links,
    ``<@id>`` mentions, ``**bold**``, headings…), so a prompt cannot make the bot's message
    say or link anything it did not write (pings are off anyway: allowed_mentions none).
    With ``limit``, cut to that many characters after escaping."""
    escaped = _MARKDOWN.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\-", text)
    escaped = discord.utils.escape_mentions(escaped)
    if limit is None or len(escaped) <= limit:
        return escaped
    cut = escaped[: limit - 1]
    if (len(cut) - len(cut.rstrip("\\"))) % 2:  # never leave half an escape at the end
        cut = cut[:-1]
    return cut + "…"


def quote_prompt(prompt: str, limit: int = 300) -> str:
    """The prompt as a one-paragraph quote line for message content."""
    flat = " ".join(prompt.split())
    return "> " + plain(flat, limit)


def format_elapsed(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


def progress_content(job: Job, progress: Progress, *, batch: int | None = None) -> str:
    """The job message while it runs (``batch``: how many images share it)."""
    batch = batch if batch is not None else job.batch_size
    lines = {
        "queued": f"⏳ **Queued**: {progress.note or 'waiting for a free slot'}",
        "submitted": "📨 **Sent to Krea 2**: waiting for a worker",
        "processing": f"🎨 **Generating…** {format_elapsed(progress.elapsed)}",
        "waiting": f"⏳ **Waiting**: {progress.note or 'the image service is busy'}",
        "paused": f"⏸️ **Paused**: {progress.note or 'the image service is unavailable'}",
    }
    # The gateway's own QUEUED (after the submit) reads as "sent", not as our queue.
    stage = "submitted" if progress.stage == "queued" and job.request_id else progress.stage
    head = lines.get(stage, f"⏳ **{progress.stage.title()}**")
    if batch > 1:
        head += f" · {batch} images"
    return f"{head}\n{quote_prompt(job.params.prompt)}"


FAILURE_TEXT = {
    "refused": "🚫 **Refused by the model's content filter.** Try rewording the prompt.",
    "balance": (
        "💳 **The server's Pixazo balance is empty**, so nothing was generated. "
        "Ask a server admin to top it up."
    ),
    "unauthorized": (
        "🔑 **The image service refused this bot's credentials.** "
        "Ask a server admin to check the bot's setup."
    ),
    "rate_limited": (
        "⏳ **The image service is rate limiting us** and the job could not be sent in time. "
        "Try again in a minute."
    ),
    "gateway_down": (
        "📡 **The image service is unreachable or failing right now.** Try again in a few minutes."
    ),
    "timeout": "⌛ **The image took too long** and was abandoned. Try again.",
    "bad_request": "⚠️ **The image service rejected the request**: {detail}",
    "failed": "❌ **The generation failed**: {detail}. Try again or change the prompt.",
    "error": "❌ **The image service had an internal error** (not charged). Try again.",
    "interrupted": (
        "⚠️ **The bot restarted while sending this job**, so it may already have been "
        "charged. It was not re-sent automatically: press **Retry** to send it again."
    ),
    "uncertain": (
        "⚠️ **The image service did not confirm it received this job**, so it may already "
        "have been charged. To avoid paying twice it was not re-sent: press **Retry** to send "
        "it again."
    ),
    "download": "❌ **The finished image could not be fetched**: {detail}",
    "delivery": (
        "❌ **The image was made but could not be posted here.** Ask an admin to check "
        "the bot's permissions (Send Messages, Attach Files, Embed Links)."
    ),
    "internal": "❌ **Something went wrong on our side** ({detail}). Try again.",
    "storage": (
        "⚠️ **kreabot cannot save its work right now** (its database is full, locked or "
        "unreadable). This job is kept and continues once the bot is restarted; ask a server "
        "admin to check the bot's storage."
    ),
}


def failure_content(job: Job, failure: Failure) -> str:
    """The job message after it failed, in plain words."""
    template = FAILURE_TEXT.get(failure.kind, FAILURE_TEXT["internal"])
    detail = shorten(" ".join(failure.detail.split()), 600) or "no details"
    return f"{template.format(detail=detail)}\n{quote_prompt(job.params.prompt)}"


def _strength(value: float) -> str:
    return f"{value:g}"


def describe_source(job: Job, key: str) -> str:
    """`` (server default)`` when the value came from a default; empty for the command."""
    source = job.sources.get(key)
    return f" ({source})" if source and source != "option" else ""


def result_embed(job: Job, *, filename: str, parent_url: str | None = None) -> discord.Embed:
    """The embed under a result: prompt, every parameter used and who asked."""
    params = job.params
    embed = discord.Embed(description=plain(params.prompt, 4000), colour=EMBED_COLOUR)
    embed.add_field(name="Seed", value=f"`{params.seed}`", inline=True)
    embed.add_field(
        name="Aspect", value=params.aspect_ratio + describe_source(job, "aspect_ratio"), inline=True
    )
    embed.add_field(
        name="Creativity",
        value=params.creativity + describe_source(job, "creativity"),
        inline=True,
    )
    if params.styles:
        styles = ", ".join(f"`{s.id}` ×{_strength(s.strength)}" for s in params.styles)
        embed.add_field(
            name="Styles",
            value=shorten(styles + describe_source(job, "styles"), 1024),
            inline=False,
        )
    if params.moodboards:
        board = params.moodboards[0]
        label = job.sources.get("moodboard_name") or f"`{board.id}`"
        embed.add_field(
            name="Moodboard",
            value=f"{label} ×{_strength(board.strength)}{describe_source(job, 'moodboards')}",
            inline=False,
        )
    if params.image_style_references:
        toward = [r for r in params.image_style_references if r.strength >= 0]
        away = [r for r in params.image_style_references if r.strength < 0]
        parts = []
        if toward:
            parts.append(
                f"{len(toward)} image(s) ×{', '.join(_strength(r.strength) for r in toward)}"
            )
        if away:
            parts.append(f"avoid {len(away)} ×{', '.join(_strength(r.strength) for r in away)}")
        embed.add_field(name="Style references", value="; ".join(parts), inline=False)
    for key, name in LINKED_SOURCES.items():
        if job.sources.get(key):
            embed.add_field(name=name, value=f"[the source message]({job.sources[key]})")
    embed.add_field(name="Requested by", value=f"<@{job.user_id}>", inline=True)
    if parent_url and job.parent_id:
        what = (job.variant or "variation").replace("_", " ")
        embed.add_field(
            name="Made from", value=f"{what} of [job #{job.parent_id}]({parent_url})", inline=True
        )
    embed.set_image(url=f"attachment://{filename}")
    embed.set_footer(text=f"Krea 2 Large · job #{job.id}")
    return embed


def reference_embed(reference: Reference, filename: str) -> discord.Embed:
    """A small embed showing one reference image kept with the result."""
    role = "Avoid" if reference.role == "avoid" else "Style reference"
    embed = discord.Embed(title=f"{role} ×{_strength(reference.strength)}", colour=EMBED_COLOUR)
    embed.set_thumbnail(url=f"attachment://{filename}")
    return embed


def batch_embed(jobs: list[Job], images: list[Any]) -> discord.Embed:
    """The embed of a batch: every seed and the shared parameters. It shows no image: the
    message's attachments are the images, each shown once."""
    embed = result_embed(jobs[0], filename="")
    embed.set_image(url=None)
    seeds = " · ".join(
        f"#{i + 1} `{job.seed}`" + ("" if image is not None else " (failed)")
        for i, (job, image) in enumerate(zip(jobs, images, strict=True))
    )
    embed.set_field_at(0, name="Seeds", value=seeds, inline=False)
    embed.set_footer(text=f"Krea 2 Large · jobs #{jobs[0].id}-#{jobs[-1].id}")
    return embed
