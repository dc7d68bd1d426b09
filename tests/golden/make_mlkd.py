"""Makes the golden fixture of MLKD and MLKD+LS from their PyTorch code.

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_mlkd.py --source=../shared/reference/peer

`--source` holds verbatim copies of Jin-Ying/Multi-Level-Logit-Distillation @
5ee473f's `mdistiller/distillers/KD_ours.py` and `loss.py` (as
`mlkd_KD_ours.py`, `mlkd_loss.py`), sunshangquan/logit-standardization-KD @
f6e5aa5's `mdistiller/distillers/MLKD.py` (`lskd_MLKD.py`), and mdistiller @
a08d46f's `models/cifar/resnet.py` (`mdistiller_cifar_resnet.py`). Their code
is imported from there, never copied; only the numbers it produces are
committed, in `mlkd.npz` next to this script:

- `case<i>_t_weak`, `_s_weak`, `_t_strong`, `_s_strong`, `_labels`: float32
  logits of four shapes (NumPy seed 20230618).
- `<method>_case<i>_<term>` for `mlkd` (`KD_ours`: T 4, CE 0.1, KD 0.9,
  mlkd_engine_cfg.py) and `mlkd_ls` (`MLKD` with `EXPERIMENT.LOGIT_STAND` and
  `tools/train.py --logit-stand --base-temp 2 --kd-weight 9`: T 2, KD 9, CE
  0.1): `forward_train`'s terms `loss_ce`, `loss_kd`, `loss_cc`, `loss_bc`,
  their `total` (as `AugTrainer` sums them) and the total's gradient with
  respect to both views' student logits (`grad_s_weak`, `grad_s_strong`).
- `constant_*`: `mlkd_ls` on case 1 with a constant weak teacher row and a
  constant strong student row (standard deviation 0).
- `mlkd/step<n>/<name>`: three `torch.optim.SGD(momentum=0.9,
  weight_decay=5e-4)` steps of mdistiller's resnet8 (10 classes) under
  `KD_ours.forward_train` and `AugTrainer`'s sum, one step per epoch with the
  rate 0.1 x0.1 after epochs 1 and 2, from `sgd_steps.npz`'s initial weights,
  two-view batch and teacher logits (so `test_reference_training` ports them).
"""

import argparse
import hashlib
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from make_reference_training import (  # noqa: E402
    FixedLogits,
    cfg,
    load_peer,
)

COMMITS = {"mlkd": "5ee473f", "lskd": "f6e5aa5", "mdistiller": "a08d46f"}
FILES = (
    "mlkd_KD_ours.py",
    "mlkd_loss.py",
    "lskd_MLKD.py",
    "mdistiller_cifar_resnet.py",
)
OUTPUT = Path(__file__).with_name("mlkd.npz")
STEPS = Path(__file__).with_name("sgd_steps.npz")
# (batch, classes, teacher scale, student scale): realistic, small, odd, sharp.
SHAPES = [
    (64, 100, 4.0, 2.0),
    (8, 10, 2.0, 1.0),
    (7, 5, 1.0, 3.0),
    (32, 100, 12.0, 2.0),
]
SETTINGS = {
    "mlkd": dict(TEMPERATURE=4.0, CE_WEIGHT=0.1, KD_WEIGHT=0.9, LOGIT_STAND=False),
    "mlkd_ls": dict(TEMPERATURE=2.0, CE_WEIGHT=0.1, KD_WEIGHT=9.0, LOGIT_STAND=True),
}


def load_modules(source):
    """`{"mlkd": KD_ours, "mlkd_ls": MLKD}`, their imports stubbed: `turtle`
    and `termios` (imported, unused) and the package's `.loss`."""
    for unused in ("turtle", "termios"):
        sys.modules.setdefault(unused, types.SimpleNamespace(st=None, CEOL=None))
    sys.modules["peer.loss"] = load_peer(source, "mlkd_loss.py")
    return {
        "mlkd": load_peer(source, "mlkd_KD_ours.py").KD_ours,
        "mlkd_ls": load_peer(source, "lskd_MLKD.py").MLKD,
    }


def reference_cfg(method):
    settings = SETTINGS[method]
    return types.SimpleNamespace(
        KD=types.SimpleNamespace(
            TEMPERATURE=settings["TEMPERATURE"],
            LOSS=types.SimpleNamespace(
                CE_WEIGHT=settings["CE_WEIGHT"], KD_WEIGHT=settings["KD_WEIGHT"]
            ),
        ),
        EXPERIMENT=types.SimpleNamespace(LOGIT_STAND=settings["LOGIT_STAND"]),
    )


