"""Makes the golden fixtures of the reference training step from its PyTorch code.

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_reference_training.py \
        --peer_dir=../shared/reference/peer --output_dir=tests/golden

`--peer_dir` holds verbatim copies of the reference sources (their commits are
recorded in each fixture): mdistiller @ a08d46f (`mdistiller_KD.py`,
`mdistiller_DKD.py`, `mdistiller_cifar_resnet.py`) and llieeai/lud @ 2704bb2
(`lud_CSKD.py`, `lud_engine_utils.py`). Their code is imported from there, never
copied; only the numbers it produces are committed:

- `cskd_objective.npz`: `CSKD.forward_train`'s four terms (CE, CSKD, class-Gram,
  batch-Gram) on fixed weak/strong logits, and their gradient.
- `lr_schedule.npz`: `adjust_learning_rate` at the first step of epochs 1-480.
- `sgd_steps.npz`: three steps of `torch.optim.SGD(momentum=0.9,
  weight_decay=5e-4)` on mdistiller's resnet8 (10 classes), one epoch per step
  with the rate decaying after epochs 1 and 2, for KD, CSKD+CSWT, DKD and the
  two-view CSKD objective, from fixed initial weights, batch and teacher logits.
"""

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

COMMITS = {"mdistiller": "a08d46f", "lud": "2704bb2"}


