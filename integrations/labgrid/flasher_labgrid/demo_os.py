"""The demo OS image (the one `mkflasher demo` flashes), written by
`mkflasher demo --os-only IMAGE`: GPT, one ESP with systemd-boot, Debian's
kernel from the QEMU fixture cache and an initramfs whose `/init` prints
``FLASHER-DEMO-OS: booted OK`` on ttyS0 and powers off. It needs what
`mkflasher demo` needs: `qemu-fixtures/setup` and `scripts/build-init`.
"""

import subprocess

#: What the demo OS prints on its console once it came up
#: (`flasher_qemu::DEMO_MARKER`).
DEMO_MARKER = "FLASHER-DEMO-OS: booted OK"


def build_demo_os(out, mkflasher):
    """Write the demo OS disk image to `out` with the `mkflasher` binary; returns `out`."""
    subprocess.run([mkflasher, "demo", "--os-only", out], check=True, stdout=subprocess.DEVNULL)
    return out
