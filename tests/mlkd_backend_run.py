"""Distils with MLKD on two views on one backend; run by test_mlkd.py.

    python tests/mlkd_backend_run.py --backend=jax --inputs=in.npz --out=out.npz

The teacher, student and initial weights of `backend_run.py` (`make_inputs`),
two views of every batch (the images and their mirror image), the `mlkd`
recipe's weights (CE 0.1 on each view, MLKD at 0.9) under SGD (0.01, momentum
0.9) for two epochs of three batches of 16. Writes the student's final
weights, the history, and MLKD's value and gradient on `mlkd.npz`'s case 1
(computed with the backend's own autodiff).
"""

import argparse
from pathlib import Path

import backend_run
import numpy as np

GOLDEN = Path(__file__).parent / "golden" / "mlkd.npz"


def loss_and_gradient():
    """The reference's total (CE 0.1 on each view + 0.9 MLKD) and its gradient
    w.r.t. both views' student logits on the golden case 1, through the
    backend's autodiff."""
    import keras
    from keras import ops

    from keras_cskd import losses
    from keras_cskd.distiller import cross_entropy

    with np.load(GOLDEN) as golden:
        keys = ("t_weak", "t_strong", "s_weak", "s_strong", "labels")
        *views, labels = [golden[f"case1_{k}"] for k in keys]
    teacher, student = views[:2], [ops.convert_to_tensor(v) for v in views[2:]]
    loss = losses.MLKD()

    def value(weak, strong):
        ce = sum(ops.mean(cross_entropy(labels, view)) for view in (weak, strong))
        return 0.1 * ce + 0.9 * loss.compute_loss(teacher, (weak, strong))

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        total, gradients = jax.value_and_grad(value, argnums=(0, 1))(*student)
    elif backend == "tensorflow":
        import tensorflow as tf

        student = [tf.Variable(v) for v in student]
        with tf.GradientTape() as tape:
            total = value(*student)
        gradients = tape.gradient(total, student)
    else:
        raise ValueError(f"No autodiff here for {backend}.")
    return np.float64(total), [np.asarray(g) for g in gradients]


def train(inputs):
    import keras

    import keras_cskd

    teacher, student = backend_run.models_from(inputs)
    distiller = keras_cskd.Distiller(
        teacher,
        student,
        keras_cskd.losses.MLKD(),
        ce_weight=0.1,
        distillation_loss_weight=0.9,
        view_weights=(1.0, 1.0),
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    x = inputs["x"]
    history = distiller.fit(
        (x, x[:, :, ::-1]),
        inputs["y"],
        batch_size=backend_run.BATCH_SIZE,
        epochs=backend_run.EPOCHS,
        shuffle=False,
        verbose=0,
    )
    return backend_run.trained_arrays(student, history)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    backend_run.set_backend(args.backend, data_parallel=False)
    with np.load(args.inputs) as inputs:
        arrays = train(dict(inputs))
    total, (grad_weak, grad_strong) = loss_and_gradient()
    arrays.update(loss=total, grad_s_weak=grad_weak, grad_s_strong=grad_strong)
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
