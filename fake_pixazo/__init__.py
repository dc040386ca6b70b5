"""A fake Pixazo gateway for Krea 2 Large, for tests, benchmarks and trying the bot offline.

Run ``python -m fake_pixazo`` to serve it from the command line, or use
:class:`FakePixazo` from a test (``async with FakePixazo() as fake: ...``). See
:mod:`fake_pixazo.server` for the scripting and recording API.
"""

from fake_pixazo.images import image_size, render_png
from fake_pixazo.server import (
    KEY_HEADER,
    MODEL_ID,
    STATUS_PATH_PREFIX,
    SUBMIT_PATH,
    WEBHOOK_HEADER,
    FakePixazo,
    Job,
    Outcome,
    RecordedRequest,
    WebhookDelivery,
)
from fake_pixazo.validation import GenerationParams, ValidationFailed, validate_request

__all__ = [
    "KEY_HEADER",
    "MODEL_ID",
    "STATUS_PATH_PREFIX",
    "SUBMIT_PATH",
    "WEBHOOK_HEADER",
    "FakePixazo",
    "GenerationParams",
    "Job",
    "Outcome",
    "RecordedRequest",
    "ValidationFailed",
    "WebhookDelivery",
    "image_size",
    "render_png",
    "validate_request",
]
