"""A one-node SLURM cluster on this machine for the tests: munged + slurmctld + slurmd.

Everything lives in one tmp folder: the munge key, socket and logs, ``slurm.conf`` (found by
clients through ``SLURM_CONF``), the controller's state and slurmd's spool, on free ports. The
settings are those that worked here (``/work/shared/STACK.md``): SlurmUser=root,
proctrack/linuxproc, task/none, select/cons_tres with CR_Core_Memory, one node with this
machine's CPUs and ~90 % of its memory, no cgroup.conf. The daemons run in the foreground as
children of the test process and are stopped (SIGTERM, then SIGKILL) at the end.

There is no slurmdbd (it needs a MySQL server), so no accounting: submitit asks ``sacct`` for the
state of jobs that ended without a result (cancelled, killed), and :func:`SlurmCluster.env` puts
:mod:`tests.cluster.sacct_shim` first on ``PATH`` as ``sacct``, which answers from the
controller's job records (kept 600 s after a job ends). On a real cluster accounting answers.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmUnavailable(RuntimeError):
    """SLURM's or munge's programs are not installed."""


def missing_programs() -> list[str]:
    needed = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "sacct", "scancel", "squeue")
    return [p for p in needed if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


class SlurmCluster:
    """One controller and one node named after this host, in ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.memory_mb = _memory_mb()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def conf(self) -> Path:
        return self.base / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.base / "munge" / "munge.socket"

    def env(self) -> dict[str, str]:
        """Environment for SLURM's clients (sbatch, squeue, scancel, sacct) and the jobs."""
        path = f"{self.base / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        return {"SLURM_CONF": str(self.conf), "PATH": path}

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 90) -> None:
        self.base.chmod(0o711)  # the munge user must reach base/munge
        self._start_munge()
        self._write_conf()
        self._write_sacct()
        env = {**os.environ, **self.env()}
        logs = self.base / "log"
        for name, args in {
            "slurmctld": ["-D", "-i", "-f", str(self.conf)],
            "slurmd": ["-D", "-N", self.host, "-f", str(self.conf)],
        }.items():
            out = (logs / f"{name}.out").open("wb")
            self.procs[name] = subprocess.Popen(
                [_program(name), *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_idle(timeout)

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (SIGKILL after 20 s)."""
        if "slurmctld" in self.procs:
            self._cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def _cancel_all(self, timeout: float = 30) -> None:
        """``scancel`` every job and wait for them to end (their steps would outlive slurmd)."""
        env = {**os.environ, **self.env()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = subprocess.run(
                ["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True
            ).stdout.split()
            if not jobs:
                return
            subprocess.run(["scancel", *jobs], env=env, capture_output=True)
            time.sleep(1)

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        folder = self.base / "munge"
        folder.mkdir()
        folder.chmod(0o755)  # munged: clients must reach its socket
        key = folder / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        for path in (folder, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        (self.base / "log").mkdir()
        args = [
            _program("munged"), "--foreground", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--pid-file={folder / 'munged.pid'}",
            f"--log-file={folder / 'munged.log'}", f"--seed-file={folder / 'munged.seed'}",
        ]  # fmt: skip
        out = (self.base / "log" / "munged.out").open("wb")
        self.procs["munged"] = subprocess.Popen(  # as user munge, a direct child (reaped here)
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=munge.pw_uid,
            group=munge.pw_gid,
            extra_groups=[],
        )
        deadline = time.monotonic() + 30
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start: {self._log('munged')}")
            time.sleep(0.2)

    def _write_conf(self) -> None:
        b = self.base
        for sub in ("state", "spool"):
            (b / sub).mkdir()
        lines = [
            "ClusterName=dermtest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={b / 'state'}",
            f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmctldPidFile={b / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'slurmd.pid'}",
            f"SlurmctldLogFile={b / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={b / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "ReturnToService=2",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MinJobAge=600",
            "KillWait=5",
            "InactiveLimit=0",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _write_sacct(self) -> None:
        """``sacct`` answered from ``scontrol show job``: see the module docstring."""
        folder = self.base / "bin"
        folder.mkdir()
        shim = folder / "sacct"
        shutil.copy(Path(__file__).with_name("sacct_shim.py"), shim)
        shim.chmod(0o755)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        env = {**os.environ, **self.env()}
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {self._log(name)}")
            found = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True
            )
            state = found.stdout.strip()
            if state == "idle":
                return
            time.sleep(1)
        raise RuntimeError(
            f"node not idle after {timeout:.0f} s (sinfo: {state!r}): {self._log('slurmd')}"
        )

    def _log(self, name: str) -> str:
        logs = [self.base / "log" / f"{name}.log", self.base / "log" / f"{name}.out"]
        text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
        return text[-2000:]
