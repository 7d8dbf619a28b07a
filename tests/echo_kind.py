"""A toy third kind of job, as an operator's plugin would add one: "echo" answers the photo itself, as a PNG.

It is one module that registers a kind (its options, batch size, rank and so its Redis lane, limits, cost) and its
engine, named in ``[pipeline] plugins = ["tests.echo_kind"]``; nothing of claybot's queues, lanes, journal, codec,
worker loop or flow knows of it. The engine half is imported by workers only (``register_engine`` names it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.core.errors import BadRequest
from pipeline.core.kind import JobKind, KindLimits, Spec, register, register_engine

ECHO_LIMIT = 3  # echoes a person may ask for an hour: its own limit, on top of everyone's


@dataclass(frozen=True)
class EchoSpec(Spec):
    """An echo's one option: how many progress steps it reports."""

    KIND: ClassVar[str] = "echo"

    steps: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 10:
            raise BadRequest(f"An echo takes 1 to 10 steps, not {self.steps}.")


class EchoKind(JobKind):
    name = "echo"
    spec = EchoSpec
    rank = 5  # after pictures, before clips
    engine = "echo"
    noun = "echo"
    doing = "Echoing…"
    cost = 0
    no_worker_reason = "No echo maker is running right now."

    def enabled(self, gpu: Any) -> str | None:
        # A plugin's kind is made only where the config names its module: the registry is per process, and other
        # tests' configs must not start serving echoes.
        return None if __name__ in gpu.pipeline.plugins else "Echoes are not switched on here."

    def settle(self, gpu: Any, style: str, options: Mapping[str, Any]) -> EchoSpec:
        unknown = sorted(set(options) - {"steps"})
        if unknown:
            raise BadRequest(f"An echo has no option {unknown[0]!r}.")
        return EchoSpec(steps=int(options.get("steps") or 1))

    def limits(self, limits: Any) -> KindLimits:
        return KindLimits(user=((ECHO_LIMIT, 3600.0),))


class EchoEngine:
    """Answers each photo with itself (decoded and encoded again): the worker loop has tagged and rated it."""

    def __init__(self, settings: Any, tagger: Any) -> None:
        self.settings = settings

    def warm_up(self) -> None:
        """Nothing to warm."""

    def run(self, group: list, run: Any) -> None:
        from pipeline.core.images import encode_png
        from pipeline.core.jobs import Done, Progress, Started, Update

        for job in group:  # batches of one: EchoKind.max_batch is JobKind's default
            ids = (job.id,)
            run.send(Update(ids, Started(1)))
            spec = job.job.spec
            for step in range(1, spec.steps + 1):
                run.send(Update(ids, Progress(step, spec.steps)))
            run.send(Update(ids, Done(image=encode_png(job.image), width=job.image.width, height=job.image.height,
                                      tags=[name for name, _ in job.tags.general], prompt="echo", seed=job.job.seed,
                                      style=job.job.style, timings=dict(job.timings))))


register(EchoKind())
register_engine("echo", "tests.echo_kind:EchoEngine")
