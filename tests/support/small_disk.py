"""A gateway's spool on a real filesystem that runs out of room (the disk-full tests, bench).

Where mounting is allowed (root with CAP_SYS_ADMIN, as on the machines this was built on):
a small tmpfs. The spool fills it for real (ENOSPC), and room returns when files on it are
deleted: the spool's own, once InfluxDB has drained them, or a filler file's.

Where it is not (a container without the capability), the kernel's other refusal: a
file-size limit (RLIMIT_FSIZE, set on the gateway's process with prlimit, EFBIG past it).
`squeeze` lowers it to one byte, so every write the spool tries is refused, and
`make_room` lifts it. A per-file limit is not freed by deleting files, so where the tmpfs
would get its room back from InfluxDB draining the spool, the limit is lifted instead
(`room_from_drain`). The gateway's output must then go through a pipe
(`GatewayProcess(log_pipe=True)`): its log file is a file too.

Never a skip: without mount, CI=true uses the limit, and says so in the test's output.
`SMALL_DISK=fsize` forces the limit (to try that path on a machine that can mount).

`refusing_writes()` is the in-process form for the unit tier: the same limit on the test's
own process for the duration of a `with` block.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DEFAULT_SIZE = 2 << 20  # the 2 MiB: a few thousand readings, filled in seconds
FILLER = "filler"
FILL_CHUNK = 64 << 10
MOUNT_TIMEOUT_S = 10.0

Mode = Literal["tmpfs", "fsize"]


@contextlib.contextmanager
def refusing_writes() -> Iterator[None]:
    """Every write past a file's first byte refused by the kernel (EFBIG), as on a full disk.

    RLIMIT_FSIZE on this process (Python ignores SIGXFSZ): reads and fsyncs still work, as
    on a full filesystem; leaving the block is room returning. Keep the block free of
    anything else that writes files (a test's output is captured to one).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


class SmallDiskError(RuntimeError):
    """Neither a tmpfs nor a file-size limit could be set up."""


def _mount_tmpfs(path: Path, size: int) -> str | None:
    """Mount a tmpfs of `size` bytes on `path`; None if done, else why not."""
    if os.environ.get("SMALL_DISK") == "fsize":
        return "SMALL_DISK=fsize"
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    return result.stderr.strip() or f"mount exited with {result.returncode}"


@dataclass
class SmallDisk:
    """A directory whose filesystem runs out of room (see the module doc)."""

    path: Path
    mode: Mode
    size: int
    why_not_tmpfs: str = ""
    _filler: Path = field(init=False)

    def __post_init__(self) -> None:
        self._filler = self.path / FILLER

    @classmethod
    def create(cls, path: Path, size: int = DEFAULT_SIZE) -> SmallDisk:
        """A tmpfs of `size` bytes on `path` (created), or, where mount is refused, the limit."""
        path.mkdir(parents=True, exist_ok=True)
        why = _mount_tmpfs(path, size)
        if why is None:
            return cls(path, "tmpfs", size)
        if not hasattr(resource, "prlimit"):
            raise SmallDiskError(f"cannot mount a tmpfs ({why}) and no prlimit on this system")
        return cls(path, "fsize", size, why_not_tmpfs=why)

    def close(self) -> None:
        """Unmount the tmpfs (lazily if something still holds it)."""
        if self.mode != "tmpfs":
            return
        done = subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)

    # -- what the tests do to it ------------------------------------------------------------

    @property
    def free_bytes(self) -> int:
        """Bytes still free on the filesystem."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def leave_free(self, leave: int) -> None:
        """tmpfs: fill it with a filler file until about `leave` bytes stay free."""
        if self.mode != "tmpfs":
            return
        with self._filler.open("ab") as f:
            while self.free_bytes > leave:
                try:
                    f.write(b"\0" * min(FILL_CHUNK, self.free_bytes - leave))
                    f.flush()
                except OSError:
                    break

    def squeeze(self, pid: int) -> None:
        """Under the limit: refuse every further write of process `pid` (tmpfs: nothing; the
        spool fills it)."""
        if self.mode == "fsize":
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))

    def make_room(self, pid: int) -> None:
        """Room again: the filler deleted (tmpfs), or the limit lifted."""
        if self.mode == "tmpfs":
            self._filler.unlink(missing_ok=True)
        else:
            with contextlib.suppress(ProcessLookupError):
                _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))

    def room_from_drain(self, pid: int) -> None:
        """What InfluxDB draining the spool frees: on the tmpfs that drain itself (nothing to
        do here), under a per-file limit nothing, so the limit is lifted."""
        if self.mode == "fsize":
            self.make_room(pid)

    def describe(self) -> str:
        """One line for the test's output: which kind of full disk this is."""
        if self.mode == "tmpfs":
            return f"tmpfs of {self.size} bytes at {self.path}"
        return f"RLIMIT_FSIZE on the gateway (no tmpfs: {self.why_not_tmpfs})"
