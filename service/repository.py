"""Tenant scoping, in one place: every tenant-owned query starts from `ScopedRepository`."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import and_, or_
from sqlmodel import Session, SQLModel, col, select
from sqlmodel.sql.expression import SelectOfScalar

from service.common import Page

M = TypeVar("M", bound=SQLModel)


class ScopedRepository(Generic[M]):
    """Queries for one table on behalf of one tenant; no method can see other tenants' rows."""

    model: ClassVar[type[Any]]

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _select(self) -> SelectOfScalar[M]:
        return select(self.model).where(self.model.tenant_id == self.tenant_id)

    def get(self, object_id: str) -> M | None:
        stmt = self._select().where(self.model.id == object_id)
        return self.session.exec(stmt).first()

    def add(self, obj: M) -> M:
        if obj.tenant_id != self.tenant_id:  # type: ignore[attr-defined]
            raise ValueError("object belongs to another tenant")
        self.session.add(obj)
        self.session.flush()
        return obj

    def page(
        self, stmt: SelectOfScalar[M], after: str | None, limit: int, *, newest_first: bool = True
    ) -> Page[M] | None:
        """A cursor page ordered by (created_at, id); None when `after` is not this tenant's."""
        created, ident = col(self.model.created_at), col(self.model.id)
        if after is not None:
            anchor = self.get(after)
            if anchor is None:
                return None
            c, i = anchor.created_at, anchor.id  # type: ignore[attr-defined]
            if newest_first:
                stmt = stmt.where(or_(created < c, and_(created == c, ident < i)))
            else:
                stmt = stmt.where(or_(created > c, and_(created == c, ident > i)))
        order = (created.desc(), ident.desc()) if newest_first else (created.asc(), ident.asc())
        rows = list(self.session.exec(stmt.order_by(*order).limit(limit + 1)))
        return Page(items=rows[:limit], has_more=len(rows) > limit)
