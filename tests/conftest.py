import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh interpreter."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "scaling_search.cli", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, and the line says what is wrong."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("scaling-search: error: ")
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])


@pytest.fixture
def cli():
    return run_cli


# ------------------------------------------------------------- datasets

SHARED_DATA = ROOT.parent / "shared" / "data"
CIFAR10_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One decode cache for the whole session, so CIFAR-10 is decoded once."""
    return tmp_path_factory.mktemp("scaling-search-cache")


@pytest.fixture(scope="session")
def cifar10(data_cache):
    """CIFAR-10 from the shared JPEG archive (the repository's sibling shared/data)."""
    from scaling_search.data import DataSpec, load_dataset

    assert CIFAR10_ARCHIVE.is_file(), f"test data missing: {CIFAR10_ARCHIVE} (CI clones shared/ beside the repository)"
    return load_dataset(DataSpec("cifar10", data_dir=str(SHARED_DATA)), cache_dir=data_cache)
