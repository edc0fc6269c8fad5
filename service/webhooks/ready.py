"""`deployment.ready`: told once per deployment, when the serving loop first finds its
Serve application running.

Readiness is Serve's state, not a stored status, so there is no transition to hang the
event on. The outbox itself records that a deployment was announced: the event's id is
derived from the deployment's, and every replica's serving loop may find it ready at once,
but the rows' primary keys let only one write it. It goes to the endpoints that existed
when the deployment was created: one added later is not told of deployments that may
have been ready long before it (no event is invented for it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from service.common import now
from service.db import new_session
from service.models import FineTunedModel, Job
from service.ray_backend import ServeAppStatus
from service.registry.repository import ModelRepository
from service.webhooks.events import DEPLOYMENT_READY, enqueue
from service.webhooks.repository import OutboxRepository


def ready_event_id(deployment_id: str) -> str:
    return "evt_" + hashlib.sha256(f"{DEPLOYMENT_READY}/{deployment_id}".encode()).hexdigest()[:32]


def announce_ready(
    engine: Engine,
    app_of: Callable[[FineTunedModel, Job], str],
    status: Callable[[], Mapping[str, ServeAppStatus]],
) -> int:
    """Write `deployment.ready` for each deployment now running that no event told of yet;
    the number of deployments announced. Serve's status is only asked for when some
    deployment awaits its announcement."""
    with new_session(engine) as session:
        outbox = OutboxRepository(session)
        subscribed = outbox.subscribed_to(DEPLOYMENT_READY)
        if not subscribed:
            return 0
        oldest: dict[str, float] = {}
        for e in subscribed:
            oldest[e.tenant_id] = min(e.created_at, oldest.get(e.tenant_id, e.created_at))
        candidates = [
            d for d in outbox.deployments_of(oldest) if d.created_at >= oldest[d.tenant_id]
        ]
        told = outbox.written_events({ready_event_id(d.id) for d in candidates})
        waiting = [d for d in candidates if ready_event_id(d.id) not in told]
        if not waiting:
            return 0
        live = status()
        announced = 0
        for d in waiting:
            found = ModelRepository(session, d.tenant_id).servable_with_job(d.model)
            app = live.get(app_of(*found)) if found is not None else None
            if app is None or app.status != "RUNNING":
                continue
            try:
                with session.begin_nested():
                    enqueue(
                        session,
                        d.tenant_id,
                        DEPLOYMENT_READY,
                        {"id": d.id, "model": d.model},
                        created_at=now(),
                        event_id=ready_event_id(d.id),
                        endpoints_created_by=d.created_at,
                    )
                announced += 1
            except IntegrityError:  # another replica announced it first
                continue
        session.commit()
        return announced
