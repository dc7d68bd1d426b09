"""N replicas train exactly like one device on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import workers
from distributed_job import train

from keras_cskd import distribute

pytestmark = pytest.mark.large  # multi-process, end-to-end or every zoo model

LOSSES = ["kd", "cskd", "cskd_cswt", "kd_cswt", "dist", "dkd", "two_view_cskd"]
LOSSES += ["kd_ls", "dkd_ls"]  # logit standardisation: per-sample, exact on shards
FEATURE_LOSSES = ["fitnets", "attention_transfer", "several"]
FEATURE_LOSSES += ["nst", "pkt", "rkd", "sp", "kdsvd"]  # on feature taps
# With modules of their own (BatchNorm over the global batch in FitNet's,
# OFD's and ReviewKD's; VID's variances trained; OFD's teacher in training
# mode); CRD's memory banks in tests/test_crd_recipe.py.
FEATURE_LOSSES += ["fitnet", "at_pairs", "ofd", "reviewkd", "vid_trained_variances"]
TOLERANCE = 1e-5


def two_cpus():
    # The process's one MirroredStrategy: a second hands out the same
    # collective keys, and the two then clash (tensorflow/tensorflow#62790).
    return distribute.get_strategy("mirrored")


def assert_same_training(one, other):
    (weights_a, logs_a), (weights_b, logs_b) = one, other
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)
    assert logs_a.keys() == logs_b.keys()
    for key in logs_a:
        np.testing.assert_allclose(
            logs_a[key], logs_b[key], rtol=0, atol=TOLERANCE, err_msg=key
        )


@pytest.mark.parametrize("loss", LOSSES + FEATURE_LOSSES)
def test_mirrored_two_replicas_equal_one_device(loss):
    single = train(loss, tf.distribute.get_strategy())
    mirrored = train(loss, two_cpus())
    assert_same_training(single, mirrored)


def test_per_replica_switch_changes_batch_wise_losses():
    (single_weights, single_logs) = train(
        "cskd_per_replica", tf.distribute.get_strategy()
    )
    (weights, logs) = train("cskd_per_replica", two_cpus())
    difference = max(
        np.abs(a - b).max() for a, b in zip(single_weights, weights, strict=True)
    )
    assert difference > 100 * TOLERANCE
    # The cross-entropy is per sample, so it is still the same global value
    # at the first step; the distillation loss, on shards, is not.
    assert abs(logs["distillation_loss"] - single_logs["distillation_loss"]) > TOLERANCE


def test_two_worker_processes_equal_one_process(tmp_path):
    job = Path(__file__).with_name("distributed_job.py")
    env = {**os.environ, "PYTHONPATH": str(job.parent)}
    workers.finish(
        workers.start(
            [sys.executable, job, tmp_path / "multi.npz", "cskd_cswt"]
            + ["--strategy=multiworker"],
            env=env,
        ),
        timeout=240,
    )
    subprocess.run(
        [sys.executable, str(job), str(tmp_path / "single.npz"), "cskd_cswt"],
        env=env,
        check=True,
        timeout=240,
        capture_output=True,
    )
    multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert sorted(multi.files) == sorted(single.files)
    for key in single.files:
        np.testing.assert_allclose(
            multi[key], single[key], rtol=0, atol=TOLERANCE, err_msg=key
        )
