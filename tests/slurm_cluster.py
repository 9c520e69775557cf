"""A real one-node Slurm for the sweep tests: munged, slurmctld and slurmd from Debian's packages,
started on localhost in a private folder (own munge socket and key, own ports, own slurm.conf
passed through SLURM_CONF), so nothing system-wide is changed and nothing else is touched.
`start()` returns the environment to submit with and a stop function (it ends the three daemons
by their pid files); it raises Unavailable with the reason when this machine cannot run Slurm."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


class Unavailable(Exception):
    pass


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def _install() -> None:
    if all(_which(b) for b in BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("slurm-wlm/munge are not installed and apt-get cannot run here (not root or no apt)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            raise Unavailable(f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-300:]}")
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        raise Unavailable(f"apt-get installed no {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def start(cpus: int = 2) -> tuple[dict, callable, Path]:
    _install()
    if os.geteuid() != 0:
        raise Unavailable("starting slurmd needs root (it launches jobs as the submitting user)")
    try:
        munge_user = pwd.getpwnam("munge")
    except KeyError:
        raise Unavailable("no 'munge' user (the munge package creates it)") from None
    root = Path(tempfile.mkdtemp(prefix="harness-slurm-"))
    root.chmod(0o755)  # munged (its own user) must reach its socket folder
    mdir, kdir = root / "munge", root / "munge" / "key"
    kdir.mkdir(parents=True)
    for d in ("state", "spool", "log"):
        (root / d).mkdir()
    (kdir / "munge.key").write_bytes(os.urandom(1024))
    for p in (mdir, kdir, kdir / "munge.key"):
        os.chown(p, munge_user.pw_uid, munge_user.pw_gid)
    mdir.chmod(0o755)
    kdir.chmod(0o700)
    (kdir / "munge.key").chmod(0o400)
    sock = mdir / "munge.sock"
    stop_files = [root / "slurmd.pid", root / "slurmctld.pid", mdir / "munged.pid"]

    def stop() -> None:
        for f in stop_files:
            _kill_pidfile(f)
        shutil.rmtree(root, ignore_errors=True)

    try:
        r = subprocess.run(
            [
                "su",
                "-s",
                "/bin/sh",
                "munge",
                "-c",
                f"{_which('munged')} --socket={sock} --key-file={kdir / 'munge.key'} "
                f"--pid-file={mdir / 'munged.pid'} --log-file={mdir / 'munged.log'} "
                f"--seed-file={mdir / 'seed'}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if r.returncode != 0:
            raise Unavailable(f"munged did not start: {(r.stderr or r.stdout).strip()[-300:]}")
        host = socket.gethostname().split(".")[0]
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
        conf = root / "slurm.conf"
        conf.write_text(
            "\n".join(
                [
                    "ClusterName=harness",
                    f"SlurmctldHost={host}",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={sock}",
                    "CredType=cred/munge",
                    f"StateSaveLocation={root / 'state'}",
                    f"SlurmdSpoolDir={root / 'spool'}",
                    f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    f"NodeName={host} CPUs={cpus} RealMemory={max(1024, mem - 2048)} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        env = dict(os.environ, SLURM_CONF=str(conf))
        for cmd in ([_which("slurmctld"), "-f", str(conf)], [_which("slurmd"), "-f", str(conf), "-N", host]):
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
            if r.returncode != 0:
                raise Unavailable(f"{Path(cmd[0]).name} did not start: {(r.stderr or r.stdout).strip()[-300:]}")
        end = time.time() + 60
        state = ""
        while time.time() < end:
            r = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], capture_output=True, text=True, env=env, timeout=20)
            state = r.stdout.strip()
            if state.startswith("idle"):
                return env, stop, root
            time.sleep(0.5)
        logs = (root / "log" / "slurmctld.log").read_text()[-300:] if (root / "log" / "slurmctld.log").exists() else ""
        raise Unavailable(f"the node never became idle (sinfo: {state!r}); slurmctld log: {logs}")
    except BaseException:
        stop()
        raise
