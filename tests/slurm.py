"""A throw-away SLURM cluster for tests: one node, this machine, with job accounting.

    from slurm import slurm_cluster  # noqa: F401   (pytest fixture, session scope)

    def test_x(slurm_cluster):
        subprocess.run(["sbatch", "--wait", ...], env=slurm_cluster.env, ...)

Five daemons, each in the foreground under the fixture, in one temp folder with all their
files: munged (a fresh 1 KB key owned by `munge`, mode 400; its own socket), MariaDB (an empty
data folder, a unix socket only), slurmdbd (accounting: submitit learns a job's end from
`sacct`, so without it a cancelled or killed task would never be seen to end), slurmctld and
slurmd, with a generated slurm.conf. Clients find the cluster through SLURM_CONF (in `.env`);
nothing under /etc is read or written. The node is this machine by its short host name at
127.0.0.1, with all its CPUs and most of its free memory, in one partition. The daemons listen
on free ports of 127.0.0.1 only (CommunicationParameters=NoCtldInAddrAny,NoInAddrAny).

They run as root (munged as `munge`), without systemd or cgroups (proctrack/linuxproc,
task/none): the cluster needs root. Without root or the Debian packages (PACKAGES below) the
fixture skips the tests that use it, saying why. KillWait is 5 s (SLURM's default: 30 s), so a
cancelled or timed-out task is SIGKILLed 5 s after its SIGTERM.

The fixture is ready when the node is idle and sacct answers (~4 s). At exit every job is
cancelled, the daemons are stopped by the pids the fixture recorded (SIGTERM, then SIGKILL),
and any process still carrying this cluster's SLURM_CONF in its environment (a job that outlived
its slurmd) is killed; the folder is deleted. Should the test process die without its teardown
(killed by `timeout`), the daemons get SIGTERM from the kernel (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 90  # seconds for each daemon to come up; all five take ~4 s on 2 cores
STOP_TIMEOUT = 20
# The programs the cluster needs, and the Debian packages that have them.
PROGRAMS = (
    *("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"),
    *("sinfo", "squeue", "sbatch", "scancel", "sacct"),
)
# Job states sacct shows before a job has ended (or before accounting heard that it did).
UNSETTLED = ("PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING", "CONFIGURING")
PACKAGES = ("munge", "mariadb-server-core", "slurmdbd", "slurmctld", "slurmd", "slurm-client")


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the cluster (not root, packages missing): tests skip."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _available_memory_mb() -> int:
    """MemAvailable of /proc/meminfo, in MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after STOP_TIMEOUT seconds."""
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5)):
            if self.process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)


@dataclass
class SlurmCluster:
    folder: Path
    conf: Path  # slurm.conf; SLURM_CONF in `env`
    node: str
    partition: str
    cpus: int
    memory_mb: int  # the node's RealMemory
    env: dict[str, str]  # os.environ with SLURM_CONF: pass it to every client and launcher
    daemons: list[Daemon] = field(default_factory=list)

    def run(self, *command: str, timeout: float = 60, check: bool = True) -> str:
        """A SLURM client command (sinfo, squeue, sbatch...) against this cluster; its stdout."""
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def squeue(self) -> list[str]:
        """The ids of the jobs still pending, running or completing (array tasks as 12_3)."""
        out = self.run("squeue", "--noheader", "--array", "--states=all", "--format=%i %T")
        return [
            line.split()[0]
            for line in out.splitlines()
            if line.strip()
            and line.split()[1]
            in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED")
        ]

    def node_state(self) -> str:
        return self.run("sinfo", "--noheader", "--Node", "--format=%T", "-n", self.node).strip()

    def accounting_works(self) -> bool:
        return (
            subprocess.run(
                ["sacct", "--noheader", "--allusers"], env=self.env, capture_output=True, timeout=30
            ).returncode
            == 0
        )

    def sacct(self, job: str, tasks: Sequence[str] = (), timeout: float = 30) -> dict[str, str]:
        """Job (array task) id -> state, as accounting recorded them, for job `job`.

        slurmctld sends a job's end to slurmdbd on its own time, so right after a job ends
        sacct may not list it yet, or still list it RUNNING: waits (at most `timeout` s) until
        each id in `tasks` is recorded in a final state."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(
                "sacct", "--noheader", "--parsable2", "-X", "-o", "JobID,State", "-j", job
            )
            states = dict(line.split("|", 1) for line in out.splitlines() if line.strip())
            settled = all(states.get(t, "PENDING").split()[0] not in UNSETTLED for t in tasks)
            if settled or time.monotonic() > deadline:
                return states
            time.sleep(0.5)

    def cancel_all(self) -> None:
        self.run("scancel", "--user", pwd.getpwuid(os.getuid()).pw_name, check=False)

    def wait_until_empty(self, timeout: float = 120) -> list[str]:
        """Waits (at most `timeout` s) for squeue to be empty; returns what is left."""
        deadline = time.monotonic() + timeout
        while (left := self.squeue()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {d.name} ({path}):\n{tail(path, chars)}"
            for d in self.daemons
            for path in (d.log, d.log.with_suffix(".out"))
            if path.exists()
        )

    def stop(self) -> None:
        """Cancels every job, stops the daemons this cluster started, then anything left that
        carries its SLURM_CONF."""
        if any(d.name == "slurmctld" and d.process.poll() is None for d in self.daemons):
            with contextlib.suppress(Exception):
                self.cancel_all()
                self.wait_until_empty(timeout=STOP_TIMEOUT + 10)
        for daemon in reversed(self.daemons):  # slurmd, slurmctld, slurmdbd, MariaDB, munged
            daemon.stop()
        for pid in processes_with_env("SLURM_CONF", str(self.conf)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids of this machine's processes (other than this one) whose environment has key=value."""
    wanted = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def check_prerequisites() -> pwd.struct_passwd:
    """The `munge` user; raises ClusterUnavailable naming what is missing."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test SLURM cluster runs its daemons as root; not root")
    missing = [name for name in PROGRAMS if shutil.which(name) is None]
    if missing:
        raise ClusterUnavailable(
            f"not installed: {', '.join(missing)} (apt-get install {' '.join(PACKAGES)})"
        )
    try:
        return pwd.getpwnam("munge")
    except KeyError as error:
        raise ClusterUnavailable("no `munge` user (apt-get install munge)") from error


@dataclass
class Layout:
    """Where everything lives, and the ports, for one cluster."""

    folder: Path
    node: str
    partition: str
    cpus: int
    memory_mb: int
    ctld_port: int = 0
    slurmd_port: int = 0
    dbd_port: int = 0

    @property
    def munge(self) -> Path:
        return self.folder / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket"

    @property
    def mysql(self) -> Path:
        return self.folder / "mysql"

    @property
    def mysql_socket(self) -> Path:
        return self.mysql / "mysqld.sock"

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def slurm_conf(self) -> str:
        folder, node = self.folder, self.node
        return lines(
            "ClusterName=gdexptest",
            f"SlurmctldHost={node}({HOST})",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            # Bind to the configured addresses (127.0.0.1), not to every interface.
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/slurmdbd",
            f"AccountingStorageHost={HOST}",
            f"AccountingStoragePort={self.dbd_port}",
            # For slurmdbd connections this names the munge socket (AuthInfo does not apply).
            f"AccountingStoragePass={self.munge_socket}",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            # Tests cancel jobs and hit time limits: SIGKILL 5 s after SIGTERM, not 30.
            "KillWait=5",
            "OverTimeLimit=0",
            "InactiveLimit=0",
            "MinJobAge=60",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={node} NodeAddr={HOST} CPUs={self.cpus} RealMemory={self.memory_mb}"
            " State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        )

    def slurmdbd_conf(self) -> str:
        """slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF."""
        return lines(
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"DbdHost={self.node}",
            f"DbdAddr={HOST}",
            f"DbdPort={self.dbd_port}",
            "CommunicationParameters=NoInAddrAny",
            "SlurmUser=root",
            "StorageType=accounting_storage/mysql",
            "StorageHost=localhost",  # the unix socket in MYSQL_UNIX_PORT
            "StorageUser=root",
            "StorageLoc=slurm_acct_db",
            f"LogFile={self.folder / 'slurmdbd.log'}",
            f"PidFile={self.folder / 'slurmdbd.pid'}",
            "DebugLevel=info",
        )


def lines(*entries: str) -> str:
    return "\n".join([*entries, ""])


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A Popen preexec_fn: the child gets `sig` when the process that started it dies, e.g. a
    pytest killed by `timeout`, which runs no fixture teardown (Linux's PR_SET_PDEATHSIG)."""

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")

    return arm


def _start(
    name: str, command: Sequence[str], log: Path, env: dict[str, str], **popen: Any
) -> Daemon:
    """A daemon in the foreground, its stdout and stderr to <log>.out; it gets SIGTERM if the
    test process dies without stopping it."""
    with log.with_suffix(".out").open("w") as stream:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # after Popen's user/group switch: it survives that
            **popen,
        )
    return Daemon(name, process, log)


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def _start_munged(cluster: SlurmCluster, layout: Layout, user: pwd.struct_passwd) -> None:
    """A 1 KB random key owned by `munge` (mode 400), munged as `munge` on its own socket."""
    munge = layout.munge
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    for path in (munge, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    cluster.daemons.append(
        _start(
            "munged",
            [
                *("munged", "--foreground", "--force", f"--socket={layout.munge_socket}"),
                *(f"--key-file={key}", f"--log-file={munge / 'munged.log'}"),
                *(f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}"),
            ],
            munge / "munged.log",
            cluster.env,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd=munge,
        )
    )
    _wait(layout.munge_socket.exists, cluster, "munged did not open its socket")


def _start_mariadb(cluster: SlurmCluster, layout: Layout) -> None:
    """The accounting database: an empty MariaDB data folder, reachable only through a unix
    socket in a folder only root can enter (no TCP, and so no accounts: --skip-grant-tables)."""
    mysql = layout.mysql
    (mysql / "data").mkdir(mode=0o700, parents=True)
    mysql.chmod(0o700)
    cluster.daemons.append(
        _start(
            "mariadbd",
            [
                *("mariadbd", "--no-defaults", "--user=root", f"--datadir={mysql / 'data'}"),
                *(f"--socket={layout.mysql_socket}", f"--pid-file={mysql / 'mysqld.pid'}"),
                *("--skip-networking", "--skip-grant-tables", f"--log-error={mysql / 'error.log'}"),
                *("--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M"),
                "--innodb-flush-log-at-trx-commit=0",  # a test database need not survive a crash
            ],
            mysql / "error.log",
            cluster.env,
            cwd=mysql,
        )
    )
    _wait(layout.mysql_socket.exists, cluster, "MariaDB did not open its socket")


@contextlib.contextmanager
def running_slurm_cluster(partition: str = "debug", attempts: int = 3) -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster with accounting, in a temp folder; everything stopped and
    deleted on exit. Raises ClusterUnavailable if this machine cannot run it, RuntimeError
    (with the daemons' logs) if it does not come up."""
    munge_user = check_prerequisites()
    # Not under pytest's tmp_path (private to its user): munged, as `munge`, must get in.
    folder = Path(tempfile.mkdtemp(prefix="gdexp-slurm-"))
    folder.chmod(0o755)
    layout = Layout(
        folder,
        node=socket.gethostname().split(".")[0],
        partition=partition,
        cpus=os.cpu_count() or 1,
        memory_mb=max(512, min(_available_memory_mb() - 1024, 16 * 1024)),
    )
    # This environment, less the variables of any SLURM job it runs in, pointed at this cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env["SLURM_CONF"] = str(layout.conf)
    cluster = SlurmCluster(
        folder, layout.conf, layout.node, partition, layout.cpus, layout.memory_mb, env
    )
    try:
        _start_munged(cluster, layout, munge_user)
        _start_mariadb(cluster, layout)
        for sub in ("state", "spool"):
            (folder / sub).mkdir(mode=0o755)
        for attempt in range(attempts):  # a free port may be taken before its daemon binds it
            layout.ctld_port, layout.slurmd_port, layout.dbd_port = free_ports(3)
            layout.conf.write_text(layout.slurm_conf())
            dbd_conf = folder / "slurmdbd.conf"
            dbd_conf.write_text(layout.slurmdbd_conf())
            dbd_conf.chmod(0o600)  # slurmdbd insists: it may hold the database password
            started = [
                _start(
                    "slurmdbd",
                    ["slurmdbd", "-D"],
                    folder / "slurmdbd.log",
                    {**env, "MYSQL_UNIX_PORT": str(layout.mysql_socket)},
                    cwd=folder,
                )
            ]
            cluster.daemons += started
            try:
                _wait(lambda: _listening(layout.dbd_port), cluster, "slurmdbd is not listening")
                started += [
                    _start(
                        "slurmctld",
                        ["slurmctld", "-D", "-c", "-i"],
                        folder / "slurmctld.log",
                        env,
                        cwd=folder,
                    ),
                    _start(
                        "slurmd",
                        ["slurmd", "-D", "-N", layout.node],
                        folder / "slurmd.log",
                        env,
                        cwd=folder,
                    ),
                ]
                cluster.daemons += started[1:]
                _wait(lambda: cluster.node_state() == "idle", cluster, "the node is not idle")
                # The controller has registered the cluster with slurmdbd: sacct answers.
                _wait(cluster.accounting_works, cluster, "sacct does not answer")
                break
            except RuntimeError:
                in_use = any("address already in use" in tail(d.log).lower() for d in started)
                if attempt == attempts - 1 or not in_use:
                    raise
                for daemon in reversed(started):
                    daemon.stop()
                    cluster.daemons.remove(daemon)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def free_ports(count: int) -> list[int]:
    """`count` different free ports of 127.0.0.1."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _wait(
    ready: Callable[[], bool], cluster: SlurmCluster, what: str, timeout: float = START_TIMEOUT
) -> None:
    """Polls `ready` until it holds; raises with the daemons' logs when one of them exits or
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            pass
        dead = [d.name for d in cluster.daemons if d.process.poll() is not None]
        if dead or time.monotonic() > deadline:
            reason = f"exited: {', '.join(dead)}" if dead else f"not ready after {timeout} s"
            raise RuntimeError(f"SLURM test cluster: {what} ({reason})\n{cluster.logs()}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The session's SLURM cluster; skips the test when this machine cannot run one, fails it
    when the cluster does not come up."""
    try:
        with running_slurm_cluster() as cluster:
            yield cluster
    except ClusterUnavailable as reason:
        pytest.skip(f"no SLURM test cluster: {reason}")
