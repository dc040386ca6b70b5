"""Request bodies checked against Discord's own OpenAPI 3.1 description of the v10 HTTP API.

`discord_api/openapi.json` is a copy of Discord's spec (repository `discord/discord-api-spec`,
file `specs/openapi.json`, MIT licence in `discord_api/LICENSE`). Every JSON body the bot sends
to a route that has a request schema there is validated with `jsonschema` (Draft 2020-12, every
`$ref` resolved inside the document), and violations are answered as Discord answers them:
400 with code 50035 "Invalid Form Body" and the nested `errors` object.

The document is loaded and patched once per process and each route's validator is built once
(`functools.cache`). The patches are listed in `_relax` and `_tighten`, each with its reason:
- relaxations where discord.py's well-formed output fails the spec but Discord accepts it
  (the fake must never be stricter than Discord);
- tightenings where Discord's documented limits are lower than the spec's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.fake_discord.validation import FormErrors

SPEC_FILE = Path(__file__).with_name("discord_api") / "openapi.json"
SPEC_URI = "urn:discord-api-spec:openapi.json"
SNOWFLAKE_PATTERN = "^(0|[1-9][0-9]*)$"

# Interaction callback bodies are a union; Discord picks the variant by `type`, so the fake
# validates against that variant only (the errors then name the field that is wrong).
CALLBACK_SCHEMAS = {
    1: "PongInteractionCallbackRequest",
    4: "CreateMessageInteractionCallbackRequest",
    5: "CreateMessageInteractionCallbackRequest",
    6: "UpdateMessageInteractionCallbackRequest",
    7: "UpdateMessageInteractionCallbackRequest",
    8: "ApplicationCommandAutocompleteCallbackRequest",
    9: "ModalInteractionCallbackRequest",
    12: "LaunchActivityInteractionCallbackRequest",
}
CALLBACK_PATH = "/interactions/{interaction_id}/{interaction_token}/callback"
# Executing a webhook accepts `IncomingWebhookRequestPartial` or its update subset; the first
# is the wider of the two (no schema forbids extra keys), so it alone decides.
EXECUTE_WEBHOOK_PATH = "/webhooks/{webhook_id}/{webhook_token}"


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


def _relax(doc: dict[str, Any]) -> None:
    """Loosen the checks that discord.py's own, accepted output fails."""
    # discord.py sends a new upload's attachment `id` as its integer index (`File.to_dict`),
    # and Discord parses snowflakes given as JSON integers; the spec allows only strings.
    doc["components"]["schemas"]["SnowflakeType"] = {
        "anyOf": [
            {"type": "string", "pattern": SNOWFLAKE_PATTERN},
            {"type": "integer", "minimum": 0},
        ],
        "format": "snowflake",
    }
    # Permissions are serialized as strings of digits everywhere in Discord's JSON, and
    # discord.py sends `default_member_permissions` that way; the spec says integer only.
    for name in (
        "ApplicationCommandCreateRequest",
        "ApplicationCommandUpdateRequest",
        "ApplicationCommandPatchRequestPartial",
    ):
        props = _schema(doc, name)["properties"]
        if "default_member_permissions" in props:
            props["default_member_permissions"] = {
                "oneOf": [
                    {"type": "null"},
                    {"type": "integer", "minimum": 0},
                    {"type": "string", "pattern": SNOWFLAKE_PATTERN},
                ]
            }


def _tighten(doc: dict[str, Any]) -> None:
    """Apply Discord's documented limits where the spec is more lenient."""
    # https://discord.com/developers/docs/resources/message#create-message-jsonform-params:
    # content is "up to 2000 characters" for bots; the spec allows 4000 (the Nitro limit).
    for name in ("MessageCreateRequest", "MessageEditRequestPartial"):
        _schema(doc, name)["properties"]["content"]["maxLength"] = 2000


@functools.cache
def _document() -> dict[str, Any]:
    with SPEC_FILE.open(encoding="utf-8") as handle:
        doc: dict[str, Any] = json.load(handle)
    _relax(doc)
    _tighten(doc)
    return doc


@functools.cache
def _registry() -> Registry[Any]:
    resource = Resource.from_contents(_document(), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def _segments_match(fake_template: str, spec_path: str) -> bool:
    ours, theirs = fake_template.strip("/").split("/"), spec_path.strip("/").split("/")
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs, strict=True):
        a_param, b_param = a.startswith("{"), b.startswith("{")
        if a_param != b_param or (not a_param and a != b):
            return False
    return True


@functools.cache
def spec_path_for(method: str, fake_template: str) -> str | None:
    """The spec's path for one of the fake's route templates (parameter names may differ)."""
    for path, item in _document()["paths"].items():
        if method.lower() in item and _segments_match(fake_template, path):
            return str(path)
    return None


@functools.cache
def _validator(method: str, spec_path: str, variant: str | None) -> Draft202012Validator | None:
    if variant is not None:
        ref = f"{SPEC_URI}#/components/schemas/{variant}"
    else:
        operation = _document()["paths"][spec_path][method.lower()]
        body = operation.get("requestBody")
        if body is None or "application/json" not in body["content"]:
            return None
        pointer = "/".join(
            part.replace("~", "~0").replace("/", "~1")
            for part in ("paths", spec_path, method.lower(), "requestBody", "content")
        )
        ref = f"{SPEC_URI}#/{pointer}/application~1json/schema"
    return Draft202012Validator({"$ref": ref}, registry=_registry())


