"""The progress events the suite writes to ``progress.jsonl`` and ``sockbench run`` reads back.

Why it is built this way: the suite (a child pytest process) and the runner
(its parent) share nothing but the results folder, and the events are their
whole conversation: a pass starts (its number, the run's seed and the order
it drew: what makes the run's order reproducible), a round starts, a load
window is about to open, a round ends (kept, or measured again because it
was disturbed), a kept round is judged again and set aside, a cell leaves the rotation with its rounds and its interval.  Each event is one small frozen dataclass here,
and its JSON line is written and read by ``to_json``/``parse`` from the
dataclass's own fields, so no key is spelled anywhere else: a field added
here reaches both sides.  A line that is not an event (a torn last line, an
event from a newer version) parses as None and is skipped.
"""

import dataclasses
import time
from dataclasses import dataclass

__all__ = ["PassStarted", "RoundStarted", "Window", "Calibrating", "Calibrated", "RoundDone", "RoundSetAside",
           "CellDone", "EVENTS", "parse"]


@dataclass(frozen=True)
class _Event:
    #: the value of the line's ``event`` key, set by each event class
    EVENT = ""

    def to_json(self):
        """The event as a JSON object: its fields, its ``event`` name, and the wall time ``t``."""
        return {"event": self.EVENT, "t": time.time(), **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d):
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        return cls(**kw)


@dataclass(frozen=True)
class PassStarted(_Event):
    """A pass begins: its number (1, 2 ...), the run's seed, and the order its cells will run in (their ids)."""

    EVENT = "pass"
    pass_no: int
    seed: int
    order: tuple

    @classmethod
    def from_json(cls, d):
        ev = super().from_json(d)
        return dataclasses.replace(ev, order=tuple(ev.order or ()))


@dataclass(frozen=True)
class RoundStarted(_Event):
    """A round of a cell begins: the cell, its place in the plan (0-based), its description, the pass, the round
    and the attempt (1 for the first; more when a disturbed one is measured again)."""

    EVENT = "round_start"
    cell: str
    index: int
    desc: str
    pass_no: int
    round: int
    attempt: int = 1


@dataclass(frozen=True)
class Window(_Event):
    """A load window is about to open (CLOCK_MONOTONIC ns): the runner draws nothing until its end."""

    EVENT = "window"
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class Calibrating(_Event):
    """A closed-loop run measures a server's peak for its open-loop sweep."""

    EVENT = "calibrate"
    server: str


@dataclass(frozen=True)
class Calibrated(_Event):
    EVENT = "calibrated"
    server: str
    msgs_per_s: float | None
    valid: bool


@dataclass(frozen=True)
class RoundDone(_Event):
    """One load run of a cell ended: ``kept`` as round ``round``, or set aside (``disturbed``) to be measured again.

    ``attempt`` counts the measurements of this round (1 for the first).
    """

    EVENT = "round"
    cell: str
    round: int
    attempt: int
    kept: bool
    msgs_per_s: float | None
    p99_us: float | None
    valid: bool
    client_bound: bool = False
    disturbed: bool = False
    pass_no: int | None = None

    @classmethod
    def of(cls, cell, r, attempt, kept):
        """The event of ``r``, attempt ``attempt`` at a round of ``cell`` (its id): a ``LoadResult`` whose cell
        context says its round and pass."""
        return cls(cell=cell, round=r.round_no, attempt=attempt, kept=kept, msgs_per_s=r.throughput.msgs_per_s,
                   p99_us=r.latency_us.p99, valid=r.valid, client_bound=r.client_bound, disturbed=r.disturbed,
                   pass_no=r.pass_no)


@dataclass(frozen=True)
class RoundSetAside(_Event):
    """Kept round ``round`` of a cell was judged again once later rounds came and set aside: its client needed
    ``client_slowdown`` times the least CPU per operation of the cell's rounds (``unseen.rejudge``)."""

    EVENT = "round_set_aside"
    cell: str
    round: int
    client_slowdown: float | None = None


@dataclass(frozen=True)
class CellDone(_Event):
    """A cell ended: its kept rounds, how many were measured again, its judged figure and interval, why it stopped.

    ``stopped`` is ``stable`` (the interval is within the plan's ``ci``), ``max-rounds``, ``out-of-reach`` (an
    open-loop p99 whose interval the most rounds could not narrow to its target), ``budget`` (its
    time budget, or the run's, ran out), ``invalid`` (an invalid round: more rounds cannot make the cell
    valid), ``fixed`` (a plan with a fixed number of rounds), or ``no-peak`` (an open-loop cell whose
    server's peak could not be measured).
    """

    EVENT = "cell_done"
    cell: str
    index: int
    rounds: int
    remeasured: int
    figure: str
    median: float | None
    interval: str
    stopped: str
    flags: tuple = ()

    @classmethod
    def from_json(cls, d):
        ev = super().from_json(d)
        return dataclasses.replace(ev, flags=tuple(ev.flags or ()))


EVENTS = {cls.EVENT: cls for cls in (PassStarted, RoundStarted, Window, Calibrating, Calibrated, RoundDone,
                                     RoundSetAside, CellDone)}


def parse(d):
    """The event of one decoded JSON line, or None when it is not one this version knows."""
    if not isinstance(d, dict):
        return None
    cls = EVENTS.get(d.get("event"))
    if cls is None:
        return None
    try:
        return cls.from_json(d)
    except TypeError:  # a field missing: not an event of this version
        return None
