"""One writer per run directory: `RUN/.lock`, taken before a run writes anything there and removed when it ends.

The lock is a file created with O_CREAT | O_EXCL (atomic on local disks, NFS and Google Drive's FUSE mount, where
fcntl locks may not work). It records who holds it: pid, host, the process's start time, the command. It is stale,
and taken over, when
  - its host is this machine and that process is gone (a killed or crashed run must not block its own resume);
  - its pid is this process's and the run that took it is not training now (a notebook re-running a cell);
  - its host is another machine and it has not been refreshed for STALE_AFTER_S seconds (the holder touches it
    every HEARTBEAT_S seconds: a Colab VM that disconnected stops doing so).
Anything else refuses at once with a RunDirError naming the directory and the holder. Under `accelerate launch`
the main process takes the one lock of the run; the others take none.
"""
from __future__ import annotations

import atexit
import datetime
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from ..checkpoint import RunDirError, disk_error

__all__ = ["RunLock", "NoLock", "LOCK_NAME", "STALE_AFTER_S", "HEARTBEAT_S"]

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
_HELD = {}  # lock path -> the RunLock of this process that holds it


def _proc_start(pid: int):
    """The process's start time in clock ticks since boot (Linux), or None where /proc is not available."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start) -> bool:
    """Is process `pid` (started at `start`, when known) running on this machine? A zombie counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    now = _proc_start(pid)
    return start is None or now is None or now == start  # another start time: the pid was reused


class NoLock:
    """What a non-main process holds (the main process holds the run's lock), or a Trainer before setup."""
    busy = False

    def held(self):
        return self

    def check(self):
        pass

    def release(self):
        pass


class RunLock:
    """The lock of one run directory, held by this process. `busy` is True while the run sets up or trains."""

    def __init__(self, run_dir: Path, info: dict):
        self.run_dir, self.path, self.info = run_dir, run_dir / LOCK_NAME, info
        self.busy, self.created_dir = True, False
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="sdkit-run-lock", daemon=True)

    @classmethod
    def acquire(cls, run_dir) -> "RunLock":
        """Take `run_dir`'s lock (creating the folder), or raise RunDirError naming the holder."""
        run_dir = Path(run_dir)
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise disk_error(run_dir, e) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300]}
        lock = cls(run_dir, info)
        for attempt in range(5):
            try:
                fd = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(lock.path)
                if holder is None:
                    continue  # removed in between: try again
                if not holder and attempt < 4:
                    time.sleep(0.2)  # just created by a run starting now: its details follow at once
                    continue
                mine = _HELD.get(str(lock.path))
                if holder.get("pid") == info["pid"] and holder.get("host") == info["host"]:
                    if mine is not None and mine.busy:
                        raise RunDirError(f"out: {run_dir} is in use by another run in this process (a run still "
                                          f"training, e.g. in another notebook cell or thread). Fix: wait for it "
                                          f"to finish or stop it, or choose another --out.")
                    if mine is not None:
                        mine._stop.set()  # a run of this process that finished setting up but is not training
                    _HELD[str(lock.path)] = lock
                    lock.created_dir = created
                    lock._beat.start()
                    return lock
                if not _stale(lock.path, holder, info["host"]):
                    raise RunDirError(_refusal(run_dir, lock.path, holder, info["host"]))
                _break(lock.path, holder)
                continue
            except OSError as e:
                raise disk_error(run_dir, e) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(info))
            _HELD[str(lock.path)] = lock
            lock.created_dir = created
            lock._beat.start()
            return lock
        raise RunDirError(f"out: could not take the lock {lock.path} (it keeps changing: another run is starting "
                          f"there). Fix: choose another --out.")

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return  # vanished: the next checkpoint write reports it

    def held(self) -> "RunLock":
        """This lock, or (when another run of this process took it over since) the lock taken again."""
        return self if _HELD.get(str(self.path)) is self else RunLock.acquire(self.run_dir)

    def check(self):
        """Raise RunDirError when the lock file (so, usually, the whole run directory) has vanished."""
        if _HELD.get(str(self.path)) is self and not self.path.is_file():
            raise RunDirError(f"out: {self.run_dir} vanished or was replaced while this run was writing it (its lock "
                              f"{self.path} is gone); a Google Drive folder whose mount was lost looks like this. Fix: "
                              f"remount the drive or restore the folder, then continue with --resume latest.")

    def release(self):
        """Remove the lock file (when this RunLock still holds it); remove the folder too when this run created it
        and left nothing in it (a run that failed to start leaves no trace)."""
        self._stop.set()
        self.busy = False
        if _HELD.get(str(self.path)) is not self:
            return
        del _HELD[str(self.path)]
        holder = _read(self.path)
        if holder is not None and holder.get("pid") == self.info["pid"] and holder.get("host") == self.info["host"]:
            try:
                self.path.unlink()
                if self.created_dir and not any(self.run_dir.iterdir()):
                    self.run_dir.rmdir()
            except OSError:
                pass


def _read(path: Path):
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as held (by someone unknown) until it is old enough


def _stale(path: Path, holder: dict, host: str) -> bool:
    if holder.get("host") == host and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"], holder.get("proc_start"))
    try:
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return True


def _break(path: Path, holder: dict):
    """Remove a stale lock, unless someone replaced it in the meantime (then it is theirs: put it back)."""
    aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != holder:  # a new holder took it between our read and the move
        try:
            os.link(aside, path)
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def _refusal(run_dir: Path, path: Path, holder: dict, host: str) -> str:
    who = f"pid {holder.get('pid', '?')}"
    who += " on this machine" if holder.get("host") == host else f" on host {holder.get('host', '?')}"
    if holder.get("started"):
        who += f", started {holder['started']}"
    if holder.get("command"):
        who += f" ({holder['command']})"
    fix = "wait for that run to finish or stop it, or choose another --out"
    if holder.get("host") != host:
        fix += (f"; a lock of another machine expires {STALE_AFTER_S / 60:.0f} minutes after that run stopped "
                f"(a Colab disconnect)")
    return (f"out: {run_dir} is in use by another run: {who}. Only one run may write a run directory. Fix: {fix}. "
            f"If no run is using it, delete {path}.")


@atexit.register
def _release_all():
    for lock in list(_HELD.values()):
        lock.release()
