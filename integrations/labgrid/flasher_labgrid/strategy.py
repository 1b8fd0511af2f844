"""`FlasherStrategy`: off → flashed → booted.

- `off`: the board is powered off.
- `flashed`: `FlasherDriver.flash()` wrote the strategy's image (or card) onto
  the board and the flasher reported success (its unit record is in
  `strategy.unit_record`). The board is off again afterwards.
- `booted`: the board was powered on from its own, freshly flashed storage,
  and the flashed OS's marker (a line its boot prints, or its shell prompt)
  came on the serial console.

On a real place the power and console are the place's power driver and
serial driver, and `FlasherDriver` has handed the card back to the host (SD
mux in `host` mode), so the board boots its own storage. On the
`qemu-x86_64-nuc` twin they are labgrid's `QEMUDriver`, which the strategy
points at the flashed NVMe file (OVMF and the disk, copy-on-write:
`FlasherDriver.twin_boot_args`) before switching it on.
"""

import enum
import os
import re

import attr
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.strategy.common import Strategy, StrategyError, never_retry

from .demo_os import DEMO_MARKER


class Status(enum.Enum):
    unknown = 0
    off = 1
    flashed = 2
    booted = 3


@target_factory.reg_driver
@attr.s(eq=False)
class FlasherStrategy(Strategy):
    """Args:
        image (str): the OS image to flash (an `images` key or a path), or
        card (str): a ready flasher card to flash with
        marker (str): what the flashed OS prints once it is up (default: the
            demo OS's `FLASHER-DEMO-OS: booted OK`)
        boot_timeout (int): seconds from power-on to the marker
    """

    bindings = {
        "flasher": "FlasherDriver",
        "power": "PowerProtocol",
        "console": "ConsoleProtocol",
    }

    image = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))
    card = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))
    marker = attr.ib(default=DEMO_MARKER, validator=attr.validators.instance_of(str))
    boot_timeout = attr.ib(default=600, validator=attr.validators.instance_of(int))
    status = attr.ib(default=Status.unknown)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.unit_record = None
        self.boot_log = None
        self._qemu_base_args = getattr(self.power, "extra_args", None)

    def _is_qemu(self):
        return type(self.power).__name__ == "QEMUDriver"

    def _power_off(self):
        self.target.activate(self.power)
        if self._is_qemu():
            # A guest that powered itself off leaves QEMU stopped
            # (-no-shutdown); quit it either way.
            if getattr(self.power, "status", 0):
                self.power.off()
        else:
            self.power.off()

    def use(self, image=None, card=None):
        """Flash this image (or card) on the next transition to `flashed`."""
        self.image, self.card = image, card
        if self.status in (Status.flashed, Status.booted):
            self.status = Status.off

    @never_retry
    @step(args=["status"])
    def transition(self, status, *, step):  # pylint: disable=redefined-outer-name
        if not isinstance(status, Status):
            status = Status[status]
        if status == Status.unknown:
            raise StrategyError(f"can not transition to {status}")
        if status == self.status:
            step.skip("nothing to do")
            return
        if status == Status.off:
            self._power_off()
        elif status == Status.flashed:
            self.transition(Status.off)
            if self.image is None and self.card is None:
                raise StrategyError("FlasherStrategy needs an image or a card to flash (image:, card: or use())")
            self.target.activate(self.flasher)
            self.unit_record = self.flasher.flash(image=self.image, card=self.card)
        elif status == Status.booted:
            if self.status != Status.flashed:
                self.transition(Status.flashed)
            self._boot()
        else:
            raise StrategyError(f"no transition found from {self.status} to {status}")
        self.status = status

    def _boot(self):
        self._power_off()
        if self._is_qemu():
            # Point the twin's QEMU at the disk just flashed; its command line
            # is made when the driver is activated.
            self.target.deactivate(self.power)
            base = self._qemu_base_args or ""
            self.power.extra_args = f"{base} {self.flasher.twin_boot_args()}".strip()
        self.target.activate(self.power)
        self.target.activate(self.console)
        self.power.on()
        try:
            _, before, _, _ = self.console.expect(re.escape(self.marker), timeout=self.boot_timeout)
        except Exception as e:
            raise StrategyError(
                f"the flashed OS did not show {self.marker!r} on the console within {self.boot_timeout} s: {e}"
            ) from e
        self.boot_log = _text(before) + self.marker
        if self.flasher.workdir or self.flasher.last_console_log:
            d = os.path.dirname(self.flasher.last_console_log or "") or self.flasher.work_dir()
            path = os.path.join(d, f"run{self.flasher.runs}.boot-console.log")
            with open(path, "w") as f:
                f.write(self.boot_log)

    @never_retry
    @step(args=["status"])
    def force(self, status, *, step):  # pylint: disable=redefined-outer-name
        if not isinstance(status, Status):
            status = Status[status]
        if status == Status.unknown:
            raise StrategyError(f"can not force state {status}")
        self.target.activate(self.power)
        self.status = status


def _text(b):
    return b.decode("utf-8", errors="replace") if isinstance(b, (bytes, bytearray)) else str(b)
