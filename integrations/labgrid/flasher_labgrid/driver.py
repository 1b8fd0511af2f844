"""`FlasherDriver`: flash a board through a flasher card, in a labgrid place.

Two ways to reach the board, chosen by the environment:

- **A QEMU twin** (`twin: qemu-x86_64-nuc`, for CI): the driver runs the
  harness, `mkflasher qemu --board TWIN CARD --target DISK --json REPORT`,
  which boots the card on the virtual board against the twin's internal disk
  file, and reads the run's JSON report (docs/qemu.md, "Results for CI").
- **A real board** (no `twin`): the card goes onto the place's SD mux or USB
  storage (`USBStorageDriver` over a `USBSDMuxDevice`, `USBSDWireDevice` or
  `USBMassStorage` resource), the mux hands it to the board, the power driver
  switches the board on, and the driver follows the flasher's JSON event
  stream on the serial console (`flasher.events=` on the card's kernel
  command line, docs/events.md) until the flasher reports its result. The
  board powers itself off after a run; the mux then gives the card back to
  the host, so the board boots its own storage next (docs/labgrid.md).

Either way `flash()` returns the run's unit record, or raises `FlashError`
with the blink class, its meaning and the reason.
"""

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory
from labgrid.step import step

from .events import EventStream, class_meaning, read_events

#: The twins `mkflasher qemu` knows.
TWINS = ("qemu-x86_64-nuc", "qemu-x86_64-sd", "qemu-imx6-nitrogen6x")

# OVMF as the harness uses it (`flasher_qemu::OVMF_CODE`, `OVMF_VARS`).
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


class FlashError(Exception):
    """The flasher did not report success.

    Attributes: `error_class` (the blink count, 1..8, or None when the flasher
    never reported one: a timeout, a VM that did not run), `meaning` (what the
    class means, docs/leds.md), `reason` (the flasher's or the harness's
    message), `verdict` (`refused`, `failure`, `power-cut`, `timeout`,
    `no-result`, `error`: the words of `mkflasher qemu --json`), `report`
    (the harness's JSON report, on a twin) and `console_log` (a path).
    """

    def __init__(self, reason, error_class=None, verdict="failure", report=None, console_log=None):
        self.error_class = error_class
        self.meaning = class_meaning(error_class)
        self.reason = reason
        self.verdict = verdict
        self.report = report
        self.console_log = console_log
        cls = f"class {error_class} ({self.meaning})" if error_class is not None else "no blink class"
        where = f"; console: {console_log}" if console_log else ""
        super().__init__(f"flash {verdict}: {cls}: {reason}{where}")


def target_serial(path):
    """The NVMe serial the harness gives a target file (`flasher_qemu::target_serial`:
    `fl` and the FNV-1a hash of its canonical path), so booting the disk shows
    the same unit the flasher recorded."""
    h = 0xCBF29CE484222325
    for b in os.fsencode(os.path.realpath(path)):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"fl{h:016x}"


