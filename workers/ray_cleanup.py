"""Ray Train's placement-group cleaners that outlive their run, found and killed.

Ray Train (2.60) starts a detached `PlacementGroupCleaner` actor for each run and tells it
to start watching the run's controller with a call it does not wait for. When the
controller dies before that call is delivered (a job cancelled in the seconds the cleaner's
worker process takes to start), the cleaner never watches anything: it stays alive,
detached, for the life of the cluster, one idle worker process each. The 45-minute soak
(`bench/soak.py`) found two after 92 cancels.

A cleaner's only duty is to remove its run's placement group if the controller dies while
the job goes on; once the job has ended Ray has removed that group itself, so such a
cleaner has nothing left to do. `workers.run_job` kills them: at its start and end those
of every ended job, and at its end its own job's (its runs are over by then).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

CLEANER_CLASS = "PlacementGroupCleaner"
ENDED = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
STATE_TIMEOUT_S = 5


def reap_cleaners(*, own_job_too: bool) -> int:
    """Kills the cleaners of ended jobs (and of this driver's job with `own_job_too`);
    returns how many. Never raises: a cleaner left is an idle process, not a failed job."""
    try:
        return _reap(own_job_too)
    except Exception as exc:
        logger.warning("could not look for leftover Ray Train cleaners: %s", exc)
        return 0


def _reap(own_job_too: bool) -> int:
    import ray
    from ray.util.state import list_actors, list_jobs

    if not ray.is_initialized():
        return 0
    cleaners = list_actors(
        filters=[("class_name", "=", CLEANER_CLASS), ("state", "!=", "DEAD")],
        timeout=STATE_TIMEOUT_S,
        raise_on_missing_output=False,
    )
    if not cleaners:
        return 0
    ended = {
        str(job.job_id)
        for job in list_jobs(timeout=STATE_TIMEOUT_S, raise_on_missing_output=False)
        if job.job_id and str(job.status).rsplit(".", 1)[-1] in ENDED
    }
    if own_job_too:
        ended.add(ray.get_runtime_context().get_job_id())
    orphans = [str(a.actor_id) for a in cleaners if str(a.job_id) in ended]
    if orphans:
        _kill(ray.get_runtime_context().gcs_address, orphans)
        logger.info("killed %d Ray Train cleaner(s) left by ended runs", len(orphans))
    return len(orphans)


def _kill(gcs_address: str, actor_ids: list[str]) -> None:
    # `ray.kill` wants a handle, and Ray gives none for an actor another process created
    # without a name; this is the request `ray.kill` itself makes of the GCS (with the
    # cluster's auth token and TLS settings, through Ray's own channel factory).
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2_grpc
    from ray.core.generated.gcs_service_pb2 import (  # type: ignore[attr-defined]  # no stubs
        KillActorViaGcsRequest,
    )

    channel = init_grpc_channel(gcs_address)
    try:
        stub = gcs_service_pb2_grpc.ActorInfoGcsServiceStub(channel)
        for actor_id in actor_ids:
            request = KillActorViaGcsRequest(
                actor_id=bytes.fromhex(actor_id), force_kill=True, no_restart=True
            )
            reply = stub.KillActorViaGcs(request, timeout=STATE_TIMEOUT_S)
            if reply.status.code != 0:
                logger.warning("Ray would not kill cleaner %s: %s", actor_id, reply.status.message)
    finally:
        channel.close()
