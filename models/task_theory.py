"""The classify task's analytical per-tensor precision
(:func:`hwsim.theory.per_tensor_precision`), which ``hwsim search`` sets beside
its measured answer."""

from __future__ import annotations

from hwsim.study.task import register_adapter
from models.task_classify import ClassifyParams, _classify, _one_thread_seeded
from models.task_common import _parse_schedule

# hwsim.theory.per_tensor's tensors -> the classify task's parameters
PARAMS = {
    "weight": "weight",
    "activation": "activation",
    "grad": "opt_grad",
    "accumulator": "accumulator",
    "weight_accumulator": "opt_accumulator",
}


@register_adapter("classify", "analytical_precision")
def classify_analytical_precision(config: dict, target: float) -> dict:
    """Train the float network of ``config`` (its formats are ignored), then the
    per-tensor formats of the analytical rule for a mismatch probability
    ``target``, keyed by classify parameter. ``lr_min`` is the smallest learning
    rate the schedule reaches (``lr`` for a constant one; a halving schedule's
    floor where it has one, else ``lr / 2**10``)."""
    import torch

    from hwsim.theory import per_tensor_precision
    from models.datasets import batches

    p = ClassifyParams(**{k: v for k, v in config.items() if k in _float_fields()})
    trained: list = []
    with _one_thread_seeded(p.seed):
        _classify(p, trained)
        ((model, split),) = trained
        model.eval()
        x_test = torch.from_numpy(split.x_test)
        x_train, y_train = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
        sample = [
            (x_train[torch.from_numpy(i)], y_train[torch.from_numpy(i)])
            for i in list(batches(len(y_train), p.batch_size, p.seed, 0))[:16]
        ]
        result = per_tensor_precision(
            model, x_test, torch.nn.functional.cross_entropy, sample, target=target,
            lr_min=_lr_min(p),
        )  # fmt: skip
    return {PARAMS[k]: v for k, v in result.formats().items()}


def _float_fields() -> set[str]:
    """The parameters that are not datapath formats: the float network's."""
    import dataclasses

    from models.datapath_params import LAYER_FIELDS, OPT_FIELDS

    return (
        {f.name for f in dataclasses.fields(ClassifyParams)} - set(LAYER_FIELDS) - set(OPT_FIELDS)
    )


def _lr_min(p: ClassifyParams) -> float:
    policy = _parse_schedule(p)
    if policy is None:
        return p.lr
    floor = getattr(policy, "floor", None)
    return float(floor) if isinstance(floor, int | float) and floor > 0 else p.lr / 2**10
