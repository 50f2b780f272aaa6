"""Study tasks: what one trial of a precision sweep runs.

Registered with :func:`hwsim.study.task.register_task`; a study spec names them
``"models.tasks:lms"``, ``"models.tasks:classify"``, ``"models.tasks:kmeans"``
and ``"models.tasks:two_layer"``. Each parameter dataclass validates itself
(a bad value raises ``ValueError`` naming the field, the value and what is
allowed) and accepts formats as ``FixedPoint``, ``"fx16.12"`` strings or
``"float"``/``None``.

>>> r = lms(LMSParams(taps=4, n_samples=2000, weight=FixedPoint(16, 14), data=FixedPoint(16, 12)))
>>> r.diverged, len(r.history), sorted(r.metrics)[:4]
(False, 50, ['excess_mse_db', 'final_stall_fraction', 'final_step', 'misadjustment'])
"""

# importing the task modules registers the tasks (and their theory/cost adapters)
from hwsim.formats import FixedPoint
from models.task_classify import (
    ClassifyParams,
    Diverged,
    classify,
    load_split,
    make_optimizer,
)
from models.task_common import SEED_MAX, OptimizerName, RoundingName
from models.task_lms import LMSParams, lms
from models.task_other import KMeansParams, TwoLayerParams, kmeans, two_layer
from models.task_theory import classify_analytical_precision  # noqa: F401 - registers

__all__ = [
    "SEED_MAX",
    "ClassifyParams",
    "Diverged",
    "FixedPoint",
    "KMeansParams",
    "LMSParams",
    "OptimizerName",
    "RoundingName",
    "TwoLayerParams",
    "classify",
    "kmeans",
    "lms",
    "load_split",
    "make_optimizer",
    "two_layer",
]
