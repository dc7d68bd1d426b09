"""Test-session setup: two logical CPU devices, so MirroredStrategy runs for real."""

import os
import socket

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Must run before TensorFlow initialises its devices; the default strategy
# still uses only the first device.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture
def no_network(monkeypatch):
    """Makes every host lookup and connection fail; yields the attempts."""
    attempts = []

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(f"no network in tests ({host})")

    def refuse_connect(self, address):
        attempts.append(address)
        raise OSError(f"no network in tests ({address})")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    return attempts
