"""The three kernel families' switches (kan_zoo.layers.kernels.switches): how each environment variable is
parsed (in this process, on fresh KernelSwitch objects), that the package reads them at import (one
subprocess for all three), and the setters' contract."""
import os
import subprocess
import sys

import pytest

from kan_zoo.layers.kernels.switches import CPU_KERNELS, NATIVE_KERNELS, TRITON, KernelSwitch

# (switch, its variable, default): on-by-default families turn off only at "0", off-by-default ones on only at "1".
FAMILIES = [(NATIVE_KERNELS, "KAN_ZOO_NATIVE_KERNELS", True), (CPU_KERNELS, "KAN_ZOO_CPU_KERNELS", False),
            (TRITON, "KAN_ZOO_TRITON", True)]


@pytest.mark.parametrize("switch, variable, default", FAMILIES, ids=lambda v: getattr(v, "variable", None))
@pytest.mark.parametrize("value", [None, "0", "1", "all", ""])
def test_environment_parsing(switch, variable, default, value, monkeypatch):
    assert switch.variable == variable
    if value is None:
        monkeypatch.delenv(variable, raising=False)
        expected = default
    else:
        monkeypatch.setenv(variable, value)
        expected = value != "0" if default else value == "1"
    assert KernelSwitch(variable, default).enabled is expected


def test_the_package_reads_every_variable_at_import():
    # Each family away from its default, so a variable the import ignored shows.
    env = dict(os.environ, KAN_ZOO_NATIVE_KERNELS="0", KAN_ZOO_CPU_KERNELS="1", KAN_ZOO_TRITON="0")
    code = ("from kan_zoo import layers; "
            "print(layers.native_kernels_enabled(), layers.cpu_kernels_enabled(), layers.triton_enabled())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "False"]


@pytest.mark.parametrize("setter, getter", [
    ("set_native_kernels_enabled", "native_kernels_enabled"), ("set_cpu_kernels_enabled", "cpu_kernels_enabled"),
    ("set_triton_enabled", "triton_enabled")])
def test_setters_return_the_previous_setting(setter, getter):
    from kan_zoo import layers

    start = getattr(layers, getter)()
    try:
        assert getattr(layers, setter)(not start) is start
        assert getattr(layers, getter)() is (not start)
        assert getattr(layers, setter)(start) is (not start)
    finally:
        getattr(layers, setter)(start)
    assert getattr(layers, getter)() is start