def has_request_schema(method: str, fake_template: str) -> bool:
    """Whether the spec describes a JSON body for this route."""
    path = spec_path_for(method, fake_template)
    return path is not None and _validator(method, path, None) is not None


def check_request(method: str, fake_template: str, body: Any, form: FormErrors) -> None:
    """Add every violation of the route's request schema by `body` to `form`."""
    path = spec_path_for(method, fake_template)
    if path is None:
        return
    variant: str | None = None
    if path == CALLBACK_PATH:
        rtype = body.get("type") if isinstance(body, dict) else None
        variant = CALLBACK_SCHEMAS.get(rtype) if isinstance(rtype, int) else None
        if variant is None:
            choices = ", ".join(str(t) for t in sorted(CALLBACK_SCHEMAS))
            form.add(["type"], "BASE_TYPE_CHOICES", f"Value must be one of {{{choices}}}.")
            return
    elif path == EXECUTE_WEBHOOK_PATH and method.upper() == "POST":
        variant = "IncomingWebhookRequestPartial"
    validator = _validator(method, path, variant)
    if validator is None:
        return
    for error in validator.iter_errors(body):
        for leaf in _leaves(error):
            for where, code, message in _describe(leaf):
                form.add(where, code, message)


# --------------------------------------------------------------------------- error translation


def _is_discriminator_miss(error: ValidationError, base: list[Any]) -> bool:
    """A branch that failed on its `type` tag or on the instance's JSON type is not the one
    the sender meant; errors of the branch that matched its tag are the useful ones."""
    where = list(error.absolute_path)
    if where == base and error.validator == "type":
        return True
    return where == [*base, "type"] and error.validator in ("enum", "const", "oneOf")


def _leaves(error: ValidationError) -> Iterator[ValidationError]:
    """Descend through `oneOf`/`anyOf` into the branch the sender most likely meant."""
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        yield error
        return
    base = list(error.absolute_path)
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    if all(len(errs) == 1 and errs[0].validator in ("const", "enum") for errs in branches.values()):
        yield error  # an enumeration written as oneOf of consts: one "choices" error
        return

    def score(item: tuple[int, list[ValidationError]]) -> tuple[bool, int, int]:
        index, errs = item
        missed = any(_is_discriminator_miss(e, base) for e in errs)
        return missed, len(errs), index

    _, chosen = min(branches.items(), key=score)
    for sub in chosen:
        yield from _leaves(sub)


def _choices(error: ValidationError) -> str:
    values: list[Any] = []
    if error.validator == "enum":
        values = list(error.validator_value)
    elif error.validator == "const":
        values = [error.validator_value]
    else:
        for branch in error.validator_value or []:
            if isinstance(branch, dict) and "const" in branch:
                values.append(branch["const"])
    return "{" + ", ".join(json.dumps(v) for v in values) + "}"


_TYPE_CODES = {
    "object": ("DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"),
    "array": ("LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"),
    "string": ("STRING_TYPE_CONVERT", "Could not interpret {value} as string."),
    "integer": ("NUMBER_TYPE_COERCE", "Value {value} is not int."),
    "number": ("NUMBER_TYPE_COERCE", "Value {value} is not a valid number."),
    "boolean": ("BOOLEAN_TYPE_CONVERT", "Must be either true or false."),
}


def _describe(error: ValidationError) -> Iterator[tuple[list[str | int], str, str]]:
    """Discord's (path, code, message) for one schema violation (codes as Discord names them,
    as far as they are known; the rest are close approximations)."""
    where: list[str | int] = list(error.absolute_path)
    kind, limit, value = error.validator, error.validator_value, error.instance
    if kind == "required":
        for key in limit:
            if isinstance(value, dict) and key not in value:
                yield [*where, key], "BASE_TYPE_REQUIRED", "This field is required"
    elif kind in ("maxLength", "maxItems", "maxProperties"):
        yield where, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."
    elif kind in ("minLength", "minItems", "minProperties"):
        yield where, "BASE_TYPE_MIN_LENGTH", f"Must be {limit} or more in length."
    elif kind == "maximum":
        yield where, "NUMBER_TYPE_MAX", f"int value should be less than or equal to {limit}."
    elif kind == "minimum":
        yield where, "NUMBER_TYPE_MIN", f"int value should be greater than or equal to {limit}."
    elif kind in ("enum", "const") or (kind in ("oneOf", "anyOf") and error.context):
        yield where, "BASE_TYPE_CHOICES", f"Value must be one of {_choices(error)}."
    elif kind == "type":
        expected = limit if isinstance(limit, str) else next(iter(limit), "")
        code, message = _TYPE_CODES.get(expected, ("BASE_TYPE_INVALID", "Invalid type."))
        yield where, code, message.format(value=json.dumps(value, default=str)[:50])
    elif kind == "pattern" and limit == SNOWFLAKE_PATTERN:
        yield where, "NUMBER_TYPE_COERCE", f"Value {json.dumps(value)} is not snowflake."
    elif kind == "pattern":
        yield where, "STRING_TYPE_REGEX", "String value did not match validation regex."
    elif kind == "uniqueItems":
        yield where, "LIST_ITEM_VALUE_DUPLICATE", "List items must be unique."
    elif kind in ("oneOf", "anyOf"):
        yield where, "UNION_TYPE_CHOICES", "Value matches none or several of the allowed forms."
    else:
        yield where, "BASE_TYPE_INVALID", error.message[:200]
