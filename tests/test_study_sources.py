"""Where code comes from (the trust model), spec ranges, study names, lazy grids,
and plots/reports that give the same numbers from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from hwsim.study.spec import SpecError, load_spec, parse_spec
from hwsim.study.task import ADAPTERS, TASKS

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
MARKER = "import pathlib; pathlib.Path({path!r}).write_text('ran')\n"


def hwsim(*args, cwd, env=ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwsim", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def spec_text(task: str, extra: str = "", grid: str = "seed = [0, 1]") -> str:
    return (
        f'[study]\nname = "s"\ntask = "{task}"\n[fixed]\nsteps = 5\n'
        f'[grid]\n{grid}\n[plot]\nmetric = "loss"\n{extra}'
    )


# -- no code from the spec's folder or the current folder ------------------------------


def test_modules_beside_the_spec_never_run(tmp_path):
    marks = {n: tmp_path / f"{n}.ran" for n in ("tqdm", "evil", "plug")}
    (tmp_path / "tqdm.py").write_text(MARKER.format(path=str(marks["tqdm"])))
    (tmp_path / "evil.py").write_text(MARKER.format(path=str(marks["evil"])))
    (tmp_path / "plug.py").write_text(MARKER.format(path=str(marks["plug"])))
    (tmp_path / "ok.toml").write_text(spec_text("tests.study_tasks:quadratic"))
    done = hwsim("sweep", "ok.toml", "--out", "out", "--workers", "1", "--no-plot", cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # with a progress bar: tqdm is imported
    (tmp_path / "evil.toml").write_text(spec_text("evil:quadratic"))
    done = hwsim("sweep", "evil.toml", "--dry-run", cwd=tmp_path)
    assert done.returncode == 2 and "module 'evil' cannot be imported" in done.stderr
    assert "--tasks-from DIR" in done.stderr
    (tmp_path / "plug.toml").write_text(
        spec_text("tests.study_tasks:quadratic", 'plugins = ["plug"]\n')
    )
    assert hwsim("sweep", "plug.toml", "--dry-run", cwd=tmp_path).returncode == 0
    done = hwsim("sweep", "plug.toml", "--out", "o2", "--workers", "0", cwd=tmp_path)
    assert done.returncode == 2 and "plot plug-in 'plug' cannot be imported" in done.stderr
    assert not any(m.exists() for m in marks.values())


def test_tasks_from_loads_a_named_folder_but_never_shadows(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    mark = tmp_path / "tqdm.ran"
    (lib / "tqdm.py").write_text(MARKER.format(path=str(mark)))
    (lib / "my_tasks.py").write_text(
        "from tests.study_tasks import QuadraticParams, quadratic\n"
        "from hwsim.study.task import register_task\n"
        "register_task('folder_quadratic', QuadraticParams)(quadratic)\n"
    )
    (tmp_path / "s.toml").write_text(spec_text("my_tasks:folder_quadratic"))
    done = hwsim("sweep", "s.toml", "--out", "out", "--workers", "1", "--no-plot",
                 "--tasks-from", str(lib), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and "2 trials: 2 ok" in done.stderr, done.stderr
    assert not mark.exists()  # lib/tqdm.py did not replace the installed tqdm
    (tmp_path / "t.toml").write_text(spec_text("tqdm:quadratic"))
    done = hwsim("sweep", "t.toml", "--dry-run", "--tasks-from", str(lib), cwd=tmp_path)
    assert done.returncode == 2 and "is shadowed by the installed" in done.stderr
    assert not mark.exists()
    # plot and report need the same folder to load the task
    done = hwsim("report", "out", cwd=tmp_path)
    assert done.returncode == 2 and "my_tasks" in done.stderr
    assert hwsim("report", "out", "--tasks-from", str(lib), cwd=tmp_path).returncode == 0


def test_a_task_from_an_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "site" / "hwsim_test_tasks-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hwsim-test-tasks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[hwsim.tasks]\nquadratic = tests.study_tasks:quadratic\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = parse_spec(spec_text("quadratic"))
    assert spec.task is TASKS["quadratic"] and spec.count() == 2
    with pytest.raises(SpecError, match="no installed package registers a task 'nope'"):
        parse_spec(spec_text("nope"))


# -- spec validation ranges -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (spec_text(".tasks:lms"), "relative module names are not allowed"),
        (spec_text(":lms"), "names no module before ':'"),
        (spec_text("a b:lms"), "is not a dotted module name"),
        (spec_text("tests.study_tasks:"), "is not a task name"),
        (spec_text("tests.study_tasks:quadratic", grid="weight = ['fx١٦.١٢']"), "only ASCII"),
        (spec_text("tests.study_tasks:quadratic").replace('"loss"', '"lsos"'),
         "plot.metric 'lsos' is unknown (did you mean 'loss'?)"),
        (spec_text("tests.study_tasks:quadratic", grid="seed = [9223372036854775807, 1]")
         .replace("steps = 5", "steps = -1"), "rejected by task"),
        ("[study]\nname='x'\ntask='tests.study_tasks:quadratic'\n[grid]\nseed = "
         + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
)  # fmt: skip
def test_spec_problems_are_reported_not_raised(text, expected):
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        ("step = [5e-324]", "LMSParams.step: 5e-324 is not allowed"),
        ("snr_db = [-1000]", "LMSParams.snr_db: -1000.0 is not allowed"),
        ("seed = [-1]", "LMSParams.seed: -1 is not allowed"),
        ("n_samples = [1000000000000]", "LMSParams.n_samples: 1000000000000 is not allowed"),
    ],
)
def test_model_task_ranges(grid, expected):
    pytest.importorskip("models.tasks")
    text = '[study]\nname = "m"\ntask = "models.tasks:lms"\n[grid]\n' + grid
    with pytest.raises(SpecError, match="rejected by task 'lms'") as err:
        parse_spec(text + '\n[plot]\nmetric = "weight_error_db"\n')
    assert expected in str(err.value)


def test_a_byte_order_mark_and_non_utf8(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + spec_text("tests.study_tasks:quadratic").encode())
    assert load_spec(path).count() == 2
    path.write_bytes(b"[study]\nname = '\xff'\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec(path)


@pytest.mark.parametrize("name", ["../../../tmp/y", "a/b", "..", ".hidden", "", "x" * 101, "a\\b"])
def test_study_name_is_a_plain_name(name):
    with pytest.raises(SpecError, match="study.name must be a plain name"):
        parse_spec(spec_text("tests.study_tasks:quadratic").replace('"s"', repr(name), 1))


# -- lazy grids -----------------------------------------------------------------------

BIG = (
    "\n".join(
        f"{k} = {v}"
        for k, v in {
            "seed": list(range(10)),
            "lr": [0.01 * i for i in range(1, 11)],
            "dim": list(range(1, 11)),
            "rounding": ["nearest", "nearest_away", "floor", "zero", "stochastic"],
            "fail": [False, True],
            "noise": [0.01 * i for i in range(1, 11)],
            "sleep": [0.001 * i for i in range(10)],
            "weight": [f"fx{w}.6" for w in range(8, 18)],
        }.items()
    )
    .replace("'", '"')
    .replace("False", "false")
    .replace("True", "true")
)


def test_ten_million_trials_are_counted_at_once(tmp_path):
    (tmp_path / "big.toml").write_text(spec_text("tests.study_tasks:quadratic", grid=BIG))
    t0 = time.perf_counter()
    done = hwsim("sweep", "big.toml", "--dry-run", cwd=tmp_path)
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    assert "10000000 grid trials" in done.stderr and "--allow-large" in done.stderr
    assert len(done.stdout.splitlines()) == 5
    assert wall < 10  # measured ~1 s; generous for a loaded machine
    done = hwsim("sweep", "big.toml", "--out", "o", cwd=tmp_path)
    assert done.returncode == 2 and "more than 1000000; pass --allow-large" in done.stderr


def test_memory_is_flat_in_the_grid_size():
    peaks = []
    for grid in ("seed = [0, 1]", BIG):
        tracemalloc.start()
        spec = parse_spec(spec_text("tests.study_tasks:quadratic", grid=grid))
        spec.count()
        next(spec.iter_trials())
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + 2_000_000, peaks  # 10^7 trials: a few MB at most


@pytest.mark.parametrize(
    "baseline",
    ['weight = "float"', 'weight = "fx8.6"', 'weight = "float"\nlr = 0.5', "lr = 0.1"],
)
def test_count_matches_the_trials(baseline):
    text = spec_text(
        "tests.study_tasks:quadratic",
        grid='weight = ["fx8.6", "fx10.8"]\nlr = [0.1, 0.2]\nseed = [0, 1]',
    ).replace('metric = "loss"', 'metric = "loss"\nbits = "weight"')
    spec = parse_spec(text + f"[baseline]\n{baseline}\n")
    trials = spec.trials()
    assert spec.count() == len(trials) == len({t.hash for t in trials})


# -- the built-in tasks: same numbers from any folder; a missing piece is an error -------


def test_report_costs_the_lms_datapath_with_its_resolved_formats(tmp_path):
    pytest.importorskip("models.tasks")
    from hwsim import cost
    from hwsim.formats import parse_format
    from hwsim.study.plots import StudyData
    from hwsim.theory.plots import pareto_points
    from models.lms import resolve_formats

    spec = tmp_path / "lms.toml"
    spec.write_text(
        '[study]\nname = "lmsq"\ntask = "models.tasks:lms"\n[fixed]\nn_samples = 400\ntaps = 4\n'
        '[grid]\nweight = ["fx10.8", "fx12.10"]\nstep = [0.01, 0.02]\n'
        '[plot]\nmetric = "weight_error_db"\nbits = "weight"\nlr = "step"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert hwsim("sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "0",
                 "--no-progress", "--no-plot", cwd=elsewhere).returncode == 0  # fmt: skip
    done = hwsim("report", str(tmp_path / "out"), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    import models.tasks  # noqa: F401 - registers the lms adapters here too

    for p in pareto_points(StudyData.load(tmp_path / "out")):
        f = resolve_formats(weight=parse_format(p["config"]["weight"]))
        expected = cost.lms_step_energy(4, rule="lms", data=f.data, weight=f.weight,
                                        accumulator=f.accumulator, error=f.error,
                                        weight_accumulator=f.weight_accumulator)  # fmt: skip
        assert p["energy"] == pytest.approx(expected, rel=1e-12)
        if p["front"]:
            assert f"{expected:.4g}" in report
    # without the models package importable the report is an error, not an fp32 guess
    only_hwsim = tmp_path / "only_hwsim"
    only_hwsim.mkdir()
    (only_hwsim / "hwsim").symlink_to(REPO / "hwsim")  # this hwsim, and no models package:
    (only_hwsim / "models").mkdir()  # an installed one is hidden by one that fails to import
    (only_hwsim / "models" / "__init__.py").write_text("raise ImportError('no models here')\n")
    env = {**os.environ, "PYTHONPATH": str(only_hwsim)}
    done = hwsim("report", str(tmp_path / "out"), cwd=elsewhere, env=env)
    assert done.returncode == 2 and "module 'models.tasks' cannot be imported" in done.stderr


def test_a_missing_adapter_is_an_error():
    from hwsim.study.task import get_adapter

    saved = dict(ADAPTERS)
    try:
        ADAPTERS.clear()
        with pytest.raises(LookupError, match="registers no 'gradient_statistics' adapter"):
            get_adapter("classify", "gradient_statistics", "the accumulator prediction")
    finally:
        ADAPTERS.update(saved)


def test_hwsim_never_imports_models():
    for path in (REPO / "hwsim").rglob("*.py"):
        text = path.read_text()
        assert "from models" not in text and "import models" not in text, path
