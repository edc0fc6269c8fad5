"""OpenAI's published API description as validators of our answers.

`openai-openapi.json` beside this file is OpenAI's OpenAPI document, trimmed to the
operations Tuneplane shares with OpenAI (see README.md). It is OpenAPI 3.1 with a few
3.0 forms that JSON Schema 2020-12 reads otherwise: `nullable: true` (3.1 spells it as a
type union or an `anyOf` with `{"type": "null"}`) and boolean `exclusiveMinimum` /
`exclusiveMaximum` (numbers in 2020-12). `to_json_schema` rewrites those; `$ref`s resolve
within the document, so one validator checks everything an answer holds.

    contract = load()
    contract.response("get", "/files/{file_id}").check(body)   # or
    contract.operation("retrieveFile").check(body)
    contract.error.check(error_body)
    contract.chat_chunk.check(chunk); contract.completion_chunk.check(chunk)

Extra fields are allowed wherever OpenAI's schemas allow them (nearly everywhere): our
extensions pass, OpenAI's fields must have OpenAI's types.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).with_name("openai-openapi.json")
BASE_URI = "urn:openai-openapi"
# A document changed by the test's amendments; `Amendment`s edit a copy of the converted one.
Amendment = Callable[[dict[str, Any]], None]
# Where this module keeps the schemas it derives (the completions stream chunk).
DERIVED = "x-tuneplane-derived"


def to_json_schema(node: Any) -> Any:
    """`node` (any part of the document) with its OpenAPI 3.0 forms in 2020-12's spelling."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items()}
    for bound in ("Minimum", "Maximum"):
        flag = out.get(f"exclusive{bound}")
        if isinstance(flag, bool):
            del out[f"exclusive{bound}"]
            limit = out.get(bound.lower())
            if flag and limit is not None:
                del out[bound.lower()]
                out[f"exclusive{bound}"] = limit
    nullable = out.pop("nullable", False)
    if nullable is True:
        return _or_null(out)
    return out


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` that also accepts null."""
    kind = schema.get("type")
    if isinstance(kind, str) and "$ref" not in schema:
        widened = {**schema, "type": [kind, "null"]}
        if "enum" in widened and None not in widened["enum"]:
            widened["enum"] = [*widened["enum"], None]
        return widened
    # A $ref, or a schema without one type (anyOf, oneOf, ...): one more alternative.
    return {"anyOf": [schema, {"type": "null"}]}


def extend_enum(schema: str, field: str, *values: str) -> Amendment:
    """An amendment: `values` allowed in components.schemas[schema].properties[field]."""

    def amend(document: dict[str, Any]) -> None:
        prop = document["components"]["schemas"][schema]["properties"][field]
        prop["enum"] = [*prop["enum"], *(v for v in values if v not in prop["enum"])]

    return amend


@dataclass(frozen=True)
class SchemaCheck:
    """One schema of the document, ready to check instances against."""

    name: str
    validator: Draft202012Validator

    def errors(self, instance: Any) -> list[str]:
        """Every violation, as `path: message` (empty when the instance conforms)."""
        found = sorted(self.validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        return [f"{e.json_path}: {_short(e.message)}" for e in found]

    def check(self, instance: Any) -> None:
        """Raise AssertionError naming each violation of this schema by `instance`."""
        errors = self.errors(instance)
        if errors:
            shown = json.dumps(instance, default=str)[:2000]
            raise AssertionError(
                f"{len(errors)} violation(s) of {self.name}:\n  "
                + "\n  ".join(errors)
                + f"\nin {shown}"
            )


def _short(message: str) -> str:
    # jsonschema repeats the whole instance in some messages (anyOf, required on a large
    # object); the path already says where.
    return message if len(message) <= 300 else message[:300] + "..."


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class OpenAIContract:
    """The converted document, with validators by operation, by operationId or by name."""

    def __init__(self, document: dict[str, Any], *amendments: Amendment) -> None:
        self.document = to_json_schema(copy.deepcopy(document))
        for amend in amendments:
            amend(self.document)
        self.document[DERIVED] = {"CompletionStreamChunk": self._completion_chunk()}
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(BASE_URI, resource)

    def _check(self, name: str, pointer: str) -> SchemaCheck:
        schema = {"$ref": f"{BASE_URI}#/{pointer}"}
        return SchemaCheck(name, Draft202012Validator(schema, registry=self.registry))

    def schema(self, name: str) -> SchemaCheck:
        """components.schemas[name]."""
        if name not in self.document["components"]["schemas"]:
            raise KeyError(f"no schema {name} in {SPEC.name}")
        return self._check(name, _pointer("components", "schemas", name))

    def response(
        self,
        method: str,
        path: str,
        status: str = "200",
        media: str = "application/json",
    ) -> SchemaCheck:
        """The schema of an operation's answer; `path` as OpenAI writes it (no /v1)."""
        method = method.lower()
        operation = self.document["paths"][path][method]
        content = operation["responses"][status]["content"]
        if media not in content:
            raise KeyError(f"{method.upper()} {path} {status} has no {media} body")
        name = f"{method.upper()} {path} {status} ({operation['operationId']})"
        return self._check(
            name, _pointer("paths", path, method, "responses", status, "content", media, "schema")
        )

    def operation(
        self, operation_id: str, status: str = "200", media: str = "application/json"
    ) -> SchemaCheck:
        for path, method in self._operations():
            if self.document["paths"][path][method].get("operationId") == operation_id:
                return self.response(method, path, status, media)
        raise KeyError(f"no operation {operation_id} in {SPEC.name}")

    def _operations(self) -> Iterator[tuple[str, str]]:
        for path, item in self.document["paths"].items():
            for method in item:
                yield path, method

    @property
    def error(self) -> SchemaCheck:
        """The body of every error answer."""
        return self.schema("ErrorResponse")

    @property
    def chat_chunk(self) -> SchemaCheck:
        """One `data:` object of a streamed chat completion."""
        return self.response("post", "/chat/completions", media="text/event-stream")

    @property
    def completion_chunk(self) -> SchemaCheck:
        """One `data:` object of a streamed completion.

        OpenAI's document names CreateCompletionResponse for these too, whose choices
        require a `finish_reason` of stop | length | content_filter; but a stream can only
        know the reason with its last piece, and OpenAI's own streams send `null` before it
        (as the chat chunk's schema says). So: that schema, with `finish_reason` nullable,
        and only for stream chunks (a whole completion must still give its reason)."""
        return self._check(
            "CreateCompletionResponse (stream chunk)",
            _pointer(DERIVED, "CompletionStreamChunk"),
        )

    def _completion_chunk(self) -> dict[str, Any]:
        chunk = copy.deepcopy(self.document["components"]["schemas"]["CreateCompletionResponse"])
        choice = chunk["properties"]["choices"]["items"]["properties"]
        choice["finish_reason"] = _or_null(choice["finish_reason"])
        return dict(chunk)


@cache
def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SPEC.read_text())
    return loaded


def load(*amendments: Amendment) -> OpenAIContract:
    """The contract, changed by `amendments` (each a documented exception of a test)."""
    return OpenAIContract(_document(), *amendments)
