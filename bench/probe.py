"""Per-request costs of a service process: SQL statements, round trips and CPU (benchmarks only).

A benchmark starts a service through this file instead of ``python -m <service>``::

    argv = probe.argv("orders")          # [python, bench/probe.py, orders]
    proc = subprocess.Popen(argv, env=probe.env(env, tmp, "orders"))
    before = probe.snapshot(proc)        # counters + CPU seconds of that process
    ...                                  # drive N requests
    probe.report("sale", before, probe.snapshot(proc), n)

In the service process it listens to every SQLAlchemy engine (``before_cursor_execute``
on the ``Engine`` class, commits and rollbacks of connections, pool checkouts and
resets) and writes the counts as JSON to ``$MALL_PROBE_FILE`` when it receives
SIGUSR1. CPU time comes from ``/proc/<pid>/stat`` (user + system). The listeners cost
a little CPU themselves; read the statement counts exactly and CPU as a ratio.

Run with no argument it does nothing (``make bench`` runs every file of bench/).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path


def _install(path: str) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    counts: Counter[str] = Counter()

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, params, context, executemany):
        counts["statements"] += 1
        counts[statement.lstrip().split(None, 1)[0].upper()] += 1

    @event.listens_for(Engine, "commit")
    def _commit(conn):
        counts["COMMIT"] += 1

    @event.listens_for(Engine, "rollback")
    def _rollback(conn):
        counts["ROLLBACK"] += 1

    @event.listens_for(Pool, "checkout")
    def _checkout(dbapi_connection, record, proxy):
        counts["checkouts"] += 1

    @event.listens_for(Pool, "reset")
    def _reset(dbapi_connection, record, state=None):
        counts["pool_resets"] += 1

    def dump(_signum, _frame):
        tmp = path + ".tmp"
        Path(tmp).write_text(json.dumps(counts))
        os.replace(tmp, path)

    signal.signal(signal.SIGUSR1, dump)


def argv(module: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), module]


def env(base: dict, folder, name: str) -> dict:
    return {**base, "MALL_PROBE_FILE": str(Path(folder) / f"probe-{name}.json")}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(proc, within: float = 10) -> dict:
    """The counters and CPU seconds of a process started through :func:`argv`."""
    path = Path(proc._mall_probe_file)
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.time() + within
    while time.time() < deadline:
        if path.exists() and path.stat().st_mtime_ns != mtime:
            try:
                counts = json.loads(path.read_text())
                break
            except ValueError:
                pass
        time.sleep(0.01)
    else:
        raise SystemExit(f"{proc.args} wrote no counters")
    return {"cpu": cpu_seconds(proc.pid), **counts}


def cpu_only(proc) -> dict:
    """CPU seconds of any process (one not started under the probe: the gateway)."""
    return {"cpu": cpu_seconds(proc.pid)}


def start(popen, module: str, base_env: dict, folder, **kw):
    """``subprocess.Popen`` of ``module`` under the probe; the process remembers its counter file."""
    e = env(base_env, folder, module)
    proc = popen(argv(module), env=e, **kw)
    proc._mall_probe_file = e["MALL_PROBE_FILE"]
    return proc


class Spy:
    """``py-spy record`` of a process over a phase when ``$MALL_BENCH_PYSPY`` names a folder
    (``pip install py-spy``); a no-op otherwise. Writes ``<folder>/<name>.txt`` (collapsed stacks)."""

    def __init__(self, proc, name: str):
        import shutil
        import subprocess

        folder, self.spy = os.environ.get("MALL_BENCH_PYSPY"), None
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if folder and Path(exe).exists():
            out = Path(folder) / f"{name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            self.spy = subprocess.Popen([exe, "record", "--pid", str(proc.pid), "-r", "200", "-f", "raw", "-o", str(out)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait(30)


def per_request(before: dict, after: dict, n: int) -> dict:
    keys = set(before) | set(after)
    d = {k: (after.get(k, 0) - before.get(k, 0)) / n for k in keys}
    d["cpu_ms"] = d.pop("cpu") * 1000
    return d


def report(name: str, before: dict, after: dict, n: int, process: str = "") -> dict:
    """Print one line of per-request figures (statements by verb, round trips, CPU ms)."""
    d = per_request(before, after, n)
    verbs = " ".join(f"{k} {d[k]:.2f}" for k in sorted(d) if k.isupper() and d[k])
    extra = f"  [{verbs}]" if verbs else ""
    stmts = f"{d.get('statements', 0):>5.2f} statements, {d.get('checkouts', 0):.2f} checkouts" if "statements" in d else ""
    print(f"  {name:<44} {process:<8} {d['cpu_ms']:>6.2f} CPU ms/req  {stmts}{extra}", flush=True)
    return d


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("bench/probe.py: a helper of the benchmarks (run a service under it: bench/probe.py <module>)")
        raise SystemExit(0)
    import runpy

    _install(os.environ["MALL_PROBE_FILE"])
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
