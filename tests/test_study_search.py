"""hwsim search: the greedy precision search on a stand-in task with known needs
(tests.study_tasks:bits), its answer, resume after a kill, and bad specs."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwsim.cli import main
from hwsim.formats import FixedPoint
from hwsim.study.runner import run_sweep
from hwsim.study.search import _moves, parse_search, run_search
from hwsim.study.store import ResultsStore, StoreError
from tests.study_tasks import BITS_RULE, bits_error

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

SPEC = """
[study]
name = "bits_search"
task = "tests.study_tasks:bits"
[grid]
seed = [0, 1]
[plot]
metric = "err"
goal = "min"
[search]
params = ["a", "b", "c"]
start = "fx14.10"
tolerance = 0.05
"""


def _search(out: Path, text: str = SPEC):
    spec = parse_search(text)
    run = functools.partial(run_sweep, out=out, workers=0, progress=False)
    return spec, run_search(spec, out, lambda batch: run(batch))


def _stored(out: Path) -> int:
    try:
        with ResultsStore(out, readonly=True) as store:
            return len(store.records())
    except (FileNotFoundError, StoreError):  # not created yet, or its tables not yet
        return 0


def test_search_answer_is_within_tolerance_locally_minimal_and_beats_uniform(tmp_path):
    spec, r = _search(tmp_path / "out")
    assert r.float_metric == 0.0
    assert bits_error(r.per_tensor) == pytest.approx(r.per_tensor_metric)
    assert r.per_tensor_metric <= 0.05
    assert bits_error(r.uniform) <= 0.05 and len({str(f) for f in r.uniform.values()}) == 1
    # fewer total bits than the best uniform precision
    assert r.bits(r.per_tensor) < r.bits(r.uniform)
    # no one-bit move from the answer keeps the tolerance (the search stopped for a reason)
    for p in spec.params:
        for f in _moves(r.per_tensor[p], spec.min_bits):
            assert bits_error({**r.per_tensor, p: f}) > 0.05, (p, f)
    # each tensor kept what its value needs: b (5.3) its integer bits, c (0.0123) its LSBs
    assert r.per_tensor["b"].wl - r.per_tensor["b"].fl >= 4
    assert r.per_tensor["c"].fl >= 8
    # every evaluation is a stored trial (2 seeds each), and a rerun evaluates nothing new
    n = _stored(tmp_path / "out")
    assert n == r.trials
    _, again = _search(tmp_path / "out")
    assert (again.per_tensor, again.uniform) == (r.per_tensor, r.uniform)
    assert _stored(tmp_path / "out") == n


def test_search_killed_and_rerun_gives_the_same_answer(tmp_path):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SPEC)
    cmd = [sys.executable, "-m", "hwsim", "search", str(spec_file), "--workers", "0",
           "--tasks-from", str(REPO)]  # fmt: skip
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "whole")], env=ENV, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=ENV, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _stored(killed) >= 20:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 20 <= _stored(killed) < _stored(tmp_path / "whole")  # killed part-way
    rerun = subprocess.run([*cmd, "--out", str(killed)], env=ENV, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert (killed / "search.md").read_text() == (tmp_path / "whole" / "search.md").read_text()
    assert "| total bits |" in rerun.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('params = ["a", "b", "c"]', 'params = ["a", "seed"]'), "'seed' is not a format field"),
        (('start = "fx14.10"', 'start = "bf16"'), "must be a fixed-point format"),
        (('start = "fx14.10"', 'start = {a = "fx16.10"}'), "search.start for 'b'"),
        (("tolerance = 0.05", "tolerance = -1"), "tolerance must be a finite number >= 0"),
        (("[search]", "[search]\nsteps = 3"), "search.steps: unknown key"),
        (("seed = [0, 1]", "seed = [0, 1]\na = ['fx8.4']"), "may only list seeds"),
        (("[search]\nparams", "[nope]\n[search]\nparams"), "section 'nope' is unknown"),
    ],
)
def test_bad_search_specs_are_one_line_errors(tmp_path, capsys, change, message):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SPEC.replace(*change))
    code = main(["search", str(spec_file), "--out", str(tmp_path / "o"), "--workers", "0",
                 "--tasks-from", str(REPO)])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing ran


def test_a_start_that_misses_the_tolerance_says_so(tmp_path, capsys):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SPEC.replace('start = "fx14.10"', 'start = "fx4.2"'))
    code = main(["search", str(spec_file), "--out", str(tmp_path / "o"), "--workers", "0",
                 "--tasks-from", str(REPO)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "misses the tolerance" in err and "start from wider formats" in err


def test_moves_drop_one_bit_at_either_end():
    assert _moves(FixedPoint(8, 4), 2) == [FixedPoint(7, 3), FixedPoint(7, 4)]
    assert _moves(FixedPoint(2, 1), 2) == []


def test_the_cli_sets_the_tasks_analytical_rule_beside_the_search(tmp_path, capsys):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SPEC)
    out = tmp_path / "o"
    assert main(["search", str(spec_file), "--out", str(out), "--workers", "0"]) == 0
    text = (out / "search.md").read_text()
    assert "| parameter | uniform | per tensor | analytical |" in text
    assert "| a | " in text and text.split("| a | ")[1].split("\n")[0].endswith("| fx9.8 |")
    want = bits_error(BITS_RULE)
    metric_row = next(line for line in text.splitlines() if line.startswith("| err |"))
    assert float(metric_row.split("|")[-2]) == pytest.approx(want, rel=1e-5)
    bits_row = next(line for line in text.splitlines() if line.startswith("| total bits |"))
    assert bits_row.split("|")[-2].strip() == str(9 + 5 + 10)
    assert (out / "plots" / "search_pareto.png").stat().st_size > 0


def test_pareto_front_keeps_the_settings_nothing_beats():
    from hwsim.study.plots_search import _front

    pts = [(3, 0.8), (1, 0.5), (2, 0.9), (2, 0.7), (4, 0.9)]
    assert _front(pts, 1.0) == [(1, 0.5), (2, 0.9)]
    assert _front([(1, 0.2), (2, 0.1), (3, 0.3)], -1.0) == [(1, 0.2), (2, 0.1)]
