"""The study engine: specs -> trials -> executor -> results store -> plots.

>>> from hwsim.study import load_spec, run_sweep            # doctest: +SKIP
>>> summary = run_sweep(load_spec("studies/quickstart.toml"), "results/quickstart")  # doctest: +SKIP

Plots and reports (matplotlib) are imported on first use:
``hwsim.study.make_plots``, ``register_plot``, ``register_overlay``, ``write_report``;
``hwsim.study.load(DIR)`` gives the results as pandas DataFrames.
"""

from hwsim.study.runner import SweepSummary, run_sweep, run_trial
from hwsim.study.spec import PlotSpec, SpecError, StudySpec, Trial, load_spec, parse_spec
from hwsim.study.store import ResultsStore, StoreError, TrialRecord
from hwsim.study.task import TASKS, TrialResult, register_adapter, register_task

_LAZY = {
    "make_plots": "hwsim.study.plots",
    "register_plot": "hwsim.study.plots",
    "register_overlay": "hwsim.study.plots",
    "StudyData": "hwsim.study.plots",
    "write_report": "hwsim.study.report",
    "load": "hwsim.study.frames",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hwsim.study' has no attribute {name!r}")


__all__ = [
    "TASKS",
    "PlotSpec",
    "ResultsStore",
    "SpecError",
    "StoreError",
    "StudySpec",
    "SweepSummary",
    "Trial",
    "TrialRecord",
    "TrialResult",
    "load_spec",
    "parse_spec",
    "register_adapter",
    "register_task",
    "run_sweep",
    "run_trial",
    *_LAZY,
]
