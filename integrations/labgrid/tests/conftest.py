"""Shared fixtures. The QEMU tests use labgrid's pytest plugin (`--lg-env`);
without it they are skipped by the plugin's `env` fixture."""

import os
import subprocess

import pytest

from flasher_labgrid.demo_os import build_demo_os

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def demo_os(env, flasher):
    """The demo OS image the environment names (`images: demo-os`), built when missing."""
    path = env.config.get_image_path("demo-os")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        build_demo_os(path + ".part", flasher.mkflasher_path())
        os.replace(path + ".part", path)
    return path


@pytest.fixture(scope="session")
def flasher(target):
    return target.get_driver("FlasherDriver")


@pytest.fixture(scope="session")
def demo_bundle(flasher, demo_os):
    """`mkflasher bundle` of the demo OS, in the driver's work folder."""
    out = os.path.join(flasher.work_dir(), "demo-os.bundle")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(demo_os):
        subprocess.run([flasher.mkflasher_path(), "bundle", demo_os, "-o", out], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out
