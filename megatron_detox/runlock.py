"""One writer per run folder: an exclusive lock file that names its holder.

``hold_run_lock(folder)`` creates ``folder/.megatron-detox.lock`` holding JSON: host, pid,
the pid's start time (so a reused pid is not mistaken for the holder), start time (UTC),
the command line and, under SLURM, the job id and restart count. A second run on the
same folder refuses with one line naming the holder. A lock whose holder is gone is
taken over (and said so): the holder ran on this host and its process no longer exists,
or it was an earlier run of this same SLURM job (a requeued job keeps its id and counts
up ``SLURM_RESTART_COUNT``). A lock held from another host is never broken silently:
``--force-unlock`` takes it over, for when the user knows that run is dead.

Why not ``flock``/``fcntl``: on NFS and Lustre those locks are only as good as the
mount's lock manager (``local_flock``, ``nolock``, ``-o flock`` off) and can silently
succeed on two hosts at once. Exclusive creation is atomic on every POSIX file system:
the lock is written to a unique temp file and ``link(2)``-ed to its name (the NFS-safe
form of ``O_CREAT | O_EXCL`` that ``open(2)`` recommends, and readers never see a
half-written lock); where hard links are not supported, ``O_CREAT | O_EXCL`` itself.

Under ``torchrun`` (or ``srun``) rank 0 takes the lock for the whole job. Once the process
group is up the other ranks learn the outcome by a broadcast, so a refused job fails on
every rank with the same line; before that they do not take it (and a refusal on rank 0
ends the job through the launcher).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from megatron_detox.errors import UserError

LOCK_NAME = ".megatron-detox.lock"
# A takeover guard older than this was left by a process killed mid-takeover (which takes milliseconds).
_GUARD_STALE_S = 30.0
# Errors of link(2) on file systems without hard links: fall back to O_EXCL.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}


@dataclass(frozen=True)
class Holder:
    """Who holds a lock (the JSON content of the lock file)."""

    host: str
    pid: int
    started: str
    command: str
    pid_start: int | None = None
    slurm_job_id: str | None = None
    slurm_restart_count: int | None = None

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"pid {self.pid} on {self.host}{job} since {self.started} ({self.command[:200]})"


def this_process(command: str | None = None) -> Holder:
    restart = os.environ.get("SLURM_RESTART_COUNT")
    return Holder(host=socket.gethostname(), pid=os.getpid(),
                  started=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  command=command if command is not None else shlex.join(sys.argv),
                  pid_start=_process_start(os.getpid()), slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                  slurm_restart_count=int(restart) if restart and restart.isdigit() else None)


def _process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(holder: Holder, me: Holder) -> str | None:
    """Why ``holder`` can no longer be writing (None: it may be)."""
    if holder.slurm_job_id and holder.slurm_job_id == me.slurm_job_id and \
            (holder.slurm_restart_count or 0) < (me.slurm_restart_count or 0):
        return f"it was an earlier run of this SLURM job {me.slurm_job_id} (requeued)"
    if holder.host != me.host:
        return None
    if not _process_alive(holder.pid):
        return f"its process {holder.pid} is gone"
    start = me.pid_start if holder.pid == me.pid else _process_start(holder.pid)
    if holder.pid_start is not None and start is not None and start != holder.pid_start:
        return f"pid {holder.pid} now belongs to another process"
    return None


def read_holder(lock: Path) -> tuple[Holder | None, bytes | None]:
    """(holder, raw bytes) of ``lock``; (None, None) if it does not exist, (None, raw) if unreadable."""
    try:
        raw = lock.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        data = json.loads(raw.decode("utf-8"))
        return Holder(**data), raw
    except (ValueError, TypeError, UnicodeDecodeError):
        return None, raw


def _create(lock: Path, content: bytes) -> bool:
    """Create ``lock`` with ``content`` if it does not exist; False if it does."""
    temp = lock.with_name(f"{lock.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with open(temp, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        try:
            os.link(temp, lock)
            return True
        except FileExistsError:
            return os.stat(temp).st_nlink == 2  # NFS: a retried link whose first reply was lost
        except OSError as error:
            if error.errno not in _NO_LINKS:
                raise
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        return True
    finally:
        temp.unlink(missing_ok=True)


def _take_over(lock: Path, stale: bytes) -> bool:
    """Remove ``lock`` if it still holds ``stale``; one process at a time (an O_EXCL guard file),
    so two runs that both found the same stale lock cannot both remove it and both take it."""
    guard = lock.with_name(lock.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > _GUARD_STALE_S:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        _, raw = read_holder(lock)
        if raw == stale:
            lock.unlink(missing_ok=True)
        return True
    finally:
        guard.unlink(missing_ok=True)


def acquire(lock: Path, *, command: str | None = None, force: bool = False,
            attempts: int = 50) -> tuple[Holder, bytes] | None:
    """Take ``lock``; return (our holder, the bytes written), or None if this process already holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = this_process(command)
    content = json.dumps(asdict(me), sort_keys=True).encode("utf-8") + b"\n"
    for _ in range(attempts):
        if _create(lock, content):
            return me, content
        holder, raw = read_holder(lock)
        if raw is None:
            continue  # released meanwhile
        if holder is not None and holder.host == me.host and holder.pid == me.pid and \
                holder.pid_start == me.pid_start:
            return None  # re-entrant: an outer block of this process holds it
        if holder is None:
            age = time.time() - lock.stat().st_mtime if lock.exists() else 0.0
            reason = "its content is unreadable and a minute old" if age > 60 else None
            described = "an unreadable lock"
        else:
            reason = stale_reason(holder, me)
            described = holder.describe()
        if reason is None and force:
            reason = "--force-unlock"
        if reason is None:
            hint = ("wait for it or stop it" if holder is None or holder.host == me.host else
                    "if that run is dead, rerun with --force-unlock")
            raise UserError(f"{lock.parent}: in use by {described}; {hint} (lock file {lock})")
        if _take_over(lock, raw):
            print(f"megatron-detox: {lock}: took over the lock of {described}: {reason}", file=sys.stderr)
        else:
            time.sleep(0.1)  # another process is taking it over right now
    raise UserError(f"{lock}: could not take the lock after {attempts} tries (other runs keep taking it)")


