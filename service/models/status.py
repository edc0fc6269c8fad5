"""Every status the control plane stores, named once.

`JobStatus` is the job state machine's alphabet: `service/jobs/state.py` holds which
changes are allowed and `transition()`, the one way to make one. The sets below are what
the rest of the service asks about a job (is it over? does it hold cluster capacity?).
The workers' own run statuses are in `workers/spec.py`: workers never import the service.

`StrEnum`: a member is its string (`JobStatus.QUEUED == "queued"`, hashes and formats as
"queued"), so rows, JSON and SQL comparisons need no conversion.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    # A pause was asked for: the run saves a checkpoint at its next step and stops.
    PAUSING = "pausing"
    # Stopped with its progress saved; resume queues it again to go on from there.
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job that has ended: nothing changes its status again.
TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)
# Waiting to start: counted against a tenant's max_queued_jobs.
WAITING: frozenset[JobStatus] = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED})
# On the cluster: holds capacity, and the reconciler watches its Ray job.
ACTIVE: frozenset[JobStatus] = frozenset(
    {JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.PAUSING}
)
# Not ended: uses its files (a file in use by one cannot be deleted). A paused job holds
# no capacity and counts against no quota, but it will run again.
UNFINISHED: frozenset[JobStatus] = WAITING | ACTIVE | {JobStatus.PAUSED}

# What the job object's `status` says: OpenAI's values (and "paused", which its pause
# operation returns). A change under way is shown as the state it is leaving: a job being
# cancelled or paused is still running until its run has stopped; `state` says which.
PUBLIC_STATUS: dict[JobStatus, JobStatus] = {
    JobStatus.CANCELLING: JobStatus.RUNNING,
    JobStatus.PAUSING: JobStatus.RUNNING,
}


def public_status(status: str) -> str:
    # A member hashes as its string, so a stored status looks itself up.
    return PUBLIC_STATUS.get(JobStatus(status), status)


class DeploymentStatus(StrEnum):
    """A deployment as the API reports it (derived from Ray Serve's state, not stored)."""

    DEPLOYING = "deploying"
    RUNNING = "running"
    SCALED_TO_ZERO = "scaled_to_zero"
    FAILED = "failed"
    NOT_DEPLOYED = "not_deployed"


class DeliveryStatus(StrEnum):
    """A webhook outbox row: waiting to be sent (or retried), sent, or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class TrialStatus(StrEnum):
    """A search trial's state, as the workers report it (`workers.spec.TrialState`)."""

    RUNNING = "running"
    TERMINATED = "terminated"
    EARLY_STOPPED = "early_stopped"
    ERROR = "error"