@target_factory.reg_driver
@attr.s(eq=False)
class FlasherDriver(Driver):
    """Makes a flasher card from an OS image (or takes a ready one) and flashes
    the board through it.

    Args:
        board (str): the board the card is built for (`mkflasher build --board`)
        twin (str): a QEMU twin (`qemu-x86_64-nuc`, ...): flash it through
            `mkflasher qemu` instead of the bound storage, power and console
        target_disk (str): twin only: its internal disk file (a `paths` key or a path)
        target_size (str): twin only: size of a target file that does not exist
        mkflasher (str): a `tools` key or a path (default: `mkflasher` on PATH)
        root (str): the checkout (a `paths` key or a path), passed to mkflasher
            as FLASHER_ROOT for its fixtures (kernel, OVMF, the static init)
        workdir (str): where cards, reports and console logs go (default: a
            temporary folder per driver)
        cmdline (str): extra kernel arguments for built cards (`--cmdline`);
            a real place needs `flasher.events=` on its console here
        build_args (list): further `mkflasher build` arguments (`--trust`, ...)
        timeout (int): seconds a flash may take, power-on to result
        write_mode (str): `dd` or `bmaptool`, how the card is written to storage
    """

    bindings = {
        "storage": {"USBStorageDriver", None},
        "mux": {"USBSDMuxDriver", "USBSDWireDriver", None},
        "power": {"PowerProtocol", None},
        "console": {"ConsoleProtocol", None},
    }

    board = attr.ib(validator=attr.validators.instance_of(str))
    twin = attr.ib(default=None, validator=attr.validators.optional(attr.validators.in_(TWINS)))
    target_disk = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))
    target_size = attr.ib(default="64M", validator=attr.validators.instance_of(str))
    mkflasher = attr.ib(default="mkflasher", validator=attr.validators.instance_of(str))
    root = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))
    workdir = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))
    cmdline = attr.ib(default="", validator=attr.validators.instance_of(str))
    build_args = attr.ib(factory=list, validator=attr.validators.instance_of(list))
    timeout = attr.ib(default=600, validator=attr.validators.instance_of(int))
    write_mode = attr.ib(default="dd", validator=attr.validators.in_(("dd", "bmaptool")))

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self._tmp = None
        self.runs = 0
        #: After each flash: the card used, the target file (twin), the
        #: harness's JSON report (twin), the event stream, the console log.
        self.last_card = None
        self.last_target = None
        self.last_report = None
        self.last_events = None
        self.last_console_log = None

    def on_activate(self):
        pass

    def on_deactivate(self):
        pass

    # Paths and tools.

    def _config(self):
        env = getattr(self.target, "env", None)
        return env.config if env is not None else None

    def _path(self, value):
        """A `paths` key, else a path (relative to the environment file)."""
        cfg = self._config()
        if cfg is None:
            return os.path.abspath(value)
        try:
            return os.path.normpath(cfg.get_path(value))
        except KeyError:
            return os.path.normpath(cfg.resolve_path(value))

    def _image(self, value):
        """An `images` key, else a path."""
        cfg = self._config()
        if cfg is None:
            return os.path.abspath(value)
        try:
            return os.path.normpath(cfg.get_image_path(value))
        except KeyError:
            return os.path.normpath(cfg.resolve_path(value))

    def mkflasher_path(self):
        cfg = self._config()
        tool = cfg.get_tool(self.mkflasher) if cfg is not None else self.mkflasher
        found = tool if os.path.sep in tool else shutil.which(tool)
        if not found or not os.access(found, os.X_OK):
            raise FileNotFoundError(
                f"mkflasher not found as {tool!r}: build it (cargo build -p mkflasher --bin mkflasher) "
                "and name it under tools: mkflasher: in the environment"
            )
        return found

    def work_dir(self):
        if self.workdir:
            d = self._path(self.workdir)
        else:
            if self._tmp is None:
                self._tmp = tempfile.mkdtemp(prefix="flasher-labgrid-")
            d = self._tmp
        os.makedirs(d, exist_ok=True)
        return d

    def _run(self, args, log):
        """Run mkflasher with `args`, output to `log`; returns the exit status."""
        env = dict(os.environ)
        if self.root:
            env["FLASHER_ROOT"] = self._path(self.root)
        cmd = [self.mkflasher_path(), *args]
        self.logger.info("running %s", shlex.join(cmd))
        with open(log, "wb") as out:
            return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode

    # Cards.

    @Driver.check_active
    @step(args=["image"], result=True)
    def make_card(self, image, output=None, extra_args=()):
        """`mkflasher build --board BOARD --payload IMAGE -o CARD`: IMAGE is an
        OS image (raw or compressed) or a bundle, an `images` key or a path.
        Returns the card's path."""
        image = self._image(image)
        if output is None:
            base = os.path.basename(image).split(".")[0]
            output = os.path.join(self.work_dir(), f"card-{base}-{self.board}.img")
        args = ["build", "--board", self.board, "--payload", image, "-o", output]
        if self.cmdline:
            args += ["--cmdline", self.cmdline]
        args += [*self.build_args, *extra_args]
        log = output + ".build.log"
        if self._run(args, log) != 0:
            raise FlashError(f"mkflasher build failed: {_tail(log)}", verdict="error")
        return output

    # Flashing.

    @Driver.check_active
    @step(args=["image", "card"])
    def flash(self, image=None, card=None, target_disk=None):
        """Flash the board with `card`, or with a card built from `image`.
        `target_disk` (twin only) overrides the twin's disk file. Returns the unit
        record (one entry of `mkflasher records --json`) or, on a real board
        whose card cannot be read back here, the record event's fields.
        Raises `FlashError` unless the flasher reported success."""
        if (image is None) == (card is None):
            raise ValueError("flash() takes an image or a card, not both or neither")
        if card is None:
            card = self.make_card(image)
        else:
            card = self._image(card)
        self.runs += 1
        self.last_card = card
        self.last_report = self.last_events = self.last_console_log = None
        if self.twin:
            return self._flash_twin(card, target_disk)
        if target_disk is not None:
            raise ValueError("target_disk= is for a QEMU twin; a real board's target is its own storage")
        return self._flash_board(card)

    def _flash_twin(self, card, target):
        target = target or (self._path(self.target_disk) if self.target_disk else None)
        if target is None:
            raise ValueError(f"twin {self.twin} needs a target disk file (target_disk: in the environment)")
        self.last_target = target
        stem = os.path.join(self.work_dir(), f"run{self.runs}-{os.path.basename(card)}")
        report_path, console, events = stem + ".json", stem + ".console.log", stem + ".events.jsonl"
        for p in (report_path, console, events):
            if os.path.exists(p):
                os.unlink(p)
        args = [
            "qemu", "--board", self.twin, card,
            "--target", target, "--target-size", self.target_size,
            "--json", report_path, "--console-log", console, "--events", events,
            "--timeout", str(self.timeout),
        ]
        status = self._run(args, stem + ".out")
        self.last_console_log = console
        if os.path.exists(events):
            self.last_events = read_events(events, console=False)
        try:
            with open(report_path) as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            raise FlashError(
                f"mkflasher qemu (exit {status}) wrote no report ({e}): {_tail(stem + '.out')}",
                verdict="error", console_log=console,
            ) from None
        self.last_report = report
        if report.get("verdict") == "success" and status == 0:
            rec = report.get("unit_record")
            if rec is None:
                raise FlashError("the run succeeded but no unit record was read back from the card",
                                 verdict="error", report=report, console_log=console)
            return rec
        ec = report.get("error_class") or {}
        raise FlashError(
            report.get("message") or f"mkflasher qemu exited with {status}",
            error_class=ec.get("class"), verdict=report.get("verdict", "error"),
            report=report, console_log=console,
        )

    def _flash_board(self, card):
        if self.power is None or self.console is None:
            raise FlashError("a real place needs a power driver and a serial console "
                             "(PowerProtocol, ConsoleProtocol) bound to FlasherDriver", verdict="error")
        self.target.activate(self.power)
        self.power.off()
        if self.mux is not None:
            self.target.activate(self.mux)
            self.mux.set_mode("host")
        if self.storage is not None:
            self.target.activate(self.storage)
            self.storage.write_image(card, mode=_storage_mode(self.write_mode))
        else:
            self.logger.info("no storage bound: the card %s must already be in the board's slot", card)
        if self.mux is not None:
            self.mux.set_mode("dut")
        self.target.activate(self.console)
        stream = EventStream(console=True)
        self.last_events = stream
        log = os.path.join(self.work_dir(), f"run{self.runs}-{os.path.basename(card)}.console.log")
        self.last_console_log = log
        with open(log, "wb") as out:
            self.power.on()
            self.follow_events(self.console, stream, out, self.timeout)
        if self.mux is not None:
            # The board powered itself off; its next boot must be from its own
            # storage, and the host can read the card's log.
            self.power.off()
            self.mux.set_mode("host")
        return self._result_from_events(stream, log)

    def follow_events(self, console, stream, out=None, timeout=600, grace=10.0):
        """Read `console` into `stream` (and `out`, a binary file) until the
        flasher reported its result, and after a failure until its record
        event or `grace` seconds more. Returns the stream; raises `FlashError`
        (verdict `timeout`) when no result came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        ended_at = None
        while True:
            now = time.monotonic()
            if stream.verdict == "success":
                break
            if stream.failure is not None:
                ended_at = ended_at or now
                after = stream.events[stream.events.index(stream.failure):]
                if any(e.kind == "record" for e in after) or now - ended_at > grace:
                    break
            if now > deadline:
                stream.finish()
                if stream.verdict is None:
                    last = stream.phases()[-1]["phase"] if stream.events else "none"
                    raise FlashError(f"no result from the flasher within {timeout} s (last phase: {last})",
                                     verdict="timeout", console_log=getattr(out, "name", None))
                break
            try:
                data = console.read(size=1, timeout=0.5, max_size=65536)
            except Exception as e:  # pexpect.TIMEOUT from labgrid's consoles
                if type(e).__name__ != "TIMEOUT":
                    raise
                data = b""
            if not data:
                time.sleep(0.05)  # a console that returns at once with nothing
            else:
                if out is not None:
                    out.write(data)
                stream.feed(data)
        return stream

    def _result_from_events(self, stream, log):
        s = stream.summary()
        if s["verdict"] != "success":
            raise FlashError(s["message"] or "the flasher failed", error_class=s["error_class"],
                             verdict=s["verdict"] or "no-result", console_log=log)
        return self.read_unit_record(s["record"])

    def read_unit_record(self, record_event):
        """The unit record for a real board's run: read back from the card with
        `mkflasher records --json` when the card is a block device on this host
        (a local SD mux or USB storage), matched by its sequence number; else
        the `record` event's fields (seq, result, log, offset)."""
        res = getattr(self.storage, "storage", None)
        path = getattr(res, "disk_path", None) or getattr(res, "path", None)
        if record_event is None or not path or not os.path.exists(path):
            return record_event
        out = os.path.join(self.work_dir(), f"run{self.runs}.records.json")
        if self._run(["records", "--json", path], out) != 0:
            return record_event
        try:
            with open(out) as f:
                recs = json.load(f)
        except (OSError, ValueError):
            return record_event
        same = [r for r in recs if r.get("seq") == record_event.get("seq")]
        return same[-1] if same else record_event

    # The flashed disk of a twin, booted alone.

    def twin_boot_args(self, target=None):
        """QEMU arguments that boot the twin's flashed disk alone, as the demo
        does (`flasher_qemu::boot_disk`): OVMF and the disk as NVMe, attached
        copy-on-write so booting never changes it. For labgrid's QEMUDriver
        (`extra_args`; it adds the serial console, memory and machine)."""
        if self.twin != "qemu-x86_64-nuc":
            raise NotImplementedError(
                f"booting the flashed disk of {self.twin}: only qemu-x86_64-nuc has a firmware "
                "that boots its internal disk here (docs/labgrid.md)"
            )
        disk = target or self.last_target or (self._path(self.target_disk) if self.target_disk else None)
        if not disk or not os.path.exists(disk):
            raise FileNotFoundError(f"no flashed target disk to boot ({disk})")
        q = shlex.quote
        return " ".join([
            "-drive", q(f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive", q(f"if=pflash,format=raw,unit=1,snapshot=on,file={OVMF_VARS}"),
            "-drive", q(f"if=none,id=t0,format=raw,snapshot=on,file={disk}"),
            "-device", q(f"nvme,drive=t0,serial={target_serial(disk)},bootindex=1"),
        ])


def _storage_mode(name):
    from labgrid.driver.usbstoragedriver import Mode  # pylint: disable=import-outside-toplevel

    return Mode(name)


def _tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return "(no output)"
