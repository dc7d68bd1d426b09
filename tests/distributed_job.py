"""Trains a fixed student for five steps; run by test_distributed.py.

    python distributed_job.py OUT.npz LOSS [--logical_cpus=N] [--strategy=NAME]

Writes the student's weights and the logged values. With TF_CONFIG set and
--strategy=multiworker, each process is one worker of a MultiWorkerMirroredStrategy.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_loss(name):
    from keras_cskd import losses

    return {
        "kd": lambda: losses.KD(),
        "cskd": lambda: losses.CSKD(cswt=None),
        "cskd_cswt": lambda: losses.CSKD(),
        "kd_cswt": lambda: losses.KD(temperature=losses.CSWT()),
        "cskd_per_replica": lambda: losses.CSKD(global_batch=False),
        "dist": lambda: losses.get("dist"),
        "dkd": lambda: losses.get("dkd"),
        "kd_ls": lambda: losses.KD(temperature=2.0, standardize=True),
        "dkd_ls": lambda: losses.DKD(temperature=2.0, standardize=True),
        "two_view_cskd": lambda: losses.TwoViewCSKD(),
        "fitnets": lambda: FITNETS(),
        "attention_transfer": lambda: ATTENTION(),
        "several": lambda: [losses.CSKD(), FITNETS(), ATTENTION()],
        # FitNet's regressor: a stride-2 conv (8x8 -> 4x4), BatchNorm, ReLU.
        "fitnet": lambda: losses.FitNet("relu1", "features"),
        "at_pairs": lambda: losses.AttentionTransfer(
            ["relu0", "relu1"], ["features", "features"]
        ),
        "ofd": lambda: losses.OFD(),
        "reviewkd": lambda: REVIEWKD(),
        "vid_trained_variances": lambda: losses.VID(
            "relu0", "features", train_variances=True
        ),
        # On their default taps, mdistiller's (feats[1:], pooled_feat, feats[-1]).
        "nst": lambda: losses.NST(),
        "pkt": lambda: losses.PKT(),
        # This student's pooled and 2x2 features lie close together (nearest
        # rows 0.007 apart); RKD's angles normalise their differences, which
        # amplifies float32 rounding (one device and shards differ by 3e-5 in
        # 5 steps): its 4x4 tap, whose rows lie apart, instead.
        "rkd": lambda: losses.RKD("feats[1]", "feats[1]"),
        "sp": lambda: losses.SP(),
        "kdsvd": lambda: losses.KDSVD(),
    }[name]()


def FITNETS():
    from keras_cskd import losses

    return losses.FeatureDistillation("mse", "relu0", "features", regressor=True)


def ATTENTION():
    from keras_cskd import losses

    return losses.AttentionTransfer("relu1", "features")


def REVIEWKD():
    """ReviewKD's ABFs (BatchNorm over the global batch) from two student maps
    (8x8, resized to the teacher's 4x4 and 2x2) and the pooled feature."""
    from keras_cskd import losses

    return losses.ReviewKD(
        student_layer_name=["conv", "features", "gap"], warmup_epochs=0
    )


# Students with a feature map to compare, and their distillation loss weights.
FEATURE_LOSSES = {"fitnets": 1.0, "attention_transfer": 100.0, "several": [1, 1, 100]}
FEATURE_LOSSES.update(fitnet=1.0, at_pairs=100.0)
FEATURE_LOSSES["ofd"] = 0.01  # the teacher in training mode, as mdistiller's OFD
FEATURE_LOSSES["reviewkd"] = 1.0
FEATURE_LOSSES.update(vid_trained_variances=1.0)
# Students with feature taps (feats_<i>, pooled_feat), and their loss weights.
TAP_LOSSES = {"nst": 10.0, "pkt": 1000.0, "rkd": 1.0, "sp": 100.0, "kdsvd": 1.0}


def tap_student():
    """A small CNN without BatchNorm or dropout whose layers name the feature
    taps at the `digits_cnn` teacher's sizes: `preact_feats_<i>` (each
    stage's conv) and `feats_<i>` (its ReLU), 8x8, 4x4 and 2x2, and
    `pooled_feat`."""
    import keras

    x = inputs = keras.Input((8, 8, 1), name="images")
    for i, filters in enumerate((4, 4, 8)):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"preact_feats_{i}")(x)
        x = keras.layers.ReLU(name=f"feats_{i}")(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pooled_feat")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def feature_student():
    """A small CNN without BatchNorm or dropout, which would make replicas
    differ from one device."""
    import keras

    inputs = keras.Input((8, 8, 1), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def train(loss_name, strategy, global_batch=32, steps=5):
    """Five SGD steps of a digits student; returns (weights, history).

    `two_view_cskd` trains on two views (the images and their mirror image)
    with the reference recipes' TorchSGD (coupled weight decay)."""
    import keras
    import tensorflow as tf

    import keras_cskd
    from keras_cskd.data import digits_arrays

    x, y = digits_arrays()["train"]
    x, y = x[: global_batch * steps], y[: global_batch * steps]
    two_views = loss_name == "two_view_cskd"
    with strategy.scope():
        keras.utils.set_random_seed(0)
        teacher = keras_cskd.models.get("digits_cnn", 10, (8, 8, 1), width=8)
        if loss_name == "ofd":
            student = tap_student()
        elif loss_name in FEATURE_LOSSES:
            student = feature_student()
        elif loss_name in TAP_LOSSES:
            student = tap_student()
        else:
            student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
        distiller = keras_cskd.Distiller(
            teacher,
            student,
            build_loss(loss_name),
            distillation_loss_weight={**FEATURE_LOSSES, **TAP_LOSSES}.get(
                loss_name, 1.0
            ),
            view_weights=(1.0, 1.0) if two_views else None,
        )
        distiller.compile(
            keras_cskd.optimizers.TorchSGD(0.1, momentum=0.9, weight_decay=5e-3)
            if two_views
            else keras.optimizers.SGD(0.1, momentum=0.9)
        )
    inputs = (x, x[:, :, ::-1]) if two_views else x
    dataset = tf.data.Dataset.from_tensor_slices((inputs, y)).batch(global_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    history = distiller.fit(dataset.with_options(options), epochs=1, verbose=0)
    weights = [w.numpy() for w in distiller.trainable_weights]
    return weights, {k: float(v[-1]) for k, v in history.history.items()}


def main():
    import keras

    keras.config.disable_traceback_filtering()
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("loss")
    parser.add_argument("--strategy", default="none")
    parser.add_argument("--logical_cpus", type=int, default=0)
    args = parser.parse_args()
    import numpy as np

    from keras_cskd import distribute

    if args.logical_cpus:
        distribute.split_cpu(args.logical_cpus)
    weights, logs = train(args.loss, distribute.get_strategy(args.strategy))
    if distribute.is_chief():
        np.savez(args.out, *weights, **{f"log_{k}": v for k, v in logs.items()})


if __name__ == "__main__":
    main()
