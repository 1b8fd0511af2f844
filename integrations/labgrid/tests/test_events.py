"""The event stream without QEMU: parsing, following a console, and the
driver's real-board path on captured console logs (fast)."""

import json
import os
import random

import pytest
from labgrid import Target
from labgrid.driver.fake import FakeConsoleDriver, FakePowerDriver

from flasher_labgrid import (
    ERROR_CLASSES,
    EventParseError,
    EventStream,
    FlashError,
    FlasherDriver,
    read_events,
    target_serial,
)
from flasher_labgrid.events import check_stream, events_in_console_line, parse_line

DATA = os.path.join(os.path.dirname(__file__), "data")
# Captured from the NUC twin with the events on the console
# (`mkflasher qemu ... --append flasher.events=/dev/ttyS0 --console-log`), as a
# real board's card would have them: kernel lines, the flasher's lines for
# people and the JSON events on one serial port.
OK_LOG = os.path.join(DATA, "nuc-events-on-console-success.log")
BAD_LOG = os.path.join(DATA, "nuc-events-on-console-corrupt.log")


def test_success_console_log():
    s = read_events(OK_LOG, console=True)
    check_stream(s.events)
    assert s.bad_lines == []
    assert s.verdict == "success"
    assert s.error_class is None
    assert [p["phase"] for p in s.phases()] == [
        "starting", "searching", "writing", "verifying", "finishing", "success"]
    assert s.record.fields == {"seq": 2, "result": "ok", "log": "/dev/sda3", "offset": 433}
    assert s.progress("writing") == (27262976, 27262976)
    # The kernel's and the flasher's lines for people are kept, not parsed.
    assert any("reboot: Power down" in line for line in s.console_lines)
    assert any(line.startswith("flasher: [success]") for line in s.console_lines)


def test_corrupt_console_log_gives_class_2():
    s = read_events(BAD_LOG, console=True)
    check_stream(s.events)
    assert s.verdict == "failure"  # failed once writing had begun
    assert s.error_class == 2
    assert s.summary()["meaning"] == "payload invalid" == ERROR_CLASSES[2]
    assert "the bundle is corrupt" in s.failure.message
    assert s.record.fields["result"] == "error"


@pytest.mark.parametrize("seed", range(5))
def test_any_chunking_gives_the_same_events(seed):
    raw = open(OK_LOG, "rb").read()
    whole = read_events(OK_LOG, console=True)
    rng = random.Random(seed)
    s, at = EventStream(console=True), 0
    while at < len(raw):
        n = rng.randint(1, 300)
        s.feed(raw[at:at + n])
        at += n
    s.finish()
    assert [e.line for e in s.events] == [e.line for e in whole.events]


def test_crlf_and_prefix_and_two_events_on_one_line():
    a = '{"v":1,"t_ms":5,"phase":"starting","kind":"phase","message":"flasher 0.1.0 starting"}'
    b = '{"v":1,"t_ms":9,"phase":"failure","kind":"phase","message":"x","error_class":3}'
    s = EventStream(console=True)
    s.feed(f"[    1.0] some kernel line\r\nnoise {a}{b}\r\n")
    assert [e.t_ms for e in s.events] == [5, 9]
    assert s.verdict == "refused"  # failed before writing
    assert s.error_class == 3


def test_a_garbled_event_is_kept_as_a_bad_line_on_a_console():
    line = '{"v":1,"t_ms":5,"phase":"writ[   3.1] usb 1-1: new device'
    found, bad = events_in_console_line(line)
    assert found == [] and len(bad) == 1
    s = EventStream(console=True)
    s.feed(line + "\n")
    assert s.events == [] and len(s.bad_lines) == 1


def test_dedicated_port_is_strict():
    s = EventStream(console=False)
    s.feed(b'flasher: [writing] not an event\n')
    assert len(s.bad_lines) == 1
    with pytest.raises(EventParseError):
        parse_line('{"phase":"writing","done":1}')  # before versioning: no v, no kind


def test_versions():
    newer = '{"v":2,"t_ms":1,"phase":"writing","kind":"progress","done":1,"total":2,"rate":0,"new":1}'
    e = parse_line(newer)  # additions only: still read
    assert e.v == 2 and e.fields["new"] == 1
    with pytest.raises(EventParseError, match="newer than this reader"):
        parse_line('{"v":2,"t_ms":1,"phase":"rebooting","kind":"phase"}')
    with pytest.raises(EventParseError, match="schema version 2"):
        check_stream([e])
    back = [parse_line('{"v":1,"t_ms":9,"phase":"writing","kind":"message","message":"a"}'),
            parse_line('{"v":1,"t_ms":8,"phase":"writing","kind":"message","message":"b"}')]
    with pytest.raises(EventParseError, match="goes back"):
        check_stream(back)


def test_unknown_kind_is_kept():
    e = parse_line('{"v":1,"t_ms":1,"phase":"searching","kind":"sparkle","x":1}')
    assert e.kind == "sparkle" and e.fields == {"x": 1}


