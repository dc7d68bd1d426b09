"""BatchNorm students train on N devices exactly as on one (weights and moving
statistics, to 1e-5), with statistics over groups of the global batch.

resnet8 and wrn_16_2 students distilled from a BatchNorm teacher for five
steps of the CIFAR recipe's optimizer (batch_norm_job.py): two logical CPUs
under MirroredStrategy, two MultiWorkerMirroredStrategy worker processes and
JAX's DataParallel over two host devices, each against one device; on two
logical CPUs with the group equal to the global batch (8) and to half of it (4,
one replica's shard), across the workers with the global batch, on JAX with half.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import batch_norm_job
import numpy as np
import pytest
import tensorflow as tf
import workers
from test_backends import skip_unless_installed

from keras_cskd import distribute

pytestmark = pytest.mark.large  # trains zoo models; multi-process

TOLERANCE = 1e-5
STUDENTS = ["resnet8", "wrn_16_2"]
GROUPS = [batch_norm_job.GLOBAL_BATCH, batch_norm_job.GLOBAL_BATCH // 2]
JOB = Path(batch_norm_job.__file__)


@functools.cache
def one_device(student, group):
    return batch_norm_job.train(student, group, tf.distribute.get_strategy())


def assert_same_weights(expected, actual):
    assert list(expected) == list(actual)
    for key in expected:
        np.testing.assert_allclose(
            actual[key], expected[key], rtol=0, atol=TOLERANCE, err_msg=key
        )


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("student", STUDENTS)
def test_two_replicas_train_like_one_device(student, group):
    mirrored = batch_norm_job.train(student, group, distribute.get_strategy("mirrored"))
    assert_same_weights(one_device(student, group), mirrored)


def test_the_comparison_notices_a_different_group():
    whole, halves = (one_device("resnet8", group) for group in GROUPS)
    largest = max(np.abs(whole[k] - halves[k]).max() for k in whole)
    assert largest > 100 * TOLERANCE


def run_job(out, student, group, *flags, env=None):
    command = [sys.executable, JOB, out, student, str(group), *flags]
    return [str(part) for part in command], {
        **(env or os.environ),
        "PYTHONPATH": os.pathsep.join(
            [str(JOB.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }


def of_student(arrays, student):
    """The weights the job wrote for `student` (keys `<student>/<weight>`)."""
    prefix = f"{student}/"
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Both students trained by one pair of worker processes, one after the
    other (a TensorFlow start and a cluster for both)."""
    out = tmp_path_factory.mktemp("multiworker") / "multi.npz"
    group = batch_norm_job.GLOBAL_BATCH  # one group spanning the two workers
    command, env = run_job(out, ",".join(STUDENTS), group, "--strategy=multiworker")
    workers.finish(workers.start(command, env=env), timeout=600)
    with np.load(out) as arrays:
        return dict(arrays)


@pytest.mark.parametrize("student", STUDENTS)
def test_two_worker_processes_train_like_one_device(student, two_workers):
    group = batch_norm_job.GLOBAL_BATCH
    assert_same_weights(one_device(student, group), of_student(two_workers, student))


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory):
    """Both students on one host device and under DataParallel over two, in
    one JAX process."""
    skip_unless_installed("jax")
    out = tmp_path_factory.mktemp("jax") / "jax.npz"
    group = batch_norm_job.GLOBAL_BATCH // 2
    command, env = run_job(out, ",".join(STUDENTS), group, "--backend=jax")
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as arrays:
        return dict(arrays)


@pytest.mark.parametrize("student", STUDENTS)
def test_jax_data_parallel_trains_like_one_device(student, jax_runs):
    """Groups of half the batch: explicit, not the whole sharded array's."""
    arrays = of_student(jax_runs, student)
    single = {
        k[len("single_") :]: v for k, v in arrays.items() if k.startswith("single_")
    }
    parallel = {
        k[len("data_parallel_") :]: v
        for k, v in arrays.items()
        if k.startswith("data_parallel_")
    }
    assert single and list(single) == list(parallel)
    assert_same_weights(single, parallel)
