"""Request models: every invalid input is refused locally, before anything is sent."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from bot.pixazo import (
    InvalidRequest,
    PixazoClient,
    StatusResponse,
    SubmitResponse,
    TextToImageRequest,
    build_request,
)
from fake_pixazo import FakePixazo

BOARD = "123e4567-e89b-12d3-a456-426614174000"


def refs(n: int) -> list[dict[str, Any]]:
    return [{"image_url": f"https://cdn.example.com/{i}.png", "strength": 0.5} for i in range(n)]


def styles(n: int) -> list[dict[str, Any]]:
    return [{"id": f"style-{i}", "strength": 1.0} for i in range(n)]


#: (fields given to build_request, text the error message must contain)
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"image_style_references": refs(11)}, "image_style_references"),
    ({"moodboards": [{"id": BOARD}, {"id": str(uuid.uuid4())}]}, "moodboards"),
    (
        {
            "image_style_references": [
                {"image_url": "https://a.example/x.png", "strength": math.nan}
            ]
        },
        "image_style_references.0.strength",
    ),
    (
        {
            "image_style_references": [
                {"image_url": "https://a.example/x.png", "strength": math.inf}
            ]
        },
        "image_style_references.0.strength",
    ),
    ({"styles": [{"id": "s", "strength": math.nan}]}, "styles.0.strength"),
    ({"moodboards": [{"id": BOARD, "strength": -math.inf}]}, "moodboards.0.strength"),
    ({"moodboards": [{"id": "not-a-uuid"}]}, "moodboards.0.id"),
    ({"aspect_ratio": "5:4"}, "aspect_ratio"),
    ({"creativity": "wild"}, "creativity"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n\t "}, "prompt"),
    (
        {"image_style_references": [{"image_url": "http://cdn.example.com/a.png"}]},
        "image_style_references.0.image_url",
    ),
    ({"styles": [{"id": "s", "strength": 2.5}]}, "styles.0.strength"),
    ({"moodboards": [{"id": BOARD, "strength": 1.6}]}, "moodboards.0.strength"),
    ({"styles": styles(11)}, "styles"),
    ({"negative_prompt": "ugly"}, "negative_prompt"),
    ({"styles": [{"id": "s", "weight": 1.0}]}, "styles.0.weight"),
    ({"seed": 2**53}, "seed"),  # past what a Discord integer option can carry
    ({"seed": "42"}, "seed"),
]


@pytest.mark.parametrize(("changes", "field"), INVALID, ids=[f for _, f in INVALID])
async def test_invalid_input_is_rejected_before_sending(
    changes: dict[str, Any], field: str, fake: FakePixazo, client: PixazoClient
) -> None:
    fields: dict[str, Any] = {"prompt": "a lighthouse at dusk", **changes}
    with pytest.raises(InvalidRequest) as caught:
        await client.submit(build_request(**fields))
    assert field in caught.value.message
    assert str(caught.value) == caught.value.message
    assert fake.requests == []


def test_missing_prompt_is_named() -> None:
    with pytest.raises(InvalidRequest, match="prompt"):
        build_request(aspect_ratio="1:1")


def test_limits_are_inclusive() -> None:
    request = build_request(
        prompt="p",
        image_style_references=refs(10),
        styles=[{"id": f"s{i}", "strength": -2.0 if i % 2 else 2.0} for i in range(10)],
        moodboards=[{"id": BOARD, "strength": 1.5}],
    )
    assert len(request.image_style_references) == 10
    assert len(request.styles) == 10
    assert request.moodboards[0].strength == 1.5


def test_defaults_in_body() -> None:
    body = build_request(prompt="A farmhouse").to_body()
    assert body == {
        "prompt": "A farmhouse",
        "aspect_ratio": "1:1",
        "creativity": "medium",
        "image_style_references": [],
        "styles": [],
        "moodboards": [],
    }


def test_default_strengths() -> None:
    body = build_request(
        prompt="p",
        image_style_references=[{"image_url": "https://a.example/x.png"}],
        styles=[{"id": "s"}],
        moodboards=[{"id": BOARD.upper()}],
    ).to_body()
    assert body["image_style_references"] == [
        {"image_url": "https://a.example/x.png", "strength": 1.0}
    ]
    assert body["styles"] == [{"id": "s", "strength": 1.0}]
    assert body["moodboards"] == [{"id": BOARD, "strength": 0.23}]


def test_request_is_immutable() -> None:
    request = build_request(prompt="p")
    assert isinstance(request, TextToImageRequest)
    with pytest.raises(ValueError):
        request.prompt = "other"  # type: ignore[misc]


def test_status_response_parses_the_reference_example() -> None:
    status = StatusResponse.model_validate(
        {
            "request_id": "krea-2-large-text-to-image_019d0000-0000-7000-8000-000000000000",
            "status": "COMPLETED",
            "model_id": "krea-2-large-text-to-image",
            "error": None,
            "output": {
                "media_url": ["https://pub.r2.dev/v1/x/output.png"],
                "media_type": "image/png",
            },
            "created_at": "2026-03-31T10:00:00.000Z",
            "updated_at": "2026-03-31T10:00:15.000Z",
            "completed_at": "2026-03-31T10:00:15.000Z",
            "something_new": 1,
        }
    )
    assert status.terminal
    assert status.output is not None
    assert status.output.media_url == ["https://pub.r2.dev/v1/x/output.png"]
    assert status.completed_at is not None and status.completed_at.second == 15
    queued = StatusResponse.model_validate({"request_id": "r", "status": "QUEUED"})
    assert not queued.terminal


# -- answers are read leniently ----------------------------------------------------------------


def test_a_submit_answer_needs_only_its_request_id() -> None:
    accepted = SubmitResponse.model_validate({"request_id": "r-1", "status": 7, "extra": True})
    assert accepted.request_id == "r-1" and accepted.polling_url is None
    with pytest.raises(ValidationError):
        SubmitResponse.model_validate({"status": "QUEUED"})  # no id: it cannot be tracked


def test_an_unknown_status_is_still_running_and_odd_fields_are_tolerated() -> None:
    odd = StatusResponse.model_validate(
        {"status": "warming_up", "output": "", "created_at": "not a time", "completed_at": 3}
    )
    assert odd.status == "WARMING_UP" and not odd.terminal
    assert odd.output is None and odd.media_urls == []
    assert odd.created_at is None and odd.completed_at is None


def test_media_url_may_be_one_string() -> None:
    done = StatusResponse.model_validate(
        {
            "request_id": "r-1",
            "status": "COMPLETED",
            "output": {"media_url": "https://cdn.example/out.png", "media_type": None},
            "completed_at": "2026-03-31T10:00:15.000Z",
        }
    )
    assert done.terminal and done.media_urls == ["https://cdn.example/out.png"]
    assert done.completed_at is not None and done.completed_at.year == 2026
