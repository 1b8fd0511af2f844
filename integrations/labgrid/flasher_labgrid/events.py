"""The flasher's JSON event stream (docs/events.md), read from a file or a console.

The board's `/init` writes one JSON object per event to `flasher.events=PATH`.
On the QEMU twins that is a port of its own (`/dev/ttyS1`); on a real board
in a farm it is usually the serial console itself (`flasher.events=/dev/ttyS0`
with `console=ttyS0`), where the event lines are interleaved with kernel
messages and the flasher's lines for people. This module finds the events in
either, parses them by their schema (never by matching the human lines:
docs/architecture.md rule 7) and sums a run up: its phases, its verdict, the
first failure's blink class, the unit record's event.

Pure Python, no labgrid: the driver feeds it what it reads from a console, the
tests feed it captured console logs.
"""

import json

import attr

#: The schema version this reader knows (`flasher_format::event::SCHEMA_VERSION`).
SCHEMA_VERSION = 1

#: The phases, a closed set (docs/events.md, docs/leds.md).
PHASES = ("starting", "searching", "writing", "verifying", "finishing", "success", "failure")

#: The blink/error classes (`flasher_format::ErrorClass::describe`, docs/leds.md).
ERROR_CLASSES = {
    1: "no internal storage found, or the target is ambiguous",
    2: "payload invalid",
    3: "target refused",
    4: "write I/O error",
    5: "verify mismatch",
    6: "board detection or configuration error",
    7: "a post-write step failed",
    8: "internal error",
}

_COMMON = ("v", "t_ms", "phase", "kind")
_START = '{"v":'


def class_meaning(error_class):
    """What a blink count means, as docs/leds.md says it."""
    if error_class is None:
        return None
    return ERROR_CLASSES.get(int(error_class), f"unknown error class {error_class}")


class EventParseError(ValueError):
    """A line that should be an event and is not one (quoted in the message)."""

    def __init__(self, line, why):
        super().__init__(f"not a flasher event ({why}): {line!r}")
        self.line = line
        self.why = why


@attr.s(frozen=True)
class Event:
    """One event line. `fields` holds the kind's own fields (message, done, ...)."""

    v = attr.ib()
    t_ms = attr.ib()
    phase = attr.ib()
    kind = attr.ib()
    fields = attr.ib(factory=dict)
    line = attr.ib(default="", repr=False)

    @property
    def message(self):
        return self.fields.get("message")

    @property
    def error_class(self):
        return self.fields.get("error_class")

    @property
    def is_flasher_state(self):
        """False for `led` lines, which the animator thread may write late
        (`Event::is_flasher_state`)."""
        return self.kind != "led"

    @property
    def is_failure(self):
        return self.phase == "failure" and self.kind == "phase"

    @property
    def is_success(self):
        return self.phase == "success" and self.kind == "phase"


def parse_event(obj, line=""):
    """An `Event` from a decoded JSON object; `EventParseError` when it is not
    one of this schema. A newer `v` is accepted while the line still parses
    (docs/events.md, "Versioning"); `check_stream` is the strict check."""
    if not isinstance(obj, dict):
        raise EventParseError(line, "not a JSON object")
    for key in _COMMON:
        if key not in obj:
            raise EventParseError(line, f"no {key!r}")
    v, t_ms, phase, kind = (obj[k] for k in _COMMON)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise EventParseError(line, "'v' is not a schema version")
    if not isinstance(t_ms, int) or isinstance(t_ms, bool) or t_ms < 0:
        raise EventParseError(line, "'t_ms' is not a non-negative integer")
    if phase not in PHASES:
        if v > SCHEMA_VERSION:
            raise EventParseError(
                line, f"event line from schema version {v}, newer than this reader's {SCHEMA_VERSION}"
            )
        raise EventParseError(line, f"unknown phase {phase!r}")
    if not isinstance(kind, str):
        raise EventParseError(line, "'kind' is not a string")
    ec = obj.get("error_class")
    if ec is not None and (not isinstance(ec, int) or not 1 <= ec <= 255):
        raise EventParseError(line, "'error_class' is not a blink count")
    fields = {k: val for k, val in obj.items() if k not in _COMMON}
    return Event(v=v, t_ms=t_ms, phase=phase, kind=kind, fields=fields, line=line)


def parse_line(line):
    """Parse one line that holds exactly one event (a dedicated events port or
    file, `mkflasher qemu --events`)."""
    text = line.strip()
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise EventParseError(text, f"not JSON: {e}") from None
    return parse_event(obj, text)


def events_in_console_line(line):
    """The events in one console line, and the fragments that started like an
    event but did not parse (a kernel message written into the middle of an
    event line garbles it). Everything else on the line is ignored."""
    found, bad = [], []
    decoder = json.JSONDecoder()
    at = line.find(_START)
    while at >= 0:
        try:
            obj, end = decoder.raw_decode(line, at)
            found.append(parse_event(obj, line[at:end]))
            at = line.find(_START, end)
        except (ValueError, EventParseError) as e:
            bad.append(EventParseError(line[at:], getattr(e, "why", str(e))))
            at = line.find(_START, at + 1)
    return found, bad


