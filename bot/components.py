"""Persistent buttons and selects on results.

Every item is a :class:`discord.ui.DynamicItem` whose custom_id carries only ids, so it
keeps working after a restart, after days and after the interaction token expired. What
a press means is loaded from SQLite by the :class:`ResultActions` the bot provides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import discord

from bot.pixazo import ASPECT_RATIOS

if TYPE_CHECKING:
    from bot.storage.jobs import Job

#: Job ids in custom_ids have at most 18 digits: every such number fits SQLite's 64-bit
#: integers, so a forged longer id is simply "no longer available", never an OverflowError.
UNAVAILABLE = "This result is no longer available."
PREFIX = "krea:"


class ResultActions(Protocol):
    """What pressing a result's controls does (implemented by the variations cog)."""

    async def regenerate(self, interaction: discord.Interaction[Any], job_id: int) -> None: ...
    async def vary(self, interaction: discord.Interaction[Any], job_id: int, mode: str) -> None: ...
    async def remix(self, interaction: discord.Interaction[Any], job_id: int) -> None: ...
    async def reframe(
        self, interaction: discord.Interaction[Any], job_id: int, ratios: list[str]
    ) -> None: ...
    async def delete(self, interaction: discord.Interaction[Any], job_id: int) -> None: ...
    async def retry(self, interaction: discord.Interaction[Any], job_id: int) -> None: ...
    async def open(self, interaction: discord.Interaction[Any], job_id: int) -> None: ...


async def _actions(interaction: discord.Interaction[Any]) -> ResultActions | None:
    actions = getattr(interaction.client, "result_actions", None)
    if actions is None:
        await interaction.response.send_message(UNAVAILABLE, ephemeral=True)
    return actions


class RegenerateButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"krea:regen:(?P<job>[0-9]{1,18})"
):
    """Same parameters, new seed."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Regenerate",
                emoji="🔁",
                style=discord.ButtonStyle.secondary,
                custom_id=f"krea:regen:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RegenerateButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        if actions := await _actions(interaction):
            await actions.regenerate(interaction, self.job_id)


class VaryButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"krea:vary:(?P<mode>subtle|strong):(?P<job>[0-9]{1,18})",
):
    """The result becomes a style reference for a new image."""

    def __init__(self, job_id: int, mode: str, label: str | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or f"Vary ({mode})",
                emoji="🌀" if mode == "strong" else "🪶",
                style=discord.ButtonStyle.secondary,
                custom_id=f"krea:vary:{mode}:{job_id}",
            )
        )
        self.job_id = job_id
        self.mode = mode

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> VaryButton:
        return cls(int(match["job"]), match["mode"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        if actions := await _actions(interaction):
            await actions.vary(interaction, self.job_id, self.mode)


class RemixButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"krea:remix:(?P<job>[0-9]{1,18})"
):
    """Edit the prompt (and seed) in a modal and run it again."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Remix",
                emoji="✏️",
                style=discord.ButtonStyle.secondary,
                custom_id=f"krea:remix:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RemixButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        if actions := await _actions(interaction):
            await actions.remix(interaction, self.job_id)


class OpenButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"krea:open:(?P<job>[0-9]{1,18})"
):
    """Post one image of a batch full size, as a result of its own."""

    def __init__(self, job_id: int, label: str = "Open") -> None:
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji="⤢",
                style=discord.ButtonStyle.secondary,
                custom_id=f"krea:open:{job_id}",
                row=0,
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> OpenButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        if actions := await _actions(interaction):
            await actions.open(interaction, self.job_id)


class DeleteButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"krea:delete:(?P<job>[0-9]{1,18})"
):
    """Remove the result (requester or Manage Messages only)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete",
                emoji="🗑️",
                style=discord.ButtonStyle.danger,
                custom_id=f"krea:delete:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> DeleteButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        if actions := await _actions(interaction):
            await actions.delete(interaction, self.job_id)


class RetryButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"krea:retry:(?P<job>[0-9]{1,18})"
):
    """Send a failed or interrupted job again, as a new job."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Retry",
                emoji="🔄",
                style=discord.ButtonStyle.primary,
                custom_id=f"krea:retry:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RetryButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        if actions := await _actions(interaction):
            await actions.retry(interaction, self.job_id)


class ReframeSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]], template=r"krea:reframe:(?P<job>[0-9]{1,18})"
):
    """Pick other aspect ratios; each becomes its own job."""

    def __init__(self, job_id: int, current: str = "1:1") -> None:
        options = [
            discord.SelectOption(label=f"Reframe {ratio}", value=ratio)
            for ratio in ASPECT_RATIOS
            if ratio != current
        ]
        super().__init__(
            discord.ui.Select(
                placeholder="Reframe to other aspect ratios…",
                min_values=1,
                max_values=len(options),
                options=options,
                custom_id=f"krea:reframe:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ReframeSelect:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        values = [v for v in self.item.values if v in ASPECT_RATIOS]
        if actions := await _actions(interaction):
            await actions.reframe(interaction, self.job_id, values)


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    RegenerateButton,
    VaryButton,
    RemixButton,
    DeleteButton,
    RetryButton,
    ReframeSelect,
    OpenButton,
)


def matches_any(custom_id: str, items: Iterable[type[discord.ui.DynamicItem[Any]]]) -> bool:
    """Whether one of ``items`` will handle ``custom_id``."""
    return any(item.__discord_ui_compiled_template__.fullmatch(custom_id) for item in items)


def result_view(job: Job) -> discord.ui.View:
    """The controls under a finished result."""
    view = discord.ui.View(timeout=None)
    view.add_item(RegenerateButton(job.id))
    view.add_item(VaryButton(job.id, "subtle"))
    view.add_item(VaryButton(job.id, "strong"))
    view.add_item(RemixButton(job.id))
    view.add_item(DeleteButton(job.id))
    view.add_item(ReframeSelect(job.id, job.params.aspect_ratio))
    return view


def retry_view(job: Job) -> discord.ui.View:
    """The single Retry button under a failed or interrupted job."""
    view = discord.ui.View(timeout=None)
    view.add_item(RetryButton(job.id))
    return view


def batch_view(jobs: list[Job], present: list[bool]) -> discord.ui.View:
    """Under a batch grid: open each image full size, vary each one, delete the batch."""
    view = discord.ui.View(timeout=None)
    for index, (job, ok) in enumerate(zip(jobs, present, strict=True)):
        if ok:
            view.add_item(OpenButton(job.id, label=f"{index + 1}"))
    for index, (job, ok) in enumerate(zip(jobs, present, strict=True)):
        if ok:
            item = VaryButton(job.id, "subtle", label=f"V{index + 1}")
            item.item.row = 1
            view.add_item(item)
    delete = DeleteButton(jobs[0].id)
    delete.item.row = 2
    view.add_item(delete)
    return view
