"""KD under DOT of backend_run.py's student on one backend; run by test_dot.py.

    python tests/dot_backend_run.py --backend=jax --inputs=in.npz --out=out.npz

The same teacher, student, initial weights and batches as `backend_run.py`
(whose helpers this imports), KD (CE 0.1, KD 0.9) and `optimizers.DOT` with
weight decay for two epochs of three batches; writes the student's final
weights, the optimizer's two momentum buffers and the history.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import backend_run  # noqa: E402


def train(inputs):

    import keras_cskd

    teacher, student = backend_run.models_from(inputs)
    distiller = keras_cskd.Distiller(
        teacher,
        student,
        keras_cskd.losses.KD(4.0),
        ce_weight=0.1,
        distillation_loss_weight=0.9,
    )
    optimizer = keras_cskd.optimizers.DOT(0.1, momentum=0.9, weight_decay=5e-3)
    distiller.compile(optimizer=optimizer)
    history = distiller.fit(
        inputs["x"],
        inputs["y"],
        batch_size=backend_run.BATCH_SIZE,
        epochs=backend_run.EPOCHS,
        shuffle=False,
        verbose=0,
    )
    arrays = backend_run.trained_arrays(student, history)
    buffers = optimizer.task_momentums + optimizer.distillation_momentums
    arrays.update(backend_run.weight_arrays("buffer", [np.asarray(b) for b in buffers]))
    return arrays


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data_parallel", action="store_true")
    args = parser.parse_args()
    backend_run.set_backend(args.backend, args.data_parallel)
    if args.data_parallel:
        backend_run.distribute_over_host_devices()
    with np.load(args.inputs) as inputs:
        arrays = train(dict(inputs))
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
