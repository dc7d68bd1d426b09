"""Makes the golden fixture of LS-KD's logit standardisation from its PyTorch code.

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_lskd.py --source=../shared/reference/peer

`--source` holds verbatim copies of sunshangquan/logit-standardization-KD @
f6e5aa5's `mdistiller/distillers/KD.py` and `DKD.py` (as `lskd_KD.py` and
`lskd_DKD.py`). Their code is imported from there, never copied; only the
numbers it produces are committed, in `lskd.npz` next to this script:

- `case<i>_teacher`, `_student`, `_labels`: the inputs of both losses.
- `kd_case<i>_*`: `KD.forward_train` with `EXPERIMENT.LOGIT_STAND` on and the
  settings `tools/train.py --logit-stand --base-temp 2 --kd-weight 9` gives
  (T 2, KD weight 9, CE weight 0.1): its `loss_kd` and `loss_ce`, and the
  gradient of `loss_kd` with respect to the student logits.
- `dkd_case<i>_*`: `DKD.forward_train` likewise at the resnet32x4 -> resnet8x4
  settings (T 2, alpha 1 x 9, beta 8 x 9, warm-up 20, CE weight 1) at epoch 5,
  in its warm-up (factor 5 / 20): `loss_kd`, `loss_ce` and the gradient.
- `constant_*`: both losses on case 1 with its first teacher row and its
  second student row constant (standard deviation 0): the value and the
  gradient. Both are finite: the row standardises to 0 (`0 / 1e-7`),
  `torch.std`'s backward is 0 at a zero std, and the gradient through the
  centring is 1e7 times the softmax gradient there.

The logits are float32 from NumPy seed 20240301 (four shapes and teacher
scales), as the reference runs in training.
"""

import argparse
import hashlib
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from make_reference_training import FixedLogits, load_peer  # noqa: E402

COMMIT = "f6e5aa5"
FILES = ("lskd_KD.py", "lskd_DKD.py")
OUTPUT = Path(__file__).with_name("lskd.npz")
# (batch, classes, teacher scale, student scale): realistic, small, odd, sharp.
SHAPES = [
    (16, 100, 4.0, 2.0),
    (8, 10, 2.0, 1.0),
    (7, 5, 1.0, 3.0),
    (32, 100, 12.0, 2.0),
]
KD_SETTINGS = {"TEMPERATURE": 2.0, "CE_WEIGHT": 0.1, "KD_WEIGHT": 9.0}
DKD_SETTINGS = {"T": 2.0, "ALPHA": 9.0, "BETA": 72.0, "CE_WEIGHT": 1.0, "WARMUP": 20}
EPOCH = 5


def reference_cfg():
    """The fields of `engine/cfg.py`'s CFG that `KD` and `DKD` read, with
    `tools/train.py --logit-stand`'s values."""
    kd = types.SimpleNamespace(
        TEMPERATURE=KD_SETTINGS["TEMPERATURE"],
        LOSS=types.SimpleNamespace(
            CE_WEIGHT=KD_SETTINGS["CE_WEIGHT"], KD_WEIGHT=KD_SETTINGS["KD_WEIGHT"]
        ),
    )
    return types.SimpleNamespace(
        KD=kd,
        DKD=types.SimpleNamespace(**DKD_SETTINGS),
        EXPERIMENT=types.SimpleNamespace(LOGIT_STAND=True),
    )


def reference_losses(modules, teacher_logits, student_logits, labels):
    """`{"kd": (loss_kd, loss_ce, grad), "dkd": ...}` from each `forward_train`."""
    out = {}
    for name, distiller_class in (("kd", modules[0].KD), ("dkd", modules[1].DKD)):
        student = torch.tensor(student_logits, requires_grad=True)
        image = torch.zeros(1)
        distiller = distiller_class(
            FixedLogits([(image, student)]),
            FixedLogits([(image, torch.tensor(teacher_logits))]),
            reference_cfg(),
        )
        _, terms = distiller.forward_train(image, torch.tensor(labels), epoch=EPOCH)
        terms["loss_kd"].backward()
        out[name] = (
            np.float64(terms["loss_kd"].item()),
            np.float64(terms["loss_ce"].item()),
            student.grad.numpy().copy(),
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--output", default=OUTPUT, type=Path)
    args = parser.parse_args()
    modules = [load_peer(args.source, name) for name in FILES]
    rng = np.random.default_rng(20240301)
    out = {}
    for case, (batch, classes, t_scale, s_scale) in enumerate(SHAPES):
        teacher = (rng.normal(size=(batch, classes)) * t_scale).astype(np.float32)
        student = (rng.normal(size=(batch, classes)) * s_scale + 1.0).astype(np.float32)
        labels = rng.integers(0, classes, size=batch)
        prefix = f"case{case}_"
        out.update({prefix + "teacher": teacher, prefix + "student": student})
        out[prefix + "labels"] = labels
        for name, (loss, ce, grad) in reference_losses(
            modules, teacher, student, labels
        ).items():
            prefix = f"{name}_case{case}_"
            out.update(
                {prefix + "loss": loss, prefix + "ce": ce, prefix + "grad": grad}
            )
    out["cases"] = np.int64(len(SHAPES))
    teacher, student = out["case1_teacher"].copy(), out["case1_student"].copy()
    teacher[0], student[1] = 3.0, -1.0  # a constant teacher row, a student row
    for name, (loss, _, grad) in reference_losses(
        modules, teacher, student, out["case1_labels"]
    ).items():
        out.update({f"constant_{name}_loss": loss, f"constant_{name}_grad": grad})
    out.update({"constant_teacher": teacher, "constant_student": student})
    out["epoch"] = np.int64(EPOCH)
    out["torch_version"] = np.array(torch.__version__)
    out["commit"] = np.array(COMMIT)
    for name in FILES:
        digest = hashlib.sha256((args.source / name).read_bytes()).hexdigest()
        out[f"sha256_{name}"] = np.array(digest)
    np.savez_compressed(args.output, **out)
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
