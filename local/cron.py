"""NCRONTAB (six fields: second minute hour day month day-of-week), as Azure Functions timer triggers use."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]  # day-of-week 7 is Sunday too
_NAMES = {
    4: {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    5: {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
}


@dataclass(frozen=True)
class Schedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def _day_matches(self, t: datetime) -> bool:
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow  # both restricted: cron matches either

    def next_after(self, t: datetime) -> datetime:
        """The first firing strictly after ``t``."""
        t = t.replace(microsecond=0) + timedelta(seconds=1)
        for _ in range(200_000):
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
            elif t.second not in self.seconds:
                t += timedelta(seconds=1)
            else:
                return t
        raise ValueError("schedule never fires")


def parse(expression: str) -> Schedule:
    """Parse a six-field NCRONTAB expression; ValueError says what is wrong."""
    fields = expression.split()
    if len(fields) != 6:
        raise ValueError(f"NCRONTAB needs 6 fields (second minute hour day month day-of-week): {expression!r}")
    sets = [_field(text, i) for i, text in enumerate(fields)]
    return Schedule(*map(frozenset, sets), any_day=fields[3] == "*", any_weekday=fields[5] == "*")


def _field(text: str, index: int) -> set[int]:
    low, high = _RANGES[index]
    values: set[int] = set()
    for part in text.lower().split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step < 1:
                raise ValueError(f"bad step in {text!r}")
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, index), _value(b, index)
        else:
            start = _value(part, index)
            end = high if step > 1 else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ValueError(f"{text!r} is out of range {low}-{high}")
        values.update(range(start, end + 1, step))
    return {v % 7 for v in values} if index == 5 else values


def _value(text: str, index: int) -> int:
    names = _NAMES.get(index, {})
    if text in names:
        return names[text]
    return int(text)
