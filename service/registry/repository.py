from __future__ import annotations

from sqlmodel import Session, col, select
from sqlmodel.sql.expression import Select

from service.models import Checkpoint, FineTunedModel, Job, JobEvent, RegisteredBaseModel
from service.models.status import TERMINAL
from service.registry.catalog import Catalog, CatalogEntry
from service.registry.checkpoints import as_model, parse_checkpoint_model_id, removal_event_id
from service.repository import ScopedRepository
from service.schemas import shown


def registered_entry(row: RegisteredBaseModel) -> CatalogEntry:
    return shown(CatalogEntry, row, created=int(row.created_at), registered=True)


class BaseModelRepository:
    """Registered base models: shared by all tenants, written by admins only."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def all(self) -> list[RegisteredBaseModel]:
        stmt = select(RegisteredBaseModel).order_by(col(RegisteredBaseModel.name))
        return list(self.session.exec(stmt))

    def get(self, name: str) -> RegisteredBaseModel | None:
        return self.session.get(RegisteredBaseModel, name)

    def add(self, row: RegisteredBaseModel) -> None:
        self.session.add(row)
        self.session.flush()

    def delete(self, row: RegisteredBaseModel) -> None:
        self.session.delete(row)
        self.session.flush()

    def catalog(self, builtin: Catalog) -> Catalog:
        """The built-in models and the registered ones, as one catalog."""
        return builtin.with_entries([registered_entry(r) for r in self.all()])


class LazyCatalog(Catalog):
    """The merged catalog, read from the database on first use only: most requests that
    build a service never look a base model up."""

    def __init__(self, session: Session, builtin: Catalog) -> None:
        self._session = session
        self._builtin = builtin
        self._loaded: Catalog | None = None

    def _view(self) -> Catalog:
        if self._loaded is None:
            self._loaded = BaseModelRepository(self._session).catalog(self._builtin)
        return self._loaded

    def get(self, name: str) -> CatalogEntry | None:
        return self._view().get(name)

    def names(self) -> list[str]:
        return self._view().names()

    def entries(self) -> list[CatalogEntry]:
        return self._view().entries()

    def with_entries(self, more: list[CatalogEntry]) -> Catalog:
        return self._view().with_entries(more)


class ModelRepository(ScopedRepository[FineTunedModel]):
    model = FineTunedModel

    def live(self) -> list[FineTunedModel]:
        stmt = self._select().where(col(FineTunedModel.deleted_at).is_(None))
        return list(self.session.exec(stmt.order_by(col(FineTunedModel.created_at))))

    def get_live(self, model_id: str) -> FineTunedModel | None:
        found = self.get(model_id)
        return found if found is not None and found.deleted_at is None else None

    def _live_with_jobs(self) -> Select[FineTunedModel, Job]:
        return (
            select(FineTunedModel, Job)
            .join(Job, col(Job.id) == col(FineTunedModel.job_id))
            .where(
                col(FineTunedModel.tenant_id) == self.tenant_id,
                col(Job.tenant_id) == self.tenant_id,
                col(FineTunedModel.deleted_at).is_(None),
            )
        )

    def live_with_jobs(self) -> list[tuple[FineTunedModel, Job]]:
        """The tenant's live models and the jobs that made them."""
        return [(m, j) for m, j in self.session.exec(self._live_with_jobs())]

    def unfinished_jobs(self) -> list[Job]:
        """The tenant's jobs that have not ended (queued, running, paused...)."""
        stmt = select(Job).where(
            col(Job.tenant_id) == self.tenant_id, col(Job.status).not_in(list(TERMINAL))
        )
        return list(self.session.exec(stmt))

    def get_live_with_job(self, model_id: str) -> tuple[FineTunedModel, Job] | None:
        """The live model and the job that made it, in one query (the inference hot path)."""
        stmt = self._live_with_jobs().where(col(FineTunedModel.id) == model_id)
        found = self.session.exec(stmt).first()
        return (found[0], found[1]) if found is not None else None

    def checkpoint_with_job(self, model_id: str) -> tuple[Checkpoint, Job] | None:
        """A kept checkpoint of one of the tenant's jobs, by its model id, and its job."""
        parsed = parse_checkpoint_model_id(model_id)
        if parsed is None:
            return None
        job_id, step = parsed
        stmt = (
            select(Checkpoint, Job)
            .join(Job, col(Job.id) == col(Checkpoint.job_id))
            .where(
                col(Checkpoint.tenant_id) == self.tenant_id,
                col(Job.tenant_id) == self.tenant_id,
                col(Checkpoint.job_id) == job_id,
                col(Checkpoint.step_number) == step,
                # The whole id: the base, tenant and suffix parts must be the job's too.
                col(Checkpoint.fine_tuned_model_checkpoint) == model_id,
            )
        )
        found = self.session.exec(stmt).first()
        return (found[0], found[1]) if found is not None else None

    def servable_with_job(self, model_id: str) -> tuple[FineTunedModel, Job] | None:
        """A live fine-tuned model, or a kept checkpoint described as one (`as_model`)."""
        found = self.get_live_with_job(model_id)
        if found is not None:
            return found
        checkpoint = self.checkpoint_with_job(model_id)
        return (as_model(*checkpoint), checkpoint[1]) if checkpoint is not None else None

    def removed_by_retention(self, model_id: str) -> bool:
        """Whether `model_id` is a checkpoint of the tenant's that retention removed."""
        parsed = parse_checkpoint_model_id(model_id)
        if parsed is None:
            return False
        stmt = select(JobEvent).where(
            col(JobEvent.id) == removal_event_id(*parsed),
            col(JobEvent.tenant_id) == self.tenant_id,
        )
        event = self.session.exec(stmt).first()
        return event is not None and (event.data or {}).get("checkpoint") == model_id

    def parent_of(self, model_id: str) -> str | None:
        """The model `model_id` continued from; deleted and removed models still answer
        (a lineage outlives its members)."""
        parsed = parse_checkpoint_model_id(model_id)
        if parsed is None:
            row = self.get(model_id)
            return row.parent if row is not None else None
        stmt = select(Job).where(col(Job.id) == parsed[0], col(Job.tenant_id) == self.tenant_id)
        job = self.session.exec(stmt).first()
        return job.parent_model() if job is not None else None
