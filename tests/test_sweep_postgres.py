"""jem sweep on a real PostgreSQL server, as docs/stability.md ("Several machines") sets it up: a
throwaway server (initdb + pg_ctl on a free port in a temporary folder), the docs' createdb and
jem sweep lines run as written (host, port and folder replaced; --heartbeat 1 added), two sweep
processes on one study, one of them SIGKILLed in the middle of a trial.

The server test (marker ``postgres``, left out of `make test`) is skipped, with the reason, where no
server binaries or no driver exist; `make test-postgres` installs the server from the distribution's
packages and runs it (CI calls it)."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest

from torchjem.workflows.sweep.study import with_driver

DOCS = Path(__file__).parent.parent / "docs" / "stability.md"


def docs_block() -> list[str]:
    """The commands of the first bash block under "### Several machines" (continuations joined)."""
    text = DOCS.read_text()
    section = text[text.index("### Several machines"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.startswith("#")]


def server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """(bin folder, port) of a running throwaway server whose superuser is `jem` (trust auth)."""
    bindir = server_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) here; `make test-postgres` installs them")
    if not any(importlib.util.find_spec(d) for d in ("psycopg", "psycopg2")):
        pytest.skip('no PostgreSQL driver for Python; pip install "psycopg[binary]"')
    as_user: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="torchjem-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as the `postgres` user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        shutil.chown(tmp, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), tmp / "data"
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True, text=True)  # noqa: E731
    run(bindir / "initdb", "-D", data, "-U", "jem", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(bindir / "pg_ctl", "-D", data, "-l", tmp / "server.log", "-o", options, "-w", "start")
    try:
        yield bindir, port
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_command(line: str, port: int, out: Path) -> list[str]:
    """The docs' `jem sweep` line against the test server and folder, as the jem module."""
    args = shlex.split(line)
    assert args[:2] == ["jem", "sweep"]
    swapped = [a.replace("db-host:5432", f"127.0.0.1:{port}").replace("/shared/sweeps/digits", str(out))
               for a in args[2:]]
    return [sys.executable, "-m", "torchjem.cli", "sweep", *swapped, "--heartbeat", "1"]


def test_docs_url_is_bound_to_the_installed_driver():
    line = next(c for c in docs_block() if c.startswith("jem sweep"))
    url = re.search(r"--storage (\S+)", line).group(1)
    assert url.startswith("postgresql://")  # the docs show the URL without a driver...
    driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
    assert with_driver(url) == url.replace("postgresql://", f"postgresql+{driver}://")  # ...bound to the installed one
    assert with_driver("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_without_a_driver_the_url_is_one_error_naming_the_install(monkeypatch):
    from torchjem.errors import InputError
    from torchjem.workflows.sweep import study

    monkeypatch.setattr(study.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"no PostgreSQL driver is installed; pip install \"psycopg\[binary\]\""):
        study.with_driver("postgresql://jem:secret@db-host/sweeps")
    with pytest.raises(InputError, match="jem:\\*\\*\\*@db-host"):  # the password stays out of the message
        study.with_driver("postgres://jem:secret@db-host/sweeps")
    assert study.with_driver("sqlite:///study.db") == "sqlite:///study.db"


@pytest.mark.postgres
def test_two_sweep_processes_share_a_study_and_a_killed_workers_trial_is_rerun(server, tmp_path):
    bindir, port = server
    commands = docs_block()
    createdb = shlex.split(next(c for c in commands if c.startswith("createdb")))
    createdb = [str(bindir / "createdb"), *[a.replace("db-host", "127.0.0.1") for a in createdb[1:]], "-p", str(port)]
    subprocess.run(createdb, check=True, capture_output=True, text=True)
    out = tmp_path / "sweep"
    cmd = sweep_command(next(c for c in commands if c.startswith("jem sweep")), port, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    a, b = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env) for log in logs)
    try:
        # A holds a trial (its run directory's lock names A's pid) and has started training it (its
        # train.log exists; 10 steps take over a second): kill it there, before the trial's end
        deadline, held = time.monotonic() + 120, None
        while held is None and time.monotonic() < deadline and a.poll() is None:
            for lock in out.glob("trials/*/.lock"):
                text = lock.read_text() if lock.is_file() else ""
                if text.startswith(f"pid {a.pid} ") and (lock.parent / "train.log").is_file():
                    held = lock.parent.name
            time.sleep(0.1)
        assert held is not None, "worker A never trained in a trial"
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        metrics = out / "trials" / held / "metrics.jsonl"
        killed_log = metrics.read_text() if metrics.is_file() else ""
        assert b.wait(timeout=400) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()

    storage = with_driver(re.search(r"--storage (\S+)", " ".join(cmd)).group(1))
    study = optuna.load_study(study_name="digits-lr-step", storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t.user_attrs["run"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t.user_attrs["run"] for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(complete) == 8 and sorted(set(complete)) == sorted(complete)  # 2 x 2 settings x 2 seeds, each once
    assert failed == [held]  # the killed worker's trial: failed as stale, then completed by the other worker
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    b_log = (tmp_path / "worker1.log").read_text()
    assert re.search(rf"\[worker 0\] trial \d+: {held} ", b_log) and f"[worker 0] {held}: " in b_log
    assert not any(json.loads(x).get("event") == "done" for x in killed_log.splitlines())  # killed mid-training
    for run in complete:  # every trial trained to its end once (the killed one by B)
        lines = (out / "trials" / run / "metrics.jsonl").read_text().splitlines()
        assert sum(json.loads(x).get("event") == "done" for x in lines) == 1, run
    report = json.loads((out / "report" / "sweep.json").read_text())
    assert report["n_trials"] == 8 and sorted(r["run"] for r in report["records"]) == sorted(complete)


@pytest.mark.postgres
def test_queueing_waits_for_another_machines_lock_and_queues_the_grid_once(server, tmp_path):
    from conftest import TINY
    from torchjem.workflows.sweep import plan_sweep
    from torchjem.workflows.sweep.study import Study

    bindir, port = server
    subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "jem", "locks"], check=True)
    url = f"postgresql://jem@127.0.0.1:{port}/locks"
    spec = plan_sweep(None, [*TINY, "device=cpu"], ["optim.lr=0.001,0.002,0.003"], seeds=2)
    # two machines: one study, a sweep folder (claim lock file) each
    one, two = (Study.open(url, "grid", spec, lock=tmp_path / f"{m}.lock", heartbeat=1) for m in ("a", "b"))
    queued = lambda: len(one.optuna.get_trials(deepcopy=False))  # noqa: E731
    with one.exclusive():
        t = threading.Thread(target=two.plan_grid)
        t.start()
        t.join(2.0)
        assert t.is_alive() and queued() == 0  # the other machine waits for the study's lock
    t.join(30.0)
    assert not t.is_alive() and queued() == 6
    one.plan_grid()  # planned already: nothing more
    assert queued() == 6
    claims = [one.claim(), two.claim(), one.claim()]
    assert len({c.run for c in claims}) == 3
