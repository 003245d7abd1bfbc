"""The locked environment: the committed lock files cover what pyproject.toml asks for, setup installs them,
and the Bento's packages are the same pins."""

from __future__ import annotations

import importlib.util
import re
from importlib.metadata import distributions
from pathlib import Path

import tomllib
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from support import REPO_ROOT

PROJECT_LOCK = REPO_ROOT / "requirements" / "project.lock.txt"
DVC_LOCK = REPO_ROOT / "requirements" / "dvc.lock.txt"
SETUP = (REPO_ROOT / "scripts" / "setup.sh").read_text()


def read_lock(path: Path) -> dict[str, Version]:
    """name -> pinned version of a uv-compiled lock; any other non-comment line is an error."""
    pins: dict[str, Version] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise AssertionError(f"{path.name}, line {n}: not a pin: {line!r} ({exc})") from None
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{path.name}, line {n}: not a pin: {line!r}"
        pins[canonicalize_name(req.name)] = Version(spec[0].version)
    return pins


def unmet(requirements: list[str], pins: dict[str, Version]) -> list[str]:
    """The requirements (extras expanded by the lock's own closure) that the pins do not satisfy."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{text}: not in the lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{text}: lock pins {pinned}")
    return problems


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def setup_torch_spec() -> Requirement:
    match = re.search(r"TORCH_SPEC=\$\{EXPCTR_TORCH_SPEC:-([^}]+)\}", SETUP)
    assert match, "scripts/setup.sh no longer defines its default torch requirement"
    return Requirement(match.group(1).split()[0])


def test_project_lock_covers_pyproject_dependencies_and_the_extras_setup_installs():
    pins = read_lock(PROJECT_LOCK)
    deps = [d for d in pyproject()["dependencies"] if canonicalize_name(Requirement(d).name) != "torch"]
    assert unmet(deps, pins) == [], "pyproject.toml changed without `bash scripts/lock.sh`"
    assert "--extra dev" in (REPO_ROOT / "scripts" / "lock.sh").read_text()
    assert unmet(pyproject()["optional-dependencies"]["dev"], pins) == []


def test_torch_is_left_to_setup_and_its_default_satisfies_pyproject():
    pins = read_lock(PROJECT_LOCK)
    assert "torch" not in pins and not any(name.startswith("nvidia-cu") for name in pins), \
        "the lock must not pin torch or CUDA wheels: setup.sh installs torch first (CPU or CUDA build)"
    torch_range = next(Requirement(d) for d in pyproject()["dependencies"] if d.startswith("torch"))
    default = setup_torch_spec()
    pinned = Version(next(iter(default.specifier)).version)
    assert torch_range.specifier.contains(pinned), f"setup's {default} is outside pyproject's {torch_range}"
    # lock.sh resolves torch's own dependencies against the same torch version
    assert f"EXPCTR_TORCH_VERSION:-{pinned}}}" in (REPO_ROOT / "scripts" / "lock.sh").read_text()
    assert {"sympy", "networkx", "filelock"} <= set(pins), "torch's dependencies are locked"


def test_dvc_lock_covers_the_tool_environment():
    pins = read_lock(DVC_LOCK)
    wanted = [line for line in (REPO_ROOT / "requirements" / "dvc.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert unmet(wanted, pins) == []
    assert "dvc-s3" in pins, "the s3 extra (S3-compatible remotes) is part of the tool environment"
    # DVC's antlr4 pin is the reason it has its own venv: the two locks must keep disagreeing about it
    assert pins["antlr4-python3-runtime"].major == 4 and pins["antlr4-python3-runtime"].minor == 9
    assert read_lock(PROJECT_LOCK)["antlr4-python3-runtime"].minor >= 13


def drift(lock: Path, site_packages: list[str] | None = None) -> list[str]:
    """Differences between a lock and what is installed (in this interpreter or in `site_packages`)."""
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version)
                 for d in distributions(**({"path": site_packages} if site_packages else {}))}
    return [f"{name}: installed {installed.get(name, 'nothing')}, lock {pinned}"
            for name, pinned in read_lock(lock).items() if installed.get(name) != pinned]


def test_the_venvs_are_the_locked_ones():
    """The environments the tests run in are the locked ones: in CI (a fresh clone) this checks that
    scripts/setup.sh installed exactly the lock; on a dev machine, rerun setup.sh after a lock change."""
    assert drift(PROJECT_LOCK) == [], "run `bash scripts/setup.sh`"
    dvc_site = [str(p) for p in (REPO_ROOT / ".venv-dvc").glob("lib/python*/site-packages")]
    assert dvc_site, "no .venv-dvc: run `bash scripts/setup.sh`"
    assert drift(DVC_LOCK, dvc_site) == [], "run `bash scripts/setup.sh`"


def load_package_module():
    spec = importlib.util.spec_from_file_location("expctr_bento_package_lock", REPO_ROOT / "bento" / "package.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bento_packages_are_the_lock_pins(monkeypatch, tmp_path):
    package = load_package_module()
    locked = package.locked_packages(REPO_ROOT)
    assert {canonicalize_name(Requirement(line).name): Version(next(iter(Requirement(line).specifier)).version)
            for line in locked} == read_lock(PROJECT_LOCK)
    # the GPU image: a torch requirement instead of the shipped CPU wheel
    monkeypatch.setenv("EXPCTR_BENTO_TORCH", "torch==2.13.0")
    assert package.torch_requirement(tmp_path) == ("torch==2.13.0", [])
