"""Five CIFAR-recipe SGD steps of a BatchNorm student, for test_batch_norm_training.py.

    python batch_norm_job.py OUT.npz STUDENTS GROUP --strategy=multiworker
    python batch_norm_job.py OUT.npz STUDENTS GROUP --backend=jax

STUDENTS is one zoo name or several, comma-separated: one process trains each
in turn (one TensorFlow start and one cluster for all) and writes its weights
under `<student>/`. A zoo student (BatchNorm statistics over groups of GROUP
images, 0: the global batch) is distilled from a BatchNorm teacher (resnet8,
inference mode) with the CIFAR KD recipe's objective (CE 0.1, KD 0.9 at T=4)
and optimizer (PyTorch's SGD: 0.05, momentum 0.9, coupled weight decay 5e-4),
on 8x8 images in global batches of 8. With TF_CONFIG set and
--strategy=multiworker each process is one worker. With --backend=jax the job
trains twice from the same weights, on one host device and under
`keras.distribution.DataParallel` over two, and writes both (`single_*`,
`data_parallel_*`).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SHAPE = (8, 8, 3)
NUM_CLASSES = 10
GLOBAL_BATCH = 8
STEPS = 5


def images_and_labels():
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.normal(size=(GLOBAL_BATCH * STEPS, *IMAGE_SHAPE)).astype("float32")
    return images, rng.integers(0, NUM_CLASSES, size=GLOBAL_BATCH * STEPS)


def build(student_name, group):
    """The teacher and the student, initialised from seed 0."""
    import keras

    import keras_cskd

    keras.utils.set_random_seed(0)
    teacher = keras_cskd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    student = keras_cskd.models.get(
        student_name, NUM_CLASSES, IMAGE_SHAPE, batch_norm_group=group or None
    )
    return teacher, student


def compiled(teacher, student):
    import keras_cskd

    distiller = keras_cskd.Distiller(
        teacher,
        student,
        keras_cskd.losses.KD(temperature=4.0),
        ce_weight=0.1,
        distillation_loss_weight=0.9,
    )
    distiller.compile(
        keras_cskd.optimizers.TorchSGD(0.05, momentum=0.9, weight_decay=5e-4)
    )
    return distiller


def student_weights(student):
    """Every weight, moving statistics included, by name."""
    import keras

    return {
        f"{index}_{w.path}": keras.ops.convert_to_numpy(w)
        for index, w in enumerate(student.weights)
    }


def train(student_name, group, strategy):
    """Five steps under a `tf.distribute` strategy; returns the student's weights."""
    import tensorflow as tf

    images, labels = images_and_labels()
    with strategy.scope():
        teacher, student = build(student_name, group)
        distiller = compiled(teacher, student)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    distiller.fit(dataset.with_options(options), epochs=1, verbose=0)
    return student_weights(student)


def train_jax(student_name, group):
    """One host device, then DataParallel over two, from the same weights."""
    import keras

    images, labels = images_and_labels()
    initial = None
    results = {}
    for run in ("single", "data_parallel"):
        if run == "single":  # a previous student's run may have set one
            keras.distribution.set_distribution(None)
        else:
            devices = keras.distribution.list_devices("cpu")
            assert len(devices) == 2, devices
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=devices)
            )
        teacher, student = build(student_name, group)
        if initial is None:
            initial = (teacher.get_weights(), student.get_weights())
        teacher.set_weights(initial[0])
        student.set_weights(initial[1])
        distiller = compiled(teacher, student)
        distiller.fit(images, labels, batch_size=GLOBAL_BATCH, shuffle=False, verbose=0)
        results.update({f"{run}_{k}": v for k, v in student_weights(student).items()})
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("students", help="zoo names, comma-separated")
    parser.add_argument("group", type=int)
    parser.add_argument("--strategy", default="none")
    parser.add_argument("--backend", default="tensorflow")
    args = parser.parse_args()
    import numpy as np

    students = args.students.split(",")
    results = {}
    if args.backend == "jax":
        import backend_run  # beside this file

        os.environ.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        backend_run.add_xla_flag(backend_run.FAST_COMPILE)  # compiling is most
        for student in students:
            weights = train_jax(student, args.group)
            results.update({f"{student}/{k}": v for k, v in weights.items()})
        np.savez(args.out, **results)
        return
    from keras_cskd import distribute

    strategy = distribute.get_strategy(args.strategy)  # one per process
    for student in students:
        weights = train(student, args.group, strategy)
        results.update({f"{student}/{k}": v for k, v in weights.items()})
    if distribute.is_chief():
        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
