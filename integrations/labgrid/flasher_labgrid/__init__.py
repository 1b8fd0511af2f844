"""labgrid integration of the flasher (docs/labgrid.md).

Importing the package registers `FlasherDriver` and `FlasherStrategy` with
labgrid's target factory; an environment file lists it under `imports:`.
"""

from .driver import FlashError, FlasherDriver, target_serial
from .events import ERROR_CLASSES, Event, EventParseError, EventStream, class_meaning, read_events
from .strategy import FlasherStrategy, Status

__all__ = [
    "ERROR_CLASSES",
    "Event",
    "EventParseError",
    "EventStream",
    "FlashError",
    "FlasherDriver",
    "FlasherStrategy",
    "Status",
    "class_meaning",
    "read_events",
    "target_serial",
]