def check_stream(events):
    """The harness's own check (`flasher_format::event::check_stream`): every
    `v` is this reader's and `t_ms` never decreases. Raises `EventParseError`."""
    last = 0
    for e in events:
        if e.v != SCHEMA_VERSION:
            raise EventParseError(e.line, f"schema version {e.v}, this reader's is {SCHEMA_VERSION}")
        if e.t_ms < last:
            raise EventParseError(e.line, f"t_ms {e.t_ms} goes back from {last}")
        last = e.t_ms


class EventStream:
    """Follows the flasher's events in a byte stream (a console, a file),
    fed in pieces of any size.

    `console=True` (the default) finds event objects anywhere in a line and
    keeps the lines that are not events (kernel and flasher lines for people)
    in `console_lines`; `console=False` reads a dedicated events port where
    every non-empty line must be an event.
    """

    def __init__(self, console=True):
        self.console = console
        self.events = []
        self.bad_lines = []
        self.console_lines = []
        self._pending = b""

    def feed(self, data):
        """Add bytes (or text); returns the events completed by them."""
        if isinstance(data, str):
            data = data.encode()
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        new = []
        for raw in lines:
            new.extend(self._line(raw))
        return new

    def finish(self):
        """The stream ended: parse a last line without a newline."""
        rest, self._pending = self._pending, b""
        return self._line(rest) if rest.strip() else []

    def _line(self, raw):
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not line.strip():
            return []
        if self.console:
            found, bad = events_in_console_line(line)
            if not found and not bad:
                self.console_lines.append(line)
        else:
            found, bad = [], []
            try:
                found.append(parse_line(line))
            except EventParseError as e:
                bad.append(e)
        self.events.extend(found)
        self.bad_lines.extend(bad)
        return found

    # What the events say.

    @property
    def ended(self):
        """The flasher reported its result (success, or a failure)."""
        return self.verdict is not None

    @property
    def done(self):
        """The result is in and nothing the driver waits for is to come: after
        a failure, the first failure is enough; after success, also the
        record (it comes before `success`)."""
        return self.ended

    @property
    def verdict(self):
        """`success`, `refused` (failed before writing: the target was not
        written), `failure` (failed once writing had begun), or None while the
        flasher has not reported a result. The same words as
        `mkflasher qemu --json`."""
        if self.failure is not None:
            wrote = any(e.phase in ("writing", "verifying", "finishing") for e in self.events)
            return "failure" if wrote else "refused"
        if any(e.is_success for e in self.events):
            return "success"
        return None

    @property
    def failure(self):
        """The first `failure` phase event: it names the cause (docs/events.md)."""
        return next((e for e in self.events if e.is_failure), None)

    @property
    def error_class(self):
        f = self.failure
        return f.error_class if f is not None else None

    @property
    def record(self):
        """The last `record` event (the unit record's place on the card's log)."""
        recs = [e for e in self.events if e.kind == "record"]
        return recs[-1] if recs else None

    def phases(self):
        """Each phase in order with its start (guest clock, ms), as the
        `phases` of `mkflasher qemu --json`: [{'phase', 'start_ms', 'duration_ms'}]."""
        out = []
        for e in self.events:
            if not e.is_flasher_state:
                continue
            if not out or out[-1]["phase"] != e.phase:
                out.append({"phase": e.phase, "start_ms": e.t_ms})
        end = self.events[-1].t_ms if self.events else 0
        for i, p in enumerate(out):
            nxt = out[i + 1]["start_ms"] if i + 1 < len(out) else end
            p["duration_ms"] = nxt - p["start_ms"]
        return out

    def progress(self, phase="writing"):
        """(done, total) of the last progress event of `phase`, or None."""
        last = None
        for e in self.events:
            if e.kind == "progress" and e.phase == phase:
                last = (e.fields.get("done"), e.fields.get("total"))
        return last

    def summary(self):
        """The run as a dict: verdict, error_class and meaning, message,
        phases, the record event's fields."""
        f, r = self.failure, self.record
        return {
            "verdict": self.verdict,
            "error_class": self.error_class,
            "meaning": class_meaning(self.error_class),
            "message": f.message if f is not None else None,
            "phases": self.phases(),
            "record": dict(r.fields) if r is not None else None,
            "events": len(self.events),
            "bad_lines": len(self.bad_lines),
        }


def read_events(path, console=False):
    """An `EventStream` over a saved file: `mkflasher qemu --events FILE`
    (console=False) or a console log (console=True)."""
    s = EventStream(console=console)
    with open(path, "rb") as f:
        s.feed(f.read())
    s.finish()
    return s
