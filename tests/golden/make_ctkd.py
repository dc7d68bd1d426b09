"""Makes the golden fixture of CTKD's loss and temperature gradient from its code.

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_ctkd.py --source=../shared/reference/peer

`--source` holds verbatim copies of zhengli97/CTKD @ 7d52522's
`models/temp_global.py`, `distiller_zoo/KD.py` and `train_student.py` (as
`ctkd_temp_global.py`, `ctkd_distiller_KD.py`, `ctkd_train_student.py`). Their
code is imported from there (the training script's imports stubbed), never
copied; only the numbers it produces are committed, in `ctkd.npz`:

- `curriculum`: `CosineDecay(max_value=0, min_value=-1, num_loops=10)
  .get_value(epoch)` for the epochs 1 to 240 (`run_cifar_distill.sh`'s
  `--decay_max 0 --decay_min -1 --decay_loops 10`, `train_student.py`'s loop).
- `case<i>_teacher`, `_student`, `_labels`: float32 logits and labels.
- `case<i>_e<epoch>_w<k>_*`: one step of `helper/loops.py`'s `train_distill`
  with `Global_T` (its `global_T` set to `LOGITS[k]`), `lambda_` the
  curriculum's value at `epoch`, `temp = t_start + t_end * sigmoid(...)` (1
  and 20, the defaults) and `DistillKL`: `loss_div`, the total
  `0.1 * CE + 0.9 * loss_div` (`-r 0.1 -a 0.9 -b 0`), the temperature, the
  gradient of the total with respect to the student logits and to `global_T`
  (after the reversal).

The logits are float32 from NumPy seed 20240601; the reference runs on them in
float64 (`Global_T().double()`), so that the fixture holds the exact values:
the temperature's gradient is a difference of terms of similar size, whose
float32 rounding (in PyTorch's as in ours) reaches 2e-4 of it.
"""

import argparse
import hashlib
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from make_reference_training import load_peer  # noqa: E402

COMMIT = "7d52522"
FILES = ("ctkd_temp_global.py", "ctkd_distiller_KD.py", "ctkd_train_student.py")
OUTPUT = Path(__file__).with_name("ctkd.npz")
# (batch, classes, teacher scale, student scale).
SHAPES = [(16, 100, 4.0, 2.0), (8, 10, 2.0, 1.0), (7, 5, 1.0, 3.0)]
EPOCHS = (1, 4, 10, 30)
LOGITS = (1.0, -0.7)  # global_T's initial value, and another
T_START, T_END = 1.0, 20.0
GAMMA, ALPHA = 0.1, 0.9
CURRICULUM = {"max_value": 0.0, "min_value": -1.0, "num_loops": 10}
# What train_student.py imports besides torch: stubbed, unused here.
STUBBED = (
    "crd",
    "crd.criterion",
    "dataset",
    "dataset.cifar100",
    "dataset.imagenet",
    "distiller_zoo",
    "helper",
    "helper.loops",
    "helper.util",
    "models",
    "models.temp_global",
    "models.util",
)


def load_training_script(source):
    for name in STUBBED:
        stub = types.ModuleType(name)
        stub.__path__ = []
        stub.__getattr__ = lambda attribute: None
        sys.modules.setdefault(name, stub)
    return load_peer(source, "ctkd_train_student.py")


def reference_step(modules, teacher, student, labels, lambda_, logit, dtype):
    """`(loss_div, total, temp, student grad, global_T grad)` of one step."""
    temp_global, distiller_kd = modules
    mlp = temp_global.Global_T().to(dtype)
    with torch.no_grad():
        mlp.global_T.fill_(logit)
    logit_s = torch.tensor(student, dtype=dtype, requires_grad=True)
    logit_t = torch.tensor(teacher, dtype=dtype)
    temp = mlp(logit_t, logit_s, lambda_)
    temp = T_START + T_END * torch.sigmoid(temp)
    loss_div = distiller_kd.DistillKL()(logit_s, logit_t, temp)
    loss_cls = F.cross_entropy(logit_s, torch.tensor(labels))
    total = GAMMA * loss_cls + ALPHA * loss_div
    total.backward()
    return (
        np.float64(loss_div.item()),
        np.float64(total.item()),
        np.float64(temp.item()),
        logit_s.grad.numpy().copy(),
        np.float64(mlp.global_T.grad.item()),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--output", default=OUTPUT, type=Path)
    args = parser.parse_args()
    torch.Tensor.cuda = lambda self, *a, **k: self  # DistillKL calls .cuda()
    modules = [load_peer(args.source, name) for name in FILES[:2]]
    decay = load_training_script(args.source).CosineDecay(**CURRICULUM)
    out = {"curriculum": np.array([decay.get_value(e) for e in range(1, 241)])}
    rng = np.random.default_rng(20240601)
    for case, (batch, classes, t_scale, s_scale) in enumerate(SHAPES):
        teacher = (rng.normal(size=(batch, classes)) * t_scale).astype(np.float32)
        student = (rng.normal(size=(batch, classes)) * s_scale).astype(np.float32)
        labels = rng.integers(0, classes, size=batch)
        out.update({f"case{case}_teacher": teacher, f"case{case}_student": student})
        out[f"case{case}_labels"] = labels
        for epoch in EPOCHS:
            for k, logit in enumerate(LOGITS):
                lambda_ = decay.get_value(epoch)
                values = reference_step(
                    modules, teacher, student, labels, lambda_, logit, torch.float64
                )
                prefix = f"case{case}_e{epoch}_w{k}_"
                out[prefix + "logit_grad_float32"] = reference_step(
                    modules, teacher, student, labels, lambda_, logit, torch.float32
                )[-1]
                for name, value in zip(
                    ("loss", "total", "temperature", "student_grad", "logit_grad"),
                    values,
                    strict=True,
                ):
                    out[prefix + name] = value
    out["cases"] = np.int64(len(SHAPES))
    out["epochs"] = np.array(EPOCHS)
    out["logits"] = np.array(LOGITS)
    out["torch_version"] = np.array(torch.__version__)
    out["commit"] = np.array(COMMIT)
    for name in FILES:
        digest = hashlib.sha256((args.source / name).read_bytes()).hexdigest()
        out[f"sha256_{name}"] = np.array(digest)
    np.savez_compressed(args.output, **out)
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
