"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd from the Debian
packages (slurmctld, slurmd, slurm-client, munge), each with its own ports, key, sockets, state
and spool folders under one temp folder, and a node that has one fake GPU; node selection by
select/cons_tres (default), or select/cons_res or select/linear (clusters that accept GPUs only
as --gres).

The SLURM client commands are reached through wrappers in ``<root>/bin`` (put first in PATH):
each exports ``SLURM_CONF`` itself, because the Snakemake jobstep plugin strips every
``SLURM_*`` variable before its inner ``srun``. The ``sbatch`` and ``srun`` wrappers append
their arguments to ``<root>/calls/<cmd>.log`` (one line per call) so that tests can see exactly
what was submitted. ``srun`` fails once, before running anything, for a step whose command line
matches the regex in ``LR_FAIL_ONCE`` (a transient job failure, to exercise retries).

Only the processes started here are stopped (by their pid), after cancelling every job.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo", "sacct", "sacctmgr",
           "sshare", "salloc")  # fmt: skip
NODE = "lrnode"
PARTITION = "lrtest"

SLURM_CONF = """\
ClusterName=lrtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_lo}-{srun_hi}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
{select}
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
SchedulerParameters=sched_min_interval=0
ReturnToService=2
MinJobAge={min_job_age}
InactiveLimit=0
KillWait=2
SlurmdTimeout=60
GresTypes=gpu
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=256000 \
 Gres=gpu:1 State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""

# The node-selection plugins a cluster can run: cons_tres (GPUs as trackable resources: --gpus,
# --cpus-per-gpu) and the older cons_res (cores) and linear (whole nodes), which take GPUs only
# as --gres and refuse --gpus / --cpus-per-gpu with "Requested GRES option unsupported by
# configured SelectType plugin".
SELECT = {
    "cons_tres": "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core",
    "cons_res": "SelectType=select/cons_res\nSelectTypeParameters=CR_Core",
    "linear": "SelectType=select/linear",
}

GRES_CONF = "AutoDetect=off\nNodeName={node} Name=gpu File=/dev/null\n"

WRAPPER = """#!/bin/sh
export SLURM_CONF={conf}
{log}exec {real} "$@"
"""
LOG_ARGS = 'printf "%s\\n" "$*" >> {calls}/{name}.log\n'
FAIL_ONCE = """if [ -n "$LR_FAIL_ONCE" ] && printf "%s" "$*" | grep -Eq -- "$LR_FAIL_ONCE" \\
   && mkdir {calls}/failed-once 2>/dev/null; then
  echo "injected failure (LR_FAIL_ONCE=$LR_FAIL_ONCE)" >&2; exit 3
fi
"""


def missing_tools() -> list[str]:
    """The SLURM/munge programs this host lacks (empty: a cluster can be started)."""
    return [p for p in PACKAGES if shutil.which(p, path=_system_path()) is None]


def _system_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SlurmCluster:
    """munged + slurmctld + slurmd rooted at ``root``; ``env()`` is what a client needs."""

    def __init__(self, root: Path, cpus: int = 4, min_job_age: int = 300,
                 select: str = "cons_tres") -> None:  # fmt: skip
        self.root = Path(root)
        self.cpus = cpus
        self.min_job_age = min_job_age
        self.select = select
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"
        self.calls = self.root / "calls"

    # -- set-up ---------------------------------------------------------------------------
    def write_files(self) -> None:
        r = self.root
        for sub in ("munge", "state", "spool", "run", "log", "bin", "calls"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld, slurmd, srun_lo = _free_ports(3)
        host = socket.gethostname()
        self.conf.write_text(
            SLURM_CONF.format(
                host=host,
                root=r,
                ctld_port=ctld,
                slurmd_port=slurmd,
                srun_lo=srun_lo,
                srun_hi=srun_lo + 20,
                min_job_age=self.min_job_age,
                node=NODE,
                cpus=self.cpus,
                partition=PARTITION,
                select=SELECT[self.select],
            )  # fmt: skip
        )
        (r / "gres.conf").write_text(GRES_CONF.format(node=NODE))
        (r / "plugstack.conf").write_text("")
        for name in CLIENTS:
            real = shutil.which(name, path=_system_path())
            if real is None:
                continue
            log = LOG_ARGS.format(calls=self.calls, name=name) if name in ("sbatch", "srun") else ""
            if name == "srun":
                log += FAIL_ONCE.format(calls=self.calls)
            w = self.bin / name
            w.write_text(WRAPPER.format(conf=self.conf, log=log, real=real))
            w.chmod(0o755)

    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["SLURM_CONF"] = str(self.conf)
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env(), start_new_session=True,
        )  # fmt: skip
        log.close()

    def start(self, timeout: float = 60) -> SlurmCluster:
        self.write_files()
        r = self.root
        self._spawn("munged", [
            shutil.which("munged", path=_system_path()), "-F", "--force",
            f"--socket={r}/munge/munge.sock", f"--key-file={r}/munge/munge.key",
            f"--pid-file={r}/run/munged.pid", f"--log-file={r}/log/munged.log",
            f"--seed-file={r}/munge/munged.seed",
        ])  # fmt: skip
        self._wait(lambda: (r / "munge" / "munge.sock").exists(), timeout, "munged socket")
        self._spawn("slurmctld", [
            shutil.which("slurmctld", path=_system_path()), "-D", "-i", "-f", str(self.conf),
        ])  # fmt: skip
        self._wait(self._controller_up, timeout, "slurmctld")
        self._spawn("slurmd", [
            shutil.which("slurmd", path=_system_path()), "-D", "-f", str(self.conf),
            "-N", NODE,
        ])  # fmt: skip
        self._wait(self._node_ready, timeout, "slurmd (node idle)")
        return self

    def _controller_up(self) -> bool:
        ping = self._run("scontrol", "ping")
        return ping.returncode == 0 and "UP" in ping.stdout

    def _node_ready(self) -> bool:
        out = self._run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
        return bool(out) and all(s in ("idle", "mix", "alloc") for s in out)

    def _run(self, cmd: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / cmd), *args], capture_output=True, text=True, env=self.env(),
            timeout=timeout,
        )  # fmt: skip

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{self.logs()}")
            try:
                if ok():
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout} s:\n{self.logs()}")

    def logs(self, tail: int = 2000) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    # -- queries --------------------------------------------------------------------------
    def sbatch(self, *args: str) -> subprocess.CompletedProcess:
        """``sbatch *args`` through the wrapper (logged like Snakemake's submissions)."""
        return self._run("sbatch", *args)

    def job_ids(self) -> list[str]:
        out = self._run("squeue", "-h", "-o", "%i", "--states=all").stdout
        return out.split()

    def calls_of(self, cmd: str) -> list[str]:
        f = self.calls / f"{cmd}.log"
        return f.read_text().splitlines() if f.exists() else []

    # -- tear-down ------------------------------------------------------------------------
    def stop(self) -> None:
        try:
            ids = self._run("squeue", "-h", "-o", "%i").stdout.split()
            if ids:
                self._run("scancel", *ids)
                deadline = time.monotonic() + 15
                while (
                    time.monotonic() < deadline
                    and self._run("squeue", "-h", "-o", "%i").stdout.split()
                ):
                    time.sleep(0.3)
        except (subprocess.SubprocessError, OSError):
            pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
