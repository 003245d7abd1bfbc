"""The DVC project as a Dagster resource: runs one stage with ``dvc repro --single-item``."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
from pydantic import Field

from orchestration.project import PROJECT_DIR_ENV, default_project_dir

TAIL_LINES = 40


def default_dvc_bin() -> str:
    """``dvc`` next to this interpreter (``.venv/bin/dvc``, a link into DVC's own venv), else on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.exists():
        return str(beside)
    return shutil.which("dvc") or "dvc"


def stage_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for DVC and the stage commands it runs.

    The directory of ``sys.executable`` goes first on PATH so that ``expctr <stage>`` and ``python`` in
    a stage's ``cmd`` resolve to this venv even when Dagster was started without activating it
    (DVC itself runs from its own venv through the ``dvc`` link; its interpreter is fixed by its shebang).
    """
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *parts])
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    env["PYTHONUNBUFFERED"] = "1"  # stage logs arrive line by line, not at exit
    return env


class DvcProject(dg.ConfigurableResource):
    """A DVC project directory and the ``dvc`` executable that reproduces its stages.

    Concurrency: DVC holds a repository lock while it reproduces. Within a run the definitions use the
    in-process executor, so stages run one after another; across runs (two launches from the UI, or a
    person running ``dvc repro`` in a terminal) ``dvc --wait-for-lock`` makes the later one wait for the
    lock instead of failing.
    """

    project_dir: str = Field(
        default_factory=default_project_dir,
        description=f"Root of the DVC project (holds dvc.yaml). Default: ${PROJECT_DIR_ENV} or the cwd.",
    )
    dvc_bin: str = Field(
        default_factory=default_dvc_bin,
        description="The dvc executable. Default: dvc beside the running Python, else dvc on PATH.",
    )
    wait_for_lock: bool = Field(
        default=True, description="Wait for DVC's repository lock instead of failing when it is held."
    )

    def repro_command(self, stage: str, force: bool = False) -> list[str]:
        cmd = [self.dvc_bin]
        if self.wait_for_lock:
            cmd.append("--wait-for-lock")
        cmd += ["repro", "--single-item"]
        if force:
            cmd.append("--force")
        return [*cmd, stage]

    def repro(self, stage: str, log, force: bool = False) -> list[str]:
        """Reproduce one stage (not its upstream stages), streaming each output line to ``log.info``.

        Returns the last output lines. Raises :class:`dagster.Failure` with the output tail as metadata
        when DVC exits non-zero (a failing stage command, a changed-but-missing dependency, ...).
        """
        cmd = self.repro_command(stage, force=force)
        log.info(f"$ {' '.join(cmd)}   (cwd={self.project_dir})")
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=self.project_dir,
                env=stage_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,  # so an interrupted run can stop DVC and its stage command
            )
        except OSError as exc:
            raise dg.Failure(
                description=f"could not start {cmd[0]!r}: {exc}",
                metadata={"command": dg.MetadataValue.text(" ".join(cmd))},
            ) from exc
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                tail.append(line)
                log.info(line)
            rc = proc.wait()
        except BaseException:  # run terminated: stop DVC (SIGINT lets it release its lock), then kill
            _stop(proc)
            raise
        if rc != 0:
            text = "\n".join(tail)
            raise dg.Failure(
                description=f"dvc repro of stage {stage!r} exited with code {rc}",
                metadata={
                    "command": dg.MetadataValue.text(" ".join(cmd)),
                    "exit_code": dg.MetadataValue.int(rc),
                    "project_dir": dg.MetadataValue.path(self.project_dir),
                    "output_tail": dg.MetadataValue.md(f"```\n{text}\n```"),
                },
            )
        return list(tail)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
