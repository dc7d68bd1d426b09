"""FitNet (its regressor's BatchNorm) and AT over several pairs train on two
replicas (MirroredStrategy, 2 logical CPUs) like one device, to 1e-5."""

import pytest
import tensorflow as tf
from distributed_job import train
from test_distributed import assert_same_training, two_cpus


@pytest.mark.large
@pytest.mark.parametrize("loss", ["fitnet", "at_pairs"])
def test_mirrored_two_replicas_equal_one_device(loss):
    """BatchNorm-free students; FitNet's regressor has a BatchNorm, whose
    statistics are over the global batch (GroupBatchNormalization), so its
    weights too train as on one device."""
    single = train(loss, tf.distribute.get_strategy())
    mirrored = train(loss, two_cpus())
    assert_same_training(single, mirrored)
