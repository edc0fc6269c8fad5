"""A request's training method, OpenAI's way: ``method: {"type": "supervised" | "dpo",
<type>: {"hyperparameters": {...}}}``, or the legacy top-level ``hyperparameters``
(supervised only). What each method trains on and which task it needs are checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import BadRequest
from service.jobs.schemas import DpoHyperparametersIn, HyperparametersIn, JobCreate
from service.models import StoredFile
from service.registry.catalog import CatalogEntry
from workers.spec import METHOD_FORMATS, TASK_FORMATS, DpoConfig, Method, Task

# DPO's usual beta (the DPO paper's and TRL's default); what "auto" means.
DEFAULT_BETA = 0.1
_FORMAT_NAMES = {
    "preference": "a preference file (input, preferred_output, non_preferred_output)",
    "chat": "a chat file",
    "prompt_completion": "a prompt/completion file",
    "text": "a text file",
    "classification": "a text/label classification file",
}


@dataclass(frozen=True)
class MethodChoice:
    type: Method
    hyperparameters: HyperparametersIn
    dpo: DpoConfig | None = None

    def config(self) -> dict[str, float]:
        """The method's own settings as the job object reports them."""
        return {"beta": self.dpo.beta} if self.dpo is not None else {}


def method_of(body: JobCreate) -> MethodChoice:
    method = body.method
    kind = method.type if method is not None else "supervised"
    if kind == "reinforcement":
        raise BadRequest(
            "method.type 'reinforcement' is not supported; Tuneplane runs 'supervised' and 'dpo'.",
            param="method.type",
        )
    if kind == "supervised":
        if method is not None and method.dpo is not None:
            raise BadRequest(
                "method.dpo is given but method.type is 'supervised'; set method.type to "
                "'dpo', or put the hyperparameters in method.supervised.",
                param="method.dpo",
            )
        from_method = method.supervised.hyperparameters if method and method.supervised else None
        if from_method is not None and body.hyperparameters is not None:
            raise BadRequest(
                "Give hyperparameters in method.supervised.hyperparameters or the legacy "
                "hyperparameters field, not both.",
                param="hyperparameters",
            )
        return MethodChoice(
            "supervised", from_method or body.hyperparameters or HyperparametersIn()
        )
    assert method is not None
    if method.supervised is not None:
        raise BadRequest(
            "method.supervised is given but method.type is 'dpo'; DPO's hyperparameters go "
            "in method.dpo.hyperparameters.",
            param="method.supervised",
        )
    if body.hyperparameters is not None:
        raise BadRequest(
            "The legacy hyperparameters field is for supervised jobs; give a DPO job's in "
            "method.dpo.hyperparameters.",
            param="hyperparameters",
        )
    hp = (method.dpo.hyperparameters if method.dpo else None) or DpoHyperparametersIn()
    beta = hp.beta if isinstance(hp.beta, float | int) else DEFAULT_BETA
    return MethodChoice("dpo", hp, DpoConfig(beta=float(beta)))


def check_method_task(choice: MethodChoice, entry: CatalogEntry, task: Task) -> None:
    if choice.type != "dpo" or task == "causal_lm":
        return
    if "causal_lm" not in entry.tasks:
        raise BadRequest(
            f"Model '{entry.name}' is a classifier ({', '.join(entry.tasks)}); DPO trains "
            "language models to prefer one answer over another.",
            param="model",
        )
    raise BadRequest(f"DPO trains language models (task causal_lm), not {task}.", param="task")


def check_file_format(stored: StoredFile, param: str, task: Task, method: Method) -> None:
    """A file the job's task and method can train on, or a 400 naming `param`."""
    fmt = str(stored.format)
    if fmt not in METHOD_FORMATS[method]:
        wanted = (
            "DPO trains on preference files (one line: input.messages, preferred_output, "
            "non_preferred_output)"
            if method == "dpo"
            else "a supervised job trains on chat, prompt/completion, text or classification "
            "files; preference files are for method 'dpo'"
        )
        raise BadRequest(
            f"File '{stored.id}' is {_FORMAT_NAMES.get(fmt, fmt)}: {wanted}.",
            param=param,
            code="invalid_file_format",
        )
    allowed = TASK_FORMATS[task]
    if fmt not in allowed:
        raise BadRequest(
            f"File '{stored.id}' is in format '{fmt}', which task '{task}' cannot "
            f"train on (it needs {' or '.join(sorted(allowed & METHOD_FORMATS[method]))}).",
            param=param,
            code="invalid_file_format",
        )
