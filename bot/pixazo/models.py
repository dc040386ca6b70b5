"""Pydantic models mirroring the Pixazo Krea 2 Large API reference."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidRequest

AspectRatio = Literal["1:1", "4:3", "3:2", "16:9", "2.35:1", "4:5", "2:3", "9:16"]
Creativity = Literal["raw", "low", "medium", "high"]
JobStatus = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "ERROR"]

ASPECT_RATIOS: tuple[str, ...] = get_args(AspectRatio)
CREATIVITY_LEVELS: tuple[str, ...] = get_args(Creativity)
TERMINAL_STATUSES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "ERROR"})

MAX_REFERENCES = 10
MAX_STYLES = 10
MAX_MOODBOARDS = 1
#: Krea documents -2..2 for style and reference strength.
STRENGTH_MIN, STRENGTH_MAX = -2.0, 2.0
#: Krea documents -0.5..1.5 for moodboard strength.
MOODBOARD_STRENGTH_MIN, MOODBOARD_STRENGTH_MAX = -0.5, 1.5
DEFAULT_MOODBOARD_STRENGTH = 0.23
MAX_PROMPT_LENGTH = 4000
#: The API documents the seed as an integer, with no range; a member may give any integer
#: Discord's integer options carry (|n| < 2^53).
SEED_MIN, SEED_MAX = -(2**53 - 1), 2**53 - 1
#: Seeds the bot picks itself stay within a signed 32-bit integer, which every backend takes.
RANDOM_SEED_MAX = 2**31 - 1

Strength = Annotated[float, Field(ge=STRENGTH_MIN, le=STRENGTH_MAX, allow_inf_nan=False)]
MoodboardStrength = Annotated[
    float,
    Field(ge=MOODBOARD_STRENGTH_MIN, le=MOODBOARD_STRENGTH_MAX, allow_inf_nan=False),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageStyleReference(_Strict):
    """An image whose look guides the generation; negative strength pushes away from it."""

    image_url: str
    strength: Strength = 1.0

    @field_validator("image_url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError("must be an https URL")
        return value


class Style(_Strict):
    """A Krea LoRA preset style."""

    id: Annotated[str, Field(min_length=1, max_length=200)]
    strength: Strength = 1.0

    @field_validator("id")
    @classmethod
    def _no_blank(cls, value: str) -> str:
        if not value.strip() or value != value.strip():
            raise ValueError("must be a style id without surrounding spaces")
        return value


class Moodboard(_Strict):
    """A Krea moodboard, identified by its UUID."""

    id: uuid.UUID
    strength: MoodboardStrength = DEFAULT_MOODBOARD_STRENGTH


class TextToImageRequest(_Strict):
    """The body of a Krea 2 Large text-to-image request."""

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_LENGTH)]
    aspect_ratio: AspectRatio = "1:1"
    creativity: Creativity = "medium"
    seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX, strict=True)] | None = None
    image_style_references: Annotated[
        tuple[ImageStyleReference, ...], Field(max_length=MAX_REFERENCES)
    ] = ()
    styles: Annotated[tuple[Style, ...], Field(max_length=MAX_STYLES)] = ()
    moodboards: Annotated[tuple[Moodboard, ...], Field(max_length=MAX_MOODBOARDS)] = ()

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def to_body(self) -> dict[str, Any]:
        """The JSON body exactly as the API reference shows it (seed only when set)."""
        return self.model_dump(mode="json", exclude_none=True)


class _Response(BaseModel):
    """Answers are read leniently: unknown fields are ignored, odd values are tolerated, so a
    surprise never loses the request id of a job that was paid for."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _lenient_time(value: Any) -> datetime | None:
    """A timestamp, or None when it is missing or does not parse."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


class SubmitResponse(_Response):
    """The 202 answer to a generate request: only ``request_id`` is needed."""

    request_id: Annotated[str, Field(min_length=1)]
    status: str | None = None
    polling_url: str | None = None

    @field_validator("status", "polling_url", mode="before")
    @classmethod
    def _text_or_none(cls, value: Any) -> str | None:
        return value if isinstance(value, str) and value else None


class Output(_Response):
    """The media a completed job produced (``media_url`` may come as one string or a list)."""

    media_url: list[str] = Field(default_factory=list)
    media_type: str | None = None

    @field_validator("media_url", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list | tuple):
            return [str(url) for url in value if isinstance(url, str) and url]
        return []

    @field_validator("media_type", mode="before")
    @classmethod
    def _type_or_none(cls, value: Any) -> str | None:
        return value if isinstance(value, str) and value else None


class StatusResponse(_Response):
    """The answer of the status endpoint (and the body of a webhook).

    A status the API reference does not list means the job is still running; ``output`` may
    be missing or empty while it runs; timestamps that do not parse are ignored.
    """

    request_id: str = ""
    status: str = "QUEUED"
    model_id: str | None = None
    error: str | None = None
    output: Output | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> str:
        return value.strip().upper() if isinstance(value, str) and value.strip() else "QUEUED"

    @field_validator("request_id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> str:
        return "" if value is None else str(value)

    @field_validator("model_id", "error", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str | None:
        return None if value is None else str(value)

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else None

    @field_validator("created_at", "updated_at", "completed_at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> datetime | None:
        return _lenient_time(value)

    @property
    def terminal(self) -> bool:
        """Whether the job will not change any more."""
        return self.status in TERMINAL_STATUSES

    @property
    def media_urls(self) -> list[str]:
        """The result's URLs (empty while running, or when a COMPLETED answer has none)."""
        return list(self.output.media_url) if self.output is not None else []


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line, user-readable summary of what is wrong, naming each field."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "request"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def build_request(**fields: Any) -> TextToImageRequest:
    """Validate ``fields`` into a request, raising :class:`InvalidRequest` when they are wrong."""
    try:
        return TextToImageRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from exc
