"""The container image, built with buildah and run against the fake Xquik server.

No Docker engine here: ``python-base-image`` (in ``../shared/tools`` beside the checkout)
builds a local Debian base image and installs buildah; ``buildah bud`` builds our
Dockerfile on it, and ``buildah run --isolation chroot`` runs the image. buildah has no
``--read-only``, so the container's root file system is made read-only the way a runtime
does it: a read-only bind mount over the container's mount point, a tmpfs on ``/run``
(where buildah puts ``/run/.containerenv``) and a tmpfs ``/tmp``. Chroot isolation shares
the host's PID namespace, so the pid the daemon logs is the host pid we signal.

Skipped without root or buildah; under ``CI`` it installs what it needs or fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from e2e.harness import make_image
from fake_xquik import FakeXquik

REPO = Path(__file__).resolve().parents[2]
# CI runs from a fresh clone with a copy of shared/ beside it; so does this machine.
BASE_IMAGE_TOOL = REPO.parent / "shared" / "tools" / "python-base-image"
BASE_IMAGE = "localhost/python-base"
IMAGE = "rotator:test"
UID = 10001
SECRET_NAME = "xquik_api_key"

Event = dict[str, Any]


def run(command: Sequence[str], *, timeout: float = 120, cwd: Path | None = None) -> str:
    """Run a command to completion; fail the test with its output if it fails."""
    result = subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}:\n"
            f"{(result.stdout + result.stderr)[-4000:]}"
        )
    return result.stdout


def run_best_effort(command: Sequence[str]) -> None:
    """Run a cleanup command, ignoring failure (the thing may already be gone)."""
    subprocess.run(list(command), capture_output=True, timeout=60, check=False)


def require_container_tools() -> None:
    """Skip without root, buildah or the base-image tool; under CI fail instead of skipping."""
    problem = None
    if os.geteuid() != 0:
        problem = "needs root (buildah builds and mounts container file systems)"
    elif not BASE_IMAGE_TOOL.exists():
        problem = f"the base image tool is missing: {BASE_IMAGE_TOOL}"
    elif shutil.which("buildah") is None and not os.environ.get("CI"):
        problem = "buildah is not installed (run ../shared/tools/python-base-image as root)"
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the container test must run under CI, but it {problem}")
    pytest.skip(problem)


def image_id(reference: str) -> str | None:
    """Return the id of a local image, or None if there is none."""
    result = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", reference],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


@pytest.fixture(scope="module")
def image() -> str:
    """Build the base image (once per machine) and rotator:test (once per module run)."""
    require_container_tools()
    # Installs buildah, podman and debootstrap when missing; a no-op once the image exists.
    run(["bash", str(BASE_IMAGE_TOOL)], timeout=900)
    replaced = image_id(IMAGE)
    run(
        [
            "buildah", "bud", "--format", "docker", "--isolation", "chroot",
            "--network", "host", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
            "-t", IMAGE, ".",
        ],
        cwd=REPO,
        timeout=900,
    )  # fmt: skip
    if replaced is not None and replaced != image_id(IMAGE):
        # The previous build is now untagged: drop it so repeated runs do not pile up.
        run_best_effort(["buildah", "rmi", replaced])
    return IMAGE


@pytest.fixture(scope="module")
def read_only_container(image: str) -> Iterator[str]:
    """Yield a buildah container of the image whose root file system is read-only."""
    name = f"rotator-test-{secrets.token_hex(4)}"
    run(["buildah", "from", "--name", name, image])
    mountpoint = ""
    stacked: list[str] = []
    try:
        # buildah 1.28 lets the image's VOLUME points shadow a `-v` for the same path (the
        # daemon would write into an anonymous volume): drop them from this container only.
        declared = json.loads(run(["buildah", "inspect", "--type", "image", image]))
        for volume in declared["Docker"]["config"].get("Volumes") or {}:
            run(["buildah", "config", "--volume", f"{volume}-", name])
        mountpoint = run(["buildah", "mount", name]).strip()
        # buildah run reuses this mount; the read-only bind on top is what it chroots into.
        run(["mount", "--bind", mountpoint, mountpoint])
        stacked.append(mountpoint)
        run(["mount", "-o", "remount,bind,ro", mountpoint])
        # buildah writes and deletes /run/.containerenv around each run; a root-owned tmpfs
        # there (as podman's --read-only gives) keeps that working and is no writable place
        # for uid 10001.
        run_dir = f"{mountpoint}/run"
        run(["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev,size=1m", "tmpfs", run_dir])
        stacked.append(run_dir)
        yield name
    finally:
        for target in reversed(stacked):
            run_best_effort(["umount", target])
        if mountpoint:
            run_best_effort(["buildah", "umount", name])
        run_best_effort(["buildah", "rm", name])


def buildah_run(
    container: str, volumes: Sequence[tuple[Path, str]], *command: str, user: str = f"{UID}:{UID}"
) -> list[str]:
    """Return the ``buildah run`` command line for ``command``: no capabilities, tmpfs /tmp."""
    line = [
        "buildah", "run", "--isolation", "chroot", "--network", "host", "--user", user,
        "--cap-drop", "all", "--mount", "type=tmpfs,destination=/tmp",
    ]  # fmt: skip
    for source, target in volumes:
        line += ["-v", f"{source}:{target}"]
    return [*line, container, "--", *command]


class ContainerDaemon:
    """``rotator run`` in a container via ``buildah run``; its JSON log lines as events."""

    def __init__(self, command: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[Event] = []
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        self.events.append(event)
                self._changed.notify_all()

    def wait_for(
        self, name: str, predicate: Callable[[Event], bool] = lambda _: True, timeout: float = 30
    ) -> Event:
        """Return the first event called ``name`` matching ``predicate``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                found = self._find(name, predicate)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0 or self.proc.poll() is not None:
                    break
                self._changed.wait(min(remaining, 0.5))
        if found is None and self.proc.poll() is not None:
            # The container ended: read what it printed last before giving up.
            for reader in self._readers:
                reader.join(10)
            with self._changed:
                found = self._find(name, predicate)
        if found is None:
            raise AssertionError(f"no {name} event; output so far:\n{self.output()[-4000:]}")
        return found

    def _find(self, name: str, predicate: Callable[[Event], bool]) -> Event | None:
        return next((e for e in self.events if e.get("event") == name and predicate(e)), None)

    def output(self) -> str:
        """Return everything printed so far, stdout and stderr interleaved by arrival."""
        with self._changed:
            return "".join(self.lines)

    def stop_hard(self) -> None:
        """Kill whatever still runs in the container, then let buildah reap it and exit."""
        # Killing buildah first would orphan the daemon; kill from the leaves up instead.
        for pid in sorted(descendants(self.proc.pid), reverse=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            self.finish(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.finish(timeout=30)

    def finish(self, timeout: float) -> int:
        """Wait for buildah to exit; return its exit code (the daemon's)."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def descendants(root: int) -> set[int]:
    """Return the pids of every living descendant of ``root``, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def proc_status(pid: int) -> dict[str, str]:
    """Return /proc/PID/status as a dict of field to value."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def mounts_of(pid: int) -> dict[str, tuple[str, set[str]]]:
    """Return the mount table a process sees: mount point -> (fs type, options)."""
    table: dict[str, tuple[str, set[str]]] = {}
    for line in Path(f"/proc/{pid}/mounts").read_text().splitlines():
        _, target, fstype, options, *_ = line.split()
        table[target] = (fstype, set(options.split(",")))
    return table


def check_daemon_process(pid: int, buildah_pid: int) -> None:
    """Check the logged pid is our container's daemon, as seen from the host."""
    # Chroot isolation shares our PID namespace, so the logged pid is the host pid.
    assert pid in descendants(buildah_pid)
    status = proc_status(pid)
    assert status["NSpid"] == str(pid)
    assert status["Uid"].split()[0] == str(UID)
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0  # compose: cap_drop ALL
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"run" in cmdline
    assert any(part.endswith(b"/rotator") for part in cmdline)
    # Under Docker the daemon is PID 1, which gets only the signals it has handlers for;
    # it is not PID 1 here, so check that the handlers are installed.
    caught = int(status["SigCgt"], 16)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        assert caught & (1 << (signum - 1)), f"{signum.name} has no handler"
    # What the daemon itself sees: a read-only root and a tmpfs /tmp.
    seen = mounts_of(pid)
    assert "ro" in seen["/"][1]
    assert seen["/tmp"][0] == "tmpfs"


def write_config(path: Path, base_url: str, entries: Sequence[dict[str, str]]) -> None:
    """Write the container's rotator.toml; no [state] dir, so $STATE_DIRECTORY (/state) holds."""
    lines = [
        "[api]",
        f"base_url = {json.dumps(base_url)}",
        'timeout = "5s"',
        "",
        "[retry]",
        'initial = "100ms"',
        'max = "500ms"',
        "attempts = 3",
        "",
        "[watch]",
        'settle = "300ms"',
        "",
    ]
    for entry in entries:
        lines.append("[[accounts]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
        lines.append("")
    # Replace, not rewrite in place: the daemon must read the new file on SIGHUP.
    staging = path.with_name(path.name + ".new")
    staging.write_text("\n".join(lines), encoding="utf-8")
    staging.chmod(0o644)
    staging.replace(path)


@pytest.fixture
def volumes(tmp_path: Path) -> dict[str, Path]:
    """Make the four host folders mounted into the container, owned and moded as documented."""
    folders = {name: tmp_path / name for name in ("images", "config", "secrets", "state")}
    for folder in folders.values():
        folder.mkdir()
        folder.chmod(0o755)
    os.chown(folders["state"], UID, UID)
    folders["state"].chmod(0o700)
    return folders


def test_image_keeps_user_healthcheck_and_entrypoint(image: str) -> None:
    """The built image runs `rotator run` as 10001:10001 and keeps its HEALTHCHECK."""
    inspected = json.loads(run(["buildah", "inspect", "--type", "image", image]))
    config = inspected["Docker"]["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["rotator"]
    assert config["Cmd"] == ["run"]
    assert config["Healthcheck"]["Test"] == ["CMD", "rotator", "health"]
    assert config["StopSignal"] == "SIGTERM"
    assert "ROTATOR_CONFIG=/config/rotator.toml" in config["Env"]
    assert "STATE_DIRECTORY=/state" in config["Env"]


def test_image_carries_oci_labels_with_the_package_version(image: str) -> None:
    """The built image is labelled with its title, the package's version and its base image."""
    inspected = json.loads(run(["buildah", "inspect", "--type", "image", image]))
    labels = inspected["Docker"]["config"]["Labels"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.title"] == "rotator"
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.description"]
    assert labels["org.opencontainers.image.base.name"] == BASE_IMAGE


def test_root_file_system_is_read_only_even_for_root(read_only_container: str) -> None:
    """In the test container / refuses writes even to root; /tmp is a writable tmpfs."""
    probe = subprocess.run(
        buildah_run(
            read_only_container,
            [],
            "sh",
            "-c",
            "touch /opt/probe; touch /tmp/probe && echo tmp-ok",
            user="0:0",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "/opt/probe': Read-only file system" in probe.stderr
    assert "tmp-ok" in probe.stdout
    assert probe.returncode == 0, probe.stderr


def test_container_rotates_reloads_reports_health_and_stops_on_sigterm(
    read_only_container: str, volumes: dict[str, Path]
) -> None:
    """The image on a read-only root: key from the secret file, uploads, health, SIGHUP, SIGTERM."""
    with FakeXquik(accounts=["alice", "bob"]) as server:
        images = {
            # 128 px: above images.min_size (100), which this config leaves at its default.
            f"{account}/{name}": make_image(volumes["images"] / account / name, seed=seed, size=128)
            for seed, (account, name) in enumerate(
                [("alice", "1.png"), ("alice", "2.png"), ("bob", "1.png")]
            )
        }
        key_file = volumes["secrets"] / SECRET_NAME
        key_file.write_text(server.api_key + "\n", encoding="utf-8")
        os.chown(key_file, UID, UID)
        key_file.chmod(0o400)
        config = volumes["config"] / "rotator.toml"
        alice = {"account": "alice", "folder": "/images/alice", "schedule": "every 1s"}
        write_config(config, server.base_url, [alice])
        mounts = [
            (volumes["images"], "/images:ro"),
            (volumes["config"], "/config:ro"),
            (volumes["secrets"], "/run/secrets:ro"),
            (volumes["state"], "/state"),
        ]
        daemon = ContainerDaemon(buildah_run(read_only_container, mounts, "rotator", "run"))
        pid = None
        try:
            started = daemon.wait_for("daemon.started", timeout=60)
            assert started["key_source"] == "secret file"
            assert started["state_dir"] == "/state"
            pid = int(started["pid"])

            check_daemon_process(pid, daemon.proc.pid)

            server.wait_for(
                lambda requests: (
                    len({r.file.filename for r in requests if r.is_write and r.file}) >= 2
                ),
                timeout=60,
                what="both of alice's images",
            )
            for write in server.writes():
                assert write.file is not None
                assert write.account == "alice"
                assert write.headers.get("x-api-key") == server.api_key
                assert write.file.data == images[f"alice/{write.file.filename}"]

            health = subprocess.run(
                buildah_run(read_only_container, mounts, "rotator", "health"),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert health.returncode == 0, health.stdout + health.stderr
            assert health.stdout.startswith("healthy:")
            assert f"pid {pid}" in health.stdout

            bob = {"account": "bob", "folder": "/images/bob", "schedule": "every 1h"}
            write_config(config, server.base_url, [alice, bob])
            os.kill(pid, signal.SIGHUP)
            reloaded = daemon.wait_for("daemon.reloaded", timeout=30)
            assert len(reloaded["added"]) == 1
            assert reloaded["removed"] == []
            server.wait_for(
                lambda requests: any(r.is_write and r.account == "bob" for r in requests),
                timeout=30,
                what="bob's write after the reload",
            )
            (bob_write, *_) = server.writes("bob")
            assert bob_write.file is not None
            assert bob_write.file.data == images["bob/1.png"]

            os.kill(pid, signal.SIGTERM)
            assert daemon.finish(timeout=30) == 0
            stopped = daemon.wait_for("daemon.stopped", timeout=1)
            assert stopped["reason"] == "signal"
        finally:
            daemon.stop_hard()
        assert server.errors == []

    assert not Path(f"/proc/{pid}").exists(), "the daemon outlived its container"
    key = server.api_key
    assert key not in daemon.output() + health.stdout + health.stderr
    for path in volumes["state"].rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"the key is in {path.name}"
    assert (volumes["state"] / "rotator.db").exists(), "the state went to the /state volume"
    assert not (volumes["state"] / "heartbeat.json").exists(), "a clean stop clears it"
