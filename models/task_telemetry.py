"""Per-layer telemetry of a training loop for study tasks: attach to a model
and its optimizer, measure one mini-batch per logged step (the last of each
epoch, so the cost stays that of one batch in an epoch), and hand the rows to
``TrialResult.telemetry``.

    telem = EpochTelemetry(model, optimizer)
    for epoch in range(epochs):
        for idx in telem.last_of(batches(...)):   # telemetry on for the last batch
            ...forward, backward, optimizer.step()
        telem.log(epoch + 1)                      # rows for this step, counts cleared
    TrialResult(..., telemetry=telem.close())
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from hwsim.nn import Telemetry


class EpochTelemetry:
    """:class:`hwsim.nn.Telemetry` of ``model`` (and ``optimizer``'s stalls),
    active only on the batches :meth:`last_of` marks."""

    def __init__(self, model, optimizer=None) -> None:
        self.telemetry = Telemetry(model, optimizer)
        self.telemetry.active = False
        self.rows: list[dict[str, Any]] = []

    def last_of(self, batches: Iterable) -> Iterator:
        """``batches``, with telemetry on while the last one runs (until the
        next ``next()`` call or :meth:`log`)."""
        it = iter(batches)
        try:
            item = next(it)
        except StopIteration:
            return
        for following in it:
            yield item
            item = following
        self.telemetry.active = True
        try:
            yield item
        finally:
            self.telemetry.active = False

    def log(self, step: int) -> None:
        """Keep the rows counted since the last call as logged step ``step``."""
        self.rows += [
            {k: v for k, v in row.items() if k != "format"} | {"step": step}
            for row in self.telemetry.rows()
        ]
        self.telemetry.reset()

    def close(self) -> list[dict[str, Any]]:
        """Detach from the model and optimizer; the rows logged."""
        self.telemetry.close()
        return self.rows
