"""The API shapes every feature shares: OpenAI's list envelope in its three kinds, the
conversion of a repository page into one, and of a stored object into its API shape.

A feature names its own list (`class JobList(CursorPage[JobOut]): ...`): the OpenAPI schema
then shows `JobList`, as clients have always seen it, not a generic name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import AfterValidator, BaseModel

from service.common import Page

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", bound=BaseModel)


class ApiObject(BaseModel):
    """An object of the API in OpenAI's shape: its id first, then `object`, the name of its
    kind, which each kind narrows to its one value (`object: Literal["file"] = "file"`)."""

    id: str
    object: str


class Deleted(ApiObject):
    """OpenAI's answer to a DELETE."""

    deleted: bool = True


ObjectT = TypeVar("ObjectT", bound=ApiObject)


class ObjectList(BaseModel, Generic[T]):
    """A whole list, as OpenAI's /v1/models answers it: no paging fields at all."""

    object: Literal["list"] = "list"
    data: list[T]


class CompleteList(ObjectList[T], Generic[T]):
    """A list never paged: everything in one answer, with has_more (always false) for
    clients that page every list alike."""

    has_more: bool = False


class CursorPage(ObjectList[T], Generic[T]):
    """One page of a cursor-paged list; the next page starts `after` its last item."""

    has_more: bool

    @classmethod
    def of(cls, page: Page[R], out: Callable[[R], T]) -> Self:
        """The API shape of a repository page, each row shown by `out`."""
        return cls(data=[out(row) for row in page.items], has_more=page.has_more)


class IdRangePage(CursorPage[ObjectT], Generic[ObjectT]):
    """A page that also names its first and last ids (OpenAI's file and checkpoint lists).

    Empty, it names "" for both: OpenAI's file list requires them as strings (its
    checkpoint list takes a string or null), and an empty page has no ids to name."""

    first_id: str
    last_id: str

    @classmethod
    def of(cls, page: Page[R], out: Callable[[R], ObjectT]) -> Self:
        data = [out(row) for row in page.items]
        first, last = (data[0].id, data[-1].id) if data else ("", "")
        return cls(data=data, has_more=page.has_more, first_id=first, last_id=last)


def at_most(most: int) -> AfterValidator:
    """A list's `limit` served as at most `most` (`Annotated[int, Query(ge=1), at_most(100)]`):
    OpenAI's document sets no maximum on its lists' limits, so a larger one is not refused
    but answered with the largest page we serve."""
    return AfterValidator(lambda limit: min(limit, most))


def shown(schema: type[S], source: object, **given: Any) -> S:
    """`source` (a table row, a catalog entry) in an API shape: every field of `schema` that
    `source` has an attribute of the same name for, as it is there, and `given` for the rest
    (derived or renamed fields, timestamps as whole seconds). A field named like one of
    SQLModel's own attributes (`metadata`) must be given."""
    alike = schema.model_fields.keys() - given.keys()
    same = {name: getattr(source, name) for name in alike if hasattr(source, name)}
    return schema.model_validate({**same, **given})
