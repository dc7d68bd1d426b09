"""backend_run.py's distillation with CTKD in place of CSKD; run by test_ctkd.py.

    python tests/ctkd_backend_run.py BACKEND INPUTS.npz OUT.npz

Writes what `backend_run.train` writes, plus the temperature's logit.
"""

import sys

import backend_run
import numpy as np


def main(backend, inputs_path, out):
    backend_run.set_backend(backend, data_parallel=False)
    from keras_cskd import losses

    loss = losses.CTKD(lambda_start=-1.0)  # reversed at full weight from step 1
    backend_run.build_loss = lambda name: loss
    with np.load(inputs_path) as inputs:
        arrays = backend_run.train(dict(inputs), "ctkd")
    arrays["temperature_logit"] = np.asarray(loss.layers[0].logit.numpy())
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:4])
