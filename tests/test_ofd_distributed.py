"""OFD on two replicas trains like one device: its connectors' BatchNorm and
the teacher's, in training mode as mdistiller runs it, see the global batch."""

import numpy as np
import pytest
import tensorflow as tf
from distributed_job import train
from test_distributed import assert_same_training, two_cpus


@pytest.mark.large
def test_ofd_on_two_replicas_equals_one_device():
    single = train("ofd", tf.distribute.get_strategy())
    mirrored = train("ofd", two_cpus())
    assert_same_training(single, mirrored)
    assert np.isfinite(single[1]["distillation_loss"])
