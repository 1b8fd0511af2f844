"""The qemu-x86_64-nuc twin through labgrid (run with --lg-env examples/qemu-nuc.yaml).

Each VM run takes 20 to 90 s under TCG on two cores.
"""

import os

import pytest

from flasher_labgrid import FlashError, Status


pytestmark = pytest.mark.qemu


def test_flash_then_boot_the_flashed_os(target, strategy, flasher, demo_os):
    # A blank NVMe: the twin flashes from nothing.
    disk = flasher._path(flasher.target_disk)
    if os.path.exists(disk):
        os.unlink(disk)
    strategy.transition("flashed")
    rec = strategy.unit_record
    assert rec["result"] == {"status": "ok"}, rec
    assert rec["board"] == "qemu-x86_64-nuc"
    assert rec["target"]["device"] == "nvme0n1"
    assert rec["bytes_written"] == os.path.getsize(demo_os)
    assert flasher.last_report["verdict"] == "success"
    # The driver's own event reader agrees with the harness's report.
    assert flasher.last_events.verdict == "success"
    assert flasher.last_events.record.fields["seq"] == rec["seq"]
    assert [p["phase"] for p in flasher.last_events.phases()] == [
        p["phase"] for p in flasher.last_report["phases"]
    ]

    strategy.transition("booted")
    assert strategy.status == Status.booted
    assert strategy.marker in strategy.boot_log
    print(f"flashed OS says: {strategy.marker}")
    strategy.transition("off")


def test_corrupted_payload_raises_flash_error_with_blink_class(flasher, demo_bundle):
    data = bytearray(open(demo_bundle, "rb").read())
    # As tests/e2e/qemu_common/mod.rs corrupted_card: past the header and the
    # manifest, inside compressed chunk data.
    data[len(data) * 3 // 4] ^= 0x5A
    bad = os.path.join(flasher.work_dir(), "corrupt.bundle")
    with open(bad, "wb") as f:
        f.write(data)
    card = flasher.make_card(bad)
    disk = os.path.join(flasher.work_dir(), "nvme-corrupt.img")
    if os.path.exists(disk):
        os.unlink(disk)
    with pytest.raises(FlashError) as info:
        flasher.flash(card=card, target_disk=disk)
    e = info.value
    print(f"FlashError: {e}")
    assert e.error_class == 2
    assert e.meaning == "payload invalid"
    assert e.verdict == "failure"
    assert "corrupt" in e.reason
    assert e.report["unit_record"]["result"]["status"] == "error"
    assert os.path.exists(e.console_log)
    assert flasher.last_events.error_class == 2