def release(lock: Path, content: bytes) -> None:
    """Remove ``lock`` if it is still ours (a ``--force-unlock`` run may have taken it)."""
    _, raw = read_holder(lock)
    if raw == content:
        lock.unlink(missing_ok=True)


@contextmanager
def hold_lock(lock: Path, *, command: str | None = None, force: bool = False) -> Iterator[Path]:
    """Hold ``lock`` for the block; under torch.distributed only rank 0 takes it (see module doc)."""
    lock = Path(lock).expanduser()
    rank, world = _rank_and_world()
    taken: tuple[Holder, bytes] | None = None
    error = ""
    if rank == 0:
        try:
            taken = acquire(lock, command=command, force=force)
        except UserError as refused:
            error = str(refused)
    if world > 1:
        import torch.distributed as dist  # noqa: PLC0415 - only under a launcher

        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = str(shared[0])
    if error:
        raise UserError(error)
    try:
        yield lock
    finally:
        if taken is not None:
            release(lock, taken[1])


def hold_run_lock(folder: str | Path, *, command: str | None = None,
                  force: bool = False) -> AbstractContextManager[Path]:
    """``with hold_run_lock(run_dir, force=args.force_unlock):`` — one writer per run folder."""
    return hold_lock(Path(folder).expanduser() / LOCK_NAME, command=command, force=force)


def hold_output_lock(output: str | Path, *, command: str | None = None,
                     force: bool = False) -> AbstractContextManager[Path]:
    """The lock of a single output file (``score --output``): ``<output>.lock`` beside it."""
    output = Path(output).expanduser()
    return hold_lock(output.with_name(output.name + ".lock"), command=command, force=force)


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of a started process group; before one is started, (launcher rank, 1):
    rank 0 takes the lock and the others do not, with no broadcast to wait for."""
    if "torch" not in sys.modules:  # nothing parallel imported: a single process (scoring)
        return 0, 1
    import torch.distributed as dist  # noqa: PLC0415

    from megatron_detox.parallel.env import read_launch_env  # noqa: PLC0415 - reads RANK / SLURM_PROCID

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return read_launch_env(os.environ).rank, 1