def load_peer(peer_dir, filename):
    """Imports a reference file as a module of a stub package `peer` whose
    `_base.Distiller` keeps the student and teacher (as mdistiller's does)."""
    if "peer" not in sys.modules:
        package = types.ModuleType("peer")
        package.__path__ = []
        base = types.ModuleType("peer._base")

        class Distiller(nn.Module):
            def __init__(self, student, teacher):
                super().__init__()
                self.student, self.teacher = student, teacher

        base.Distiller = Distiller
        sys.modules.update({"peer": package, "peer._base": base})
        sys.modules.setdefault("tqdm", types.SimpleNamespace(tqdm=None))
    name = "peer." + Path(filename).stem
    spec = importlib.util.spec_from_file_location(name, Path(peer_dir) / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FixedLogits(nn.Module):
    """A teacher (or a student) that returns fixed logits for each known input."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = pairs  # [(input tensor, logits)]

    def forward(self, image):
        for known, logits in self.pairs:
            if image is known:
                return logits, None
        raise KeyError("unknown input")


def cfg(**sections):
    return types.SimpleNamespace(
        **{k: types.SimpleNamespace(**v) for k, v in sections.items()}
    )


CSKD_CFG = dict(
    TEMPERATURE=4.0,
    LOSS=types.SimpleNamespace(CE_WEIGHT=1.0, KD_WEIGHT=1.0),
    CSWT=types.SimpleNamespace(LOW_T=2.0, HIGH_T=6.0),
)


def objective_cases(peer_dir):
    """The four terms of `CSKD.forward_train` on several fixed logit sets."""
    module = load_peer(peer_dir, "lud_CSKD.py")
    rng = np.random.default_rng(12)
    out = {}
    # (batch, classes, teacher scale): realistic, small, odd batch, sharp teacher.
    for case, (batch, classes, scale) in enumerate(
        [(64, 100, 4.0), (8, 10, 2.0), (7, 5, 1.0), (32, 100, 12.0)]
    ):
        logits = [
            rng.normal(size=(batch, classes)).astype(np.float32) * s
            for s in (scale, 2.0, scale, 2.0)  # teacher/student, weak/strong
        ]
        labels = rng.integers(0, classes, size=batch)
        t_weak, s_weak, t_strong, s_strong = (torch.tensor(z) for z in logits)
        s_weak.requires_grad_(True)
        s_strong.requires_grad_(True)
        weak, strong = torch.zeros(1), torch.zeros(1)
        student = FixedLogits([(weak, s_weak), (strong, s_strong)])
        teacher = FixedLogits([(weak, t_weak), (strong, t_strong)])
        distiller = module.CSKD(student, teacher, cfg(CSKD=CSKD_CFG))
        _, terms = distiller.forward_train(weak, strong, torch.tensor(labels))
        total = sum(term.mean() for term in terms.values())
        total.backward()
        for key, value in zip(
            ("t_weak", "s_weak", "t_strong", "s_strong"), logits, strict=True
        ):
            out[f"case{case}_{key}"] = value
        out[f"case{case}_labels"] = labels
        for key, term in terms.items():
            out[f"case{case}_{key}"] = np.float64(term.item())
        out[f"case{case}_total"] = np.float64(total.item())
        out[f"case{case}_grad_s_weak"] = s_weak.grad.numpy()
        out[f"case{case}_grad_s_strong"] = s_strong.grad.numpy()
    out["cases"] = np.int64(case + 1)
    return out


def lr_schedule(peer_dir):
    utils = load_peer(peer_dir, "lud_engine_utils.py")
    config = cfg(
        SOLVER=dict(LR=0.025, LR_DECAY_STAGES=[150, 180, 210], LR_DECAY_RATE=0.1)
    )
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025)
    rates = []
    for epoch in range(1, 481):
        utils.adjust_learning_rate(epoch, config, optimizer)
        rates.append(optimizer.param_groups[0]["lr"])
    return {"epochs": np.arange(1, 481), "learning_rate": np.array(rates)}


def cswt_single_view(module, student, teacher, images, labels):
    """CE + CSKD(T=4) + CSKD(CSWT 2..6) on one view, with the code's own loss
    functions and its CSWT formula (`CSKD.forward_train`) for the temperatures."""
    logits_student, _ = student(images)
    with torch.no_grad():
        logits_teacher, _ = teacher(images)
    similarity = module.cosine_similarity(
        F.softmax(logits_student.detach(), dim=1), F.softmax(logits_teacher, dim=1)
    )
    low, high = similarity.min().item(), similarity.max().item()
    per_sample = (6.0 - 2.0) / (low - high) * (similarity - high) + 2.0
    return (
        F.cross_entropy(logits_student, labels)
        + module.cs_loss(logits_student, logits_teacher, 4.0)
        + module.cs_loss_mat(logits_student, logits_teacher, per_sample)
    )


def sgd_steps(peer_dir):
    """Three epochs of one step each, for each method, from the same weights."""
    resnet = load_peer(peer_dir, "mdistiller_cifar_resnet.py")
    utils = load_peer(peer_dir, "lud_engine_utils.py")
    kd = load_peer(peer_dir, "mdistiller_KD.py")
    dkd = load_peer(peer_dir, "mdistiller_DKD.py")
    cskd = load_peer(peer_dir, "lud_CSKD.py")
    rng = np.random.default_rng(3)
    batch, classes = 16, 10
    images = rng.normal(size=(2, batch, 3, 32, 32)).astype(np.float32)
    teacher_logits = (rng.normal(size=(2, batch, classes)) * 3).astype(np.float32)
    labels = rng.integers(0, classes, size=batch)
    torch.manual_seed(0)
    initial = resnet.resnet8(num_classes=classes).state_dict()
    out = {
        "images": images.transpose(0, 1, 3, 4, 2),  # NHWC
        "teacher_logits": teacher_logits,
        "labels": labels,
        **{f"initial/{k}": v.numpy() for k, v in initial.items()},
    }
    solver = dict(LR=0.1, LR_DECAY_STAGES=[1, 2], LR_DECAY_RATE=0.1)
    out["learning_rate"], out["milestones"] = np.float64(0.1), np.array([1, 2])
    for method in ("kd", "cskd_cswt", "dkd", "two_view_cskd"):
        student = resnet.resnet8(num_classes=classes)
        student.load_state_dict(initial)
        student.train()
        weak, strong = (torch.tensor(x) for x in images)
        teacher = FixedLogits(
            [
                (weak, torch.tensor(teacher_logits[0])),
                (strong, torch.tensor(teacher_logits[1])),
            ]
        )
        target = torch.tensor(labels)
        optimizer = torch.optim.SGD(
            student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4
        )
        for epoch in (1, 2, 3):
            utils.adjust_learning_rate(epoch, cfg(SOLVER=solver), optimizer)
            optimizer.zero_grad()
            if method == "kd":
                config = cfg(
                    KD=dict(
                        TEMPERATURE=4.0,
                        LOSS=types.SimpleNamespace(CE_WEIGHT=0.1, KD_WEIGHT=0.9),
                    )
                )
                _, terms = kd.KD(student, teacher, config).forward_train(weak, target)
                loss = sum(terms.values())
            elif method == "dkd":
                config = cfg(
                    DKD=dict(CE_WEIGHT=1.0, ALPHA=1.0, BETA=8.0, T=4.0, WARMUP=20)
                )
                _, terms = dkd.DKD(student, teacher, config).forward_train(
                    weak, target, epoch=epoch
                )
                loss = sum(terms.values())
            elif method == "cskd_cswt":
                loss = cswt_single_view(cskd, student, teacher, weak, target)
            else:
                distiller = cskd.CSKD(student, teacher, cfg(CSKD=CSKD_CFG))
                _, terms = distiller.forward_train(weak, strong, target, epoch=epoch)
                loss = sum(term.mean() for term in terms.values())  # AugTrainer
            loss.backward()
            optimizer.step()
            for key, value in student.state_dict().items():
                out[f"{method}/step{epoch}/{key}"] = value.detach().numpy().copy()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer_dir", required=True, help="the reference sources")
    parser.add_argument("--output_dir", default=str(Path(__file__).parent))
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    provenance = {
        "torch_version": np.array(torch.__version__),
        "mdistiller_commit": np.array(COMMITS["mdistiller"]),
        "lud_commit": np.array(COMMITS["lud"]),
    }
    for name, make in (
        ("cskd_objective", objective_cases),
        ("lr_schedule", lr_schedule),
        ("sgd_steps", sgd_steps),
    ):
        path = Path(args.output_dir) / f"{name}.npz"
        np.savez_compressed(path, **make(args.peer_dir), **provenance)
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
