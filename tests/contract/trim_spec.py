"""Regenerates `openai-openapi.json` here from OpenAI's whole published document: the
operations Tuneplane shares with OpenAI, and every component they reference, each copied
unchanged (the whole document is 3.4 MB; this is what the contract tests read).

    python -m tests.contract.trim_spec /path/to/openai-openapi/openapi.json

An operation added to `OPERATIONS` (when Tuneplane implements another of OpenAI's calls)
brings its components with it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("openai-openapi.json")

# OpenAI's paths (its server URL ends in /v1) and the methods of each that Tuneplane serves.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "/files": ("get", "post"),
    "/files/{file_id}": ("get", "delete"),
    "/files/{file_id}/content": ("get",),
    "/fine_tuning/jobs": ("get", "post"),
    "/fine_tuning/jobs/{fine_tuning_job_id}": ("get",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/cancel": ("post",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/events": ("get",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": ("get",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/pause": ("post",),
    "/fine_tuning/jobs/{fine_tuning_job_id}/resume": ("post",),
    "/models": ("get",),
    "/models/{model}": ("get", "delete"),
    "/chat/completions": ("post",),
    "/completions": ("post",),
}
# Not referenced by an operation, but the body of every error answer.
ALSO = ("#/components/schemas/ErrorResponse",)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def trim(document: dict[str, Any]) -> dict[str, Any]:
    paths = {
        path: {method: document["paths"][path][method] for method in methods}
        for path, methods in OPERATIONS.items()
    }
    components: dict[str, dict[str, Any]] = {}
    todo = [*_refs(paths), *ALSO]
    while todo:
        ref = todo.pop()
        _, _, section, name = ref.split("/")
        if name in components.get(section, {}):
            continue
        found = document["components"][section][name]
        components.setdefault(section, {})[name] = found
        todo.extend(_refs(found))
    return {
        "openapi": document["openapi"],
        "info": document["info"],
        "servers": document.get("servers", []),
        "paths": paths,
        "components": {
            section: dict(sorted(named.items())) for section, named in sorted(components.items())
        },
    }


def main(source: str) -> None:
    document = json.loads(Path(source).read_text())
    OUT.write_text(json.dumps(trim(document), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
