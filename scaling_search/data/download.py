"""Fetch one file over HTTP(S), checked against a published checksum.

The bytes go to a temporary sibling of the destination and are hashed as they
arrive; only a file whose checksum matches is renamed into place, so a broken
or tampered download never leaves a file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..atomic import atomic_open
from ..errors import UsageError
from ..progress import progress_bar

_CHUNK = 1 << 20
_ALGORITHMS = ("md5", "sha1", "sha256", "sha512")


def parse_checksum(text: str) -> tuple[str, str]:
    """'sha256:HEX' or 'md5:HEX' -> (algorithm, lowercase hex digest)."""
    algorithm, sep, digest = text.partition(":")
    algorithm, digest = algorithm.strip().lower(), digest.strip().lower()
    if not sep or algorithm not in _ALGORITHMS or not digest or any(c not in "0123456789abcdef" for c in digest):
        raise UsageError(f"checksum {text!r} is not ALGORITHM:HEX with ALGORITHM one of {', '.join(_ALGORITHMS)}")
    if len(digest) != hashlib.new(algorithm).digest_size * 2:
        raise UsageError(f"checksum {text!r} has the wrong length for {algorithm}")
    return algorithm, digest


def download(
    url: str, dest: str | os.PathLike, checksum: str, *, progress: bool = False, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``dest`` if its ``checksum`` ('md5:...' or 'sha256:...') matches.

    A mismatch or a network failure raises UsageError and leaves nothing at
    ``dest`` (and no temporary file beside it).
    """
    algorithm, expected = parse_checksum(checksum)
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.new(algorithm)
    # atomic_open renames into place only if the block ends cleanly: a checksum
    # mismatch or a broken transfer leaves nothing at ``dest``.
    with atomic_open(target) as out:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UsageError(f"could not download {url}: {getattr(exc, 'reason', exc)}") from None
        with response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(progress, f"downloading {target.name}", total, transfer=True) as advance:
                while True:
                    try:
                        block = response.read(_CHUNK)
                    except OSError as exc:
                        raise UsageError(f"download of {url} broke off: {exc}") from None
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    advance(len(block))
        got = digest.hexdigest()
        if got != expected:
            raise UsageError(
                f"download of {url} failed its checksum ({algorithm} expected {expected}, got {got}); the file was "
                "discarded"
            )
    return target