def reference_terms(distiller_class, method, logits, labels):
    """`forward_train`'s terms, their total and its gradients."""
    t_weak, s_weak, t_strong, s_strong = (torch.tensor(z) for z in logits)
    s_weak.requires_grad_(True)
    s_strong.requires_grad_(True)
    weak, strong = torch.zeros(1), torch.zeros(1)
    distiller = distiller_class(
        FixedLogits([(weak, s_weak), (strong, s_strong)]),
        FixedLogits([(weak, t_weak), (strong, t_strong)]),
        reference_cfg(method),
    )
    _, terms = distiller.forward_train(weak, strong, torch.tensor(labels), epoch=1)
    total = sum(term.mean() for term in terms.values())  # AugTrainer.train_iter
    total.backward()
    out = {key: np.float64(term.item()) for key, term in terms.items()}
    out["total"] = np.float64(total.item())
    out["grad_s_weak"] = s_weak.grad.numpy().copy()
    out["grad_s_strong"] = s_strong.grad.numpy().copy()
    return out


def loss_cases(classes):
    rng = np.random.default_rng(20230618)
    out = {}
    for case, (batch, num_classes, t_scale, s_scale) in enumerate(SHAPES):
        logits = [
            (rng.normal(size=(batch, num_classes)) * scale).astype(np.float32)
            for scale in (t_scale, s_scale, t_scale, s_scale)
        ]
        labels = rng.integers(0, num_classes, size=batch)
        for key, value in zip(
            ("t_weak", "s_weak", "t_strong", "s_strong"), logits, strict=True
        ):
            out[f"case{case}_{key}"] = value
        out[f"case{case}_labels"] = labels
        for method, distiller_class in classes.items():
            for key, value in reference_terms(
                distiller_class, method, logits, labels
            ).items():
                out[f"{method}_case{case}_{key}"] = value
    out["cases"] = np.int64(len(SHAPES))
    logits = [
        out[f"case1_{k}"].copy() for k in ("t_weak", "s_weak", "t_strong", "s_strong")
    ]
    logits[0][0], logits[3][1] = 3.0, -1.0  # a constant teacher row, a student row
    for key, value in zip(
        ("t_weak", "s_weak", "t_strong", "s_strong"), logits, strict=True
    ):
        out[f"constant_{key}"] = value
    for key, value in reference_terms(
        classes["mlkd_ls"], "mlkd_ls", logits, out["case1_labels"]
    ).items():
        out[f"constant_{key}"] = value
    return out


def sgd_steps(source, distiller_class):
    """Three epochs of one step each under MLKD's training step."""
    resnet = load_peer(source, "mdistiller_cifar_resnet.py")
    with np.load(STEPS) as steps:
        images = steps["images"].transpose(0, 1, 4, 2, 3)  # back to NCHW
        teacher_logits, labels = steps["teacher_logits"], steps["labels"]
        initial = {
            k[len("initial/") :]: torch.tensor(v)
            for k, v in steps.items()
            if k.startswith("initial/")
        }
    student = resnet.resnet8(num_classes=teacher_logits.shape[-1])
    student.load_state_dict(initial)
    student.train()
    weak, strong = (torch.tensor(np.ascontiguousarray(x)) for x in images)
    teacher = FixedLogits(
        [
            (weak, torch.tensor(teacher_logits[0])),
            (strong, torch.tensor(teacher_logits[1])),
        ]
    )
    distiller = distiller_class(student, teacher, reference_cfg("mlkd"))
    optimizer = torch.optim.SGD(
        student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    solver = cfg(SOLVER=dict(LR=0.1, LR_DECAY_STAGES=[1, 2], LR_DECAY_RATE=0.1))
    utils = load_peer(source, "lud_engine_utils.py")
    out = {}
    for epoch in (1, 2, 3):
        utils.adjust_learning_rate(epoch, solver, optimizer)
        optimizer.zero_grad()
        _, terms = distiller.forward_train(
            weak, strong, torch.tensor(labels), epoch=epoch
        )
        sum(term.mean() for term in terms.values()).backward()
        optimizer.step()
        for key, value in student.state_dict().items():
            out[f"mlkd/step{epoch}/{key}"] = value.detach().numpy().copy()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--output", default=OUTPUT, type=Path)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    classes = load_modules(args.source)
    out = {**loss_cases(classes), **sgd_steps(args.source, classes["mlkd"])}
    out["torch_version"] = np.array(torch.__version__)
    for name, commit in COMMITS.items():
        out[f"{name}_commit"] = np.array(commit)
    for name in (*FILES, "lud_engine_utils.py"):
        digest = hashlib.sha256((args.source / name).read_bytes()).hexdigest()
        out[f"sha256_{name}"] = np.array(digest)
    np.savez_compressed(args.output, **out)
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
