"""CRD under MirroredStrategy, its memory banks included (the `crd` recipe
runs and resumes bitwise in tests/test_feature_recipes.py: its banks, Z and
draw count are in the checkpoint)."""

import numpy as np
import pytest


def _train_crd(strategy, global_batch=32, steps=3):
    """Three SGD steps of a BatchNorm-free digits student with CRD (the
    student's pooled features against the teacher's logits); returns the
    trainable weights, the memory's state and the memory's copy on each
    replica."""
    import keras
    import tensorflow as tf
    from distributed_job import feature_student

    import keras_cskd
    from keras_cskd import losses
    from keras_cskd.data import digits_arrays

    x, y = digits_arrays()["train"]
    x, y = x[: global_batch * steps], y[: global_batch * steps]
    with strategy.scope():
        keras.utils.set_random_seed(0)
        teacher = keras_cskd.models.get("digits_cnn", 10, (8, 8, 1), width=8)
        loss = losses.CRD(
            student_layer_name="gap", feature_dim=8, num_negatives=20, seed=3
        )
        loss.adapt(y)
        distiller = keras_cskd.Distiller(
            teacher, feature_student(), loss, distillation_loss_weight=0.8
        )
        distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    inputs = {"images": x, "sample_indices": np.arange(len(y), dtype="int32")}
    dataset = tf.data.Dataset.from_tensor_slices((inputs, y)).batch(global_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    history = distiller.fit(dataset.with_options(options), epochs=1, verbose=0)
    memory = loss.memory
    replicas = [
        [v.numpy() for v in strategy.experimental_local_results(w.value)]
        for w in memory.weights
    ]
    state = [w.numpy() for w in distiller.trainable_weights + memory.weights]
    return state, history.history["loss"][-1], replicas


@pytest.mark.large
def test_crd_on_two_replicas_trains_like_one_device_banks_included():
    """The banks, Z and the draw count are updated once per step from the
    global batch: the same on one device and on two replicas, and the same on
    both replicas."""
    import tensorflow as tf

    from keras_cskd import distribute

    single, single_loss, _ = _train_crd(tf.distribute.get_strategy())
    mirrored, mirrored_loss, replicas = _train_crd(distribute.get_strategy("mirrored"))
    # Z is about 6e4 (N times the first batch's mean exponential): its 1e-5
    # is relative, one float32 step at that size being 4e-3.
    for a, b in zip(single, mirrored, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5 if a.size == 1 else 0, atol=1e-5)
    assert abs(single_loss - mirrored_loss) < 1e-5
    assert len(replicas[0]) == 2
    for copies in replicas:
        np.testing.assert_array_equal(copies[0], copies[1])
    assert int(mirrored[-3]) == 3  # draws: one per step