def test_target_serial_is_the_harness_one():
    # The harness named this file's NVMe so in the captured run.
    assert "serial flb2d87f4cda58f665" in open(OK_LOG).read()
    assert target_serial("/tmp/lgw/nvme-con.img") == "flb2d87f4cda58f665"


# The driver's real-board path: power, console, no storage (the card is
# already in the slot), on a fake power driver and a console replaying a log.

def _board(tmp_path, log, chunk=512):
    t = Target("board")
    power = FakePowerDriver(t, "power")
    console = FakeConsoleDriver(t, "console")
    raw = open(log, "rb").read() if log else b""
    chunks = [raw[i:i + chunk] for i in range(0, len(raw), chunk)]
    console.rxq = list(reversed(chunks))  # FakeConsoleDriver pops from the end
    flasher = FlasherDriver(t, "flasher", board="qemu-x86_64-nuc", workdir=str(tmp_path), timeout=20)
    t.activate(flasher)
    return flasher


def test_real_board_path_success(tmp_path):
    flasher = _board(tmp_path, OK_LOG)
    card = tmp_path / "card.img"
    card.write_bytes(b"")
    rec = flasher.flash(card=str(card))
    # No card on this host to read the record back from: the record event.
    assert rec == {"seq": 2, "result": "ok", "log": "/dev/sda3", "offset": 433}
    assert flasher.last_events.verdict == "success"
    # The console log it kept runs up to the result (the board then powers off).
    kept = open(flasher.last_console_log, "rb").read()
    assert open(OK_LOG, "rb").read().startswith(kept)
    assert b'"phase":"success","kind":"phase"' in kept


def test_real_board_path_failure_raises_with_the_class(tmp_path):
    flasher = _board(tmp_path, BAD_LOG)
    card = tmp_path / "card.img"
    card.write_bytes(b"")
    with pytest.raises(FlashError) as info:
        flasher.flash(card=str(card))
    e = info.value
    assert (e.error_class, e.meaning, e.verdict) == (2, "payload invalid", "failure")
    assert "the bundle is corrupt" in e.reason
    assert "class 2 (payload invalid)" in str(e)
    # It waited for the failure's record event after the failure.
    assert flasher.last_events.record.fields["result"] == "error"


def test_real_board_path_silent_console_times_out(tmp_path):
    flasher = _board(tmp_path, None)
    flasher.timeout = 1
    card = tmp_path / "card.img"
    card.write_bytes(b"")
    with pytest.raises(FlashError) as info:
        flasher.flash(card=str(card))
    assert info.value.verdict == "timeout" and info.value.error_class is None


def test_twin_report_failure_becomes_flash_error(tmp_path, monkeypatch):
    """The twin path on a canned `mkflasher qemu --json` report (no VM)."""
    t = Target("twin")
    flasher = FlasherDriver(t, "flasher", board="qemu-x86_64-nuc", twin="qemu-x86_64-nuc",
                            target_disk=str(tmp_path / "nvme.img"), workdir=str(tmp_path))
    t.activate(flasher)
    report = {"version": 1, "verdict": "refused", "message": "target too small",
              "error_class": {"class": 3, "meaning": "target refused"}, "unit_record": None}

    def fake_run(args, log):
        with open(args[args.index("--json") + 1], "w") as f:
            json.dump(report, f)
        open(log, "w").close()
        return 1

    monkeypatch.setattr(flasher, "_run", fake_run)
    with pytest.raises(FlashError) as info:
        flasher.flash(card=str(tmp_path / "card.img"))
    assert (info.value.error_class, info.value.meaning, info.value.verdict) == (3, "target refused", "refused")
    assert info.value.report == report


def test_twin_boot_args(tmp_path):
    t = Target("twin")
    disk = tmp_path / "nvme.img"
    disk.write_bytes(b"\0" * 512)
    flasher = FlasherDriver(t, "flasher", board="qemu-x86_64-nuc", twin="qemu-x86_64-nuc",
                            target_disk=str(disk))
    args = flasher.twin_boot_args()
    assert f"file={disk}" in args and "snapshot=on" in args
    assert f"serial={target_serial(str(disk))}" in args
    sd = FlasherDriver(Target("sd"), "flasher", board="qemu-x86_64-sd", twin="qemu-x86_64-sd",
                       target_disk=str(disk))
    with pytest.raises(NotImplementedError):
        sd.twin_boot_args()


@pytest.mark.parametrize("name", ["qemu-nuc.yaml", "qemu-sd.yaml", "qemu-imx6.yaml"])
def test_example_environments_load(name):
    from labgrid import Environment

    env = Environment(os.path.join(os.path.dirname(__file__), "..", "examples", name))
    t = env.get_target()
    flasher = t.get_driver("FlasherDriver", activate=False)
    # A twin's flash is the harness's own VM: no power or console of the place.
    assert flasher.twin and flasher.power is None and flasher.console is None
    assert flasher._path(flasher.target_disk).endswith(".img")
    if name == "qemu-nuc.yaml":
        s = t.get_driver("FlasherStrategy", activate=False)
        assert type(s.power).__name__ == type(s.console).__name__ == "QEMUDriver"
        assert s.flasher is flasher
