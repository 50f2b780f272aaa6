"""Soak test of the study engine: one sweep interrupted 20 times by SIGKILL and
5 times by SIGTERM at random moments, resumed after each, then compared with an
uninterrupted run of the same spec.

    PYTHONPATH=$PWD python benchmarks/soak.py [--kills 20] [--terms 5] [--seed 0]

Prints a Markdown table: trials lost, duplicated or different (metrics and
history compared exactly), and processes of the sweep still alive 10 s after
each signal (found by PID: every descendant of the killed sweep). Exit status 1
when any of those is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = """
[study]
name = "soak"
task = "tests.study_tasks:quadratic"
[fixed]
steps = 20
sleep = 0.15
[grid]
rounding = ["nearest", "stochastic"]
weight = ["fx8.6", "fx10.8"]
seed = {seeds}
[plot]
metric = "loss"
"""


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sweep_cmd(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "hwsim", "sweep", str(spec), "--out", str(out),
            "--workers", "2", "--no-progress", "--no-plot"]  # fmt: skip


def rows(out: Path) -> dict[str, tuple]:
    with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True) as conn:
        return {
            h: (status, metrics, history)
            for h, status, metrics, history in conn.execute(
                "SELECT hash, status, metrics, history FROM trials"
            )
        }


def duplicates(out: Path) -> int:
    with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True) as conn:
        q = "SELECT COUNT(*) FROM (SELECT hash FROM trials GROUP BY hash HAVING COUNT(*) > 1)"
        return conn.execute(q).fetchone()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--terms", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=40, help="seeds per config (4 configs)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="hwsim-soak-") as tmp:
        tmp = Path(tmp)
        spec = tmp / "soak.toml"
        spec.write_text(SPEC.format(seeds=list(range(args.seeds))))
        t0 = time.perf_counter()
        ref = subprocess.run(sweep_cmd(spec, tmp / "ref"), env=env, capture_output=True, text=True)
        ref_s = time.perf_counter() - t0
        if ref.returncode != 0:
            print(ref.stderr, file=sys.stderr)
            return 1
        signals = [signal.SIGKILL] * args.kills + [signal.SIGTERM] * args.terms
        rng.shuffle(signals)
        left_total = 0
        term_codes = []
        t0 = time.perf_counter()
        for sig in signals:
            proc = subprocess.Popen(sweep_cmd(spec, tmp / "soak"), env=env,
                                    stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            time.sleep(rng.uniform(0.5, 4.0))
            family = descendants(proc.pid)
            if proc.poll() is None:
                os.kill(proc.pid, sig)
            code = proc.wait()
            if sig == signal.SIGTERM:
                term_codes.append(code)
            deadline = time.monotonic() + 10
            while any(alive(p) for p in family) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = [p for p in family if alive(p)]
            left_total += len(left)
            for p in left:  # do not let one failure spoil the next rounds
                os.kill(p, signal.SIGKILL)
        final = subprocess.run(
            sweep_cmd(spec, tmp / "soak"), env=env, capture_output=True, text=True
        )
        soak_s = time.perf_counter() - t0
        if final.returncode != 0:
            print(final.stderr, file=sys.stderr)
            return 1
        a, b = rows(tmp / "ref"), rows(tmp / "soak")
        lost = len(set(a) - set(b))
        extra = len(set(b) - set(a))
        dup = duplicates(tmp / "soak")
        different = sum(
            1 for h in set(a) & set(b)
            if (a[h][0], json.loads(a[h][1]), json.loads(a[h][2]))
            != (b[h][0], json.loads(b[h][1]), json.loads(b[h][2]))
        )  # fmt: skip
    print("| trials | SIGKILL | SIGTERM | lost | duplicated | extra | different | "
          "processes left | SIGTERM exit codes | uninterrupted | interrupted + resumed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {len(a)} | {args.kills} | {args.terms} | {lost} | {dup} | {extra} | {different} | "
          f"{left_total} | {sorted(set(term_codes))} | {ref_s:.0f} s | {soak_s:.0f} s |")  # fmt: skip
    return 0 if lost == dup == extra == different == left_total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
