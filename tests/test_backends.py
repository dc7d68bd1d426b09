"""The same distillation trains the same student on every Keras backend.

Each run is `backend_run.py` in its own process (a process has one Keras
backend): the same teacher, student, initial weights (made once with NumPy) and
batches, distilled with CSKD + CSWT under SGD for six steps. TensorFlow is the
reference; JAX, JAX with `DataParallel` over two host devices and PyTorch must
end with its student weights and logged values to 1e-4, and every backend with
the teacher bitwise as it started.
"""

import importlib.util
import os
import subprocess
import sys

import backend_run
import numpy as np
import pytest

pytestmark = pytest.mark.large  # one process per backend

TOLERANCE = 1e-4
TIMEOUT_SECONDS = 120
# name: (backend, extra flags of backend_run.py)
RUNS = {
    "jax": ("jax", ()),
    "jax_data_parallel": ("jax", ("--data_parallel",)),
    "torch": ("torch", ()),
}


def run_backend(inputs, name, backend, flags=()):
    """Runs backend_run.py; returns the arrays it wrote."""
    out = inputs.with_name(f"{name}.npz")
    env = dict(os.environ)
    if "--data_parallel" in flags:
        env["XLA_FLAGS"] = (
            f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count="
            f"{backend_run.DATA_PARALLEL_DEVICES}"
        ).strip()
    command = [
        sys.executable,
        backend_run.__file__,
        f"--backend={backend}",
        f"--inputs={inputs}",
        f"--out={out}",
        *flags,
    ]
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{name} ran past {TIMEOUT_SECONDS} s:\n{tail(error.stderr)}")
    if result.returncode != 0:
        pytest.fail(
            f"{name} failed with exit code {result.returncode}:\n{tail(result.stderr)}",
            pytrace=False,
        )
    with np.load(out) as arrays:
        return dict(arrays)


def tail(stderr, characters=3000):
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    return (stderr or "")[-characters:]


def skip_unless_installed(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(
            f"{backend} is not installed; for this test, "
            f"pip install keras-cskd[{backend}]"
        )


def largest_difference(weights, others):
    return max(np.abs(a - b).max() for a, b in zip(weights, others, strict=True))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    path = tmp_path_factory.mktemp("backends") / "inputs.npz"
    backend_run.make_inputs(path)
    return path


@pytest.fixture(scope="module")
def initial(inputs):
    with np.load(inputs) as arrays:
        return dict(arrays)


@pytest.fixture(scope="module")
def reference(inputs):
    return run_backend(inputs, "tensorflow", "tensorflow", ("--also_per_shard",))


@pytest.fixture(scope="module", params=list(RUNS))
def other(request, inputs):
    backend, flags = RUNS[request.param]
    skip_unless_installed(backend)
    return request.param, run_backend(inputs, request.param, backend, flags)


def test_reference_moves_the_student_and_not_the_teacher(initial, reference):
    assert str(reference["backend"]) == "tensorflow"
    # Far above the tolerance, so that matching it says something.
    moved = largest_difference(
        backend_run.read_weights(reference, "student"),
        backend_run.read_weights(initial, "student"),
    )
    assert moved > 100 * TOLERANCE
    for index, (final, start) in enumerate(
        zip(
            backend_run.read_weights(reference, "teacher"),
            backend_run.read_weights(initial, "teacher"),
            strict=True,
        )
    ):
        np.testing.assert_array_equal(final, start, err_msg=f"teacher weight {index}")
    for key in backend_run.HISTORY_KEYS:
        values = reference[f"history_{key}"]
        assert values.shape == (backend_run.EPOCHS,) and np.isfinite(values).all()


def test_runs_on_the_backend_and_devices_asked_for(other):
    name, result = other
    assert str(result["backend"]) == RUNS[name][0]
    devices = backend_run.DATA_PARALLEL_DEVICES if "data_parallel" in name else 1
    assert int(result["num_devices"]) == devices
    # Under DataParallel the variables are replicated on every device.
    assert int(result["variable_devices"]) == devices


def test_teacher_is_unchanged(other, initial):
    name, result = other
    for index, (final, start) in enumerate(
        zip(
            backend_run.read_weights(result, "teacher"),
            backend_run.read_weights(initial, "teacher"),
            strict=True,
        )
    ):
        np.testing.assert_array_equal(
            final, start, err_msg=f"{name}: teacher weight {index}"
        )


def test_student_weights_match_tensorflow(other, reference, initial):
    name, result = other
    names = initial["student_names"]
    for index, (weight, expected) in enumerate(
        zip(
            backend_run.read_weights(result, "student"),
            backend_run.read_weights(reference, "student"),
            strict=True,
        )
    ):
        np.testing.assert_allclose(
            weight,
            expected,
            rtol=TOLERANCE,
            atol=TOLERANCE,
            err_msg=f"{name}: student weight {index} ({names[index]})",
        )


def test_history_matches_tensorflow(other, reference):
    name, result = other
    keys = sorted(key for key in reference if key.startswith("history_"))
    assert sorted(key for key in result if key.startswith("history_")) == keys
    for key in keys:
        np.testing.assert_allclose(
            result[key],
            reference[key],
            rtol=TOLERANCE,
            atol=TOLERANCE,
            err_msg=f"{name}: {key}",
        )


def test_loss_on_shards_would_fail_the_comparison(reference):
    # A backend that computed the batch-wise loss on each half of the batch
    # (per device) instead of on the global batch ends far outside the tolerance.
    difference = largest_difference(
        backend_run.read_weights(reference, "per_shard_student"),
        backend_run.read_weights(reference, "student"),
    )
    assert difference > 100 * TOLERANCE
    distillation_losses = [
        reference[f"{prefix}history_distillation_loss"] for prefix in ("per_shard_", "")
    ]
    assert np.abs(np.subtract(*distillation_losses)).max() > 100 * TOLERANCE
