"""Persistent buttons and selects on results.

Every item is a :class:`discord.ui.DynamicItem` whose custom_id carries only a job id, so it
keeps working after a restart, after days and after the interaction token expired. All of
them derive from :class:`JobControl`: it checks the press in ``interaction_check`` (the job
belongs to this server, the member may press it) through the :class:`ResultActions` the
variations cog provides, and sends every error down the one private path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

import discord

from bot.errors import UserError
from bot.interactions import GuardedItem, report_error
from bot.pixazo import ASPECT_RATIOS
from bot.storage.jobs import Job

#: Job ids in custom_ids have at most 18 digits: every such number fits SQLite's 64-bit
#: integers, so a forged longer id is simply "no longer available", never an OverflowError.
UNAVAILABLE = "This result is no longer available."
#: The answer to a press of a control no item knows (forged, foreign, or from an old version).
UNKNOWN_CONTROL = "This button is no longer available."
PREFIX = "krea:"
JOB_ID = r"(?P<job>[0-9]{1,18})"


class ResultActions(Protocol):
    """What pressing a result's controls does (implemented by the variations cog)."""

    async def check(self, interaction: discord.Interaction[Any], action: str, job_id: int) -> Job:
        """The job a press acts on, once the member may press it; else raise UserError."""
        ...

    async def act(
        self, interaction: discord.Interaction[Any], action: str, job: Job, **options: Any
    ) -> None:
        """Do what the press asks."""
        ...


def _actions(interaction: discord.Interaction[Any]) -> ResultActions:
    actions: ResultActions | None = getattr(interaction.client, "result_actions", None)
    if actions is None:
        raise UserError(UNAVAILABLE, plain=True)
    return actions


class JobControl(GuardedItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"(?!)"):
    """A button acting on one job: ``krea:<action>:<job id>``.

    Subclasses name their ``action`` (the custom_id's middle part and the verb handed to
    :meth:`ResultActions.act`), label, emoji and style, and their own ``template``.
    """

    action: ClassVar[str]
    label: ClassVar[str]
    emoji: ClassVar[str]
    style: ClassVar[discord.ButtonStyle] = discord.ButtonStyle.secondary

    def __init__(
        self,
        job_id: int,
        *,
        label: str | None = None,
        row: int | None = None,
        emoji: str | None = None,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or self.label,
                emoji=emoji or self.emoji,
                style=self.style,
                custom_id=self.custom_id_for(job_id),
                row=row,
            )
        )
        self.job_id = job_id
        self.job: Job | None = None

    def custom_id_for(self, job_id: int) -> str:
        """The custom_id of this control for ``job_id``."""
        return f"krea:{self.action}:{job_id}"

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobControl:
        return cls(int(match["job"]))

    def options(self) -> dict[str, Any]:
        """What the press carries besides the job (a vary mode, chosen ratios)."""
        return {}

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        """The job exists in this server and the member may press this control."""
        try:
            self.job = await _actions(interaction).check(interaction, self.action, self.job_id)
        except Exception as exc:
            await report_error(interaction, exc)
            return False
        return True

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        assert self.job is not None
        await _actions(interaction).act(interaction, self.action, self.job, **self.options())


class RegenerateButton(JobControl, template=rf"krea:regen:{JOB_ID}"):
    """Same parameters, new seed."""

    action, label, emoji = "regen", "Regenerate", "🔁"


class RemixButton(JobControl, template=rf"krea:remix:{JOB_ID}"):
    """Edit the prompt (and seed) in a form and run it again."""

    action, label, emoji = "remix", "Remix", "✏️"


class OpenButton(JobControl, template=rf"krea:open:{JOB_ID}"):
    """Post one image of a batch full size, as a result of its own."""

    action, label, emoji = "open", "Open", "🔍"  # a real emoji: Discord refuses "⤢" (50035)


class DeleteButton(JobControl, template=rf"krea:delete:{JOB_ID}"):
    """Remove the result (requester or Manage Messages only)."""

    action, label, emoji = "delete", "Delete", "🗑️"
    style = discord.ButtonStyle.danger


class RetryButton(JobControl, template=rf"krea:retry:{JOB_ID}"):
    """Send a failed or interrupted job again, as a new job."""

    action, label, emoji = "retry", "Retry", "🔄"
    style = discord.ButtonStyle.primary


class VaryButton(JobControl, template=rf"krea:vary:(?P<mode>subtle|strong):{JOB_ID}"):
    """The result becomes a style reference for a new image."""

    action, label, emoji = "vary", "Vary", "🪶"

    def __init__(
        self, job_id: int, mode: str = "subtle", *, label: str | None = None, row: int | None = None
    ) -> None:
        self.mode = mode
        emoji = "🌀" if mode == "strong" else "🪶"
        super().__init__(job_id, label=label or f"Vary ({mode})", row=row, emoji=emoji)

    def custom_id_for(self, job_id: int) -> str:
        return f"krea:vary:{self.mode}:{job_id}"

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> VaryButton:
        return cls(int(match["job"]), match["mode"])

    def options(self) -> dict[str, Any]:
        return {"mode": self.mode}


class ReframeSelect(
    GuardedItem, discord.ui.DynamicItem[discord.ui.Select[Any]], template=rf"krea:reframe:{JOB_ID}"
):
    """Pick other aspect ratios; each becomes its own job."""

    action = "reframe"

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
        self.job: Job | None = None

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ReframeSelect:
        return cls(int(match["job"]))

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        """The job exists in this server and the member may make new images from it."""
        try:
            self.job = await _actions(interaction).check(interaction, self.action, self.job_id)
        except Exception as exc:
            await report_error(interaction, exc)
            return False
        return True

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        assert self.job is not None
        ratios = [v for v in self.item.values if v in ASPECT_RATIOS]
        await _actions(interaction).act(interaction, self.action, self.job, ratios=ratios)


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


def custom_ids_on(message: discord.Message | None) -> set[str]:
    """Every custom_id of the components of ``message``."""
    found: set[str] = set()
    if message is None:
        return found
    for row in message.components:
        children = getattr(row, "children", None) or [row]
        for child in children:
            custom_id = getattr(child, "custom_id", None)
            if custom_id:
                found.add(custom_id)
    return found


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


def retired_view(job: Job) -> discord.ui.View:
    """The Retry button once used: disabled, so nobody presses it again."""
    view = discord.ui.View(timeout=None)
    button = RetryButton(job.id, label="Retried")
    button.item.disabled = True
    view.add_item(button)
    return view


def batch_view(jobs: list[Job], present: list[bool]) -> discord.ui.View:
    """Under a batch grid: open each image full size, vary each one, delete the batch."""
    view = discord.ui.View(timeout=None)
    for index, (job, ok) in enumerate(zip(jobs, present, strict=True)):
        if ok:
            view.add_item(OpenButton(job.id, label=f"{index + 1}", row=0))
    for index, (job, ok) in enumerate(zip(jobs, present, strict=True)):
        if ok:
            view.add_item(VaryButton(job.id, "subtle", label=f"V{index + 1}", row=1))
    view.add_item(DeleteButton(jobs[0].id, row=2))
    return view
