from __future__ import annotations

from sqlmodel import col, select

from service.common import Page
from service.models import Job, StoredFile
from service.models.status import UNFINISHED
from service.repository import ScopedRepository


class FileRepository(ScopedRepository[StoredFile]):
    model = StoredFile

    def list_page(
        self, after: str | None, limit: int, purpose: str | None, *, newest_first: bool = True
    ) -> Page[StoredFile] | None:
        stmt = self._select()
        if purpose is not None:
            stmt = stmt.where(StoredFile.purpose == purpose)
        return self.page(stmt, after, limit, newest_first=newest_first)

    def active_job_using(self, file_id: str) -> Job | None:
        stmt = select(Job).where(
            Job.tenant_id == self.tenant_id,
            col(Job.status).in_(sorted(UNFINISHED)),
            (Job.training_file == file_id) | (Job.validation_file == file_id),
        )
        return self.session.exec(stmt).first()

    def delete(self, obj: StoredFile) -> None:
        self.session.delete(obj)
        self.session.flush()
