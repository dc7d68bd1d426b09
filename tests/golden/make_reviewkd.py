"""Makes the golden fixture of mdistiller's ReviewKD from its PyTorch code.

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_reviewkd.py --source=../shared/reference/peer

`--source` holds verbatim copies of megvii-research/mdistiller @ a08d46f's
`distillers/ReviewKD.py`, `_base.py`, `engine/cfg.py` and `models/cifar/resnet.py`
(`mdistiller_<name>.py`, `mdistiller_cifar_resnet.py`) and llieeai/lud @ 2704bb2's
`engine/utils.py` (`adjust_learning_rate`, as mdistiller's). Their code is
imported from there (yacs's `CfgNode` stubbed), never copied; only the numbers
are committed, in `reviewkd.npz` next to this script (NHWC, Keras kernel layouts
are the test's business: torch layouts here):

- `<case>/...`, for the cases `equal` (teacher and student stages of one size)
  and `resize` (student stages half the teacher's and sizes that resize by
  non-integer factors and pool with overlapping windows): fixed float32 features
  (`teacher_feats<i>` = the teacher's `preact_feats[1:]`, `student_feats<i>` =
  the student's `feats[1:]`, `*_pooled`), the `REVIEWKD.*` settings, every ABF
  tensor (`abfs.<i>.<torch name>`, random BatchNorm affine weights) and
  `forward_train`'s `loss_kd` at epoch `epoch` (cfg.py's weight 1 and warm-up
  20) with its gradient with respect to the student features.
- `extra_parameters/<pair>`: `get_extra_parameters()` with cfg.py's defaults
  (`resnet32x4_resnet8x4`) and for both cases.
- `sgd/...`: three SGD steps (momentum 0.9, weight decay 5e-4, rate 0.1 x0.1
  after epochs 1 and 2, one step per epoch, epochs 1-3 in the warm-up) of
  mdistiller's trainer step (`zero_grad`, `forward_train`, the sum of the
  losses, `backward`, `step`) on a resnet8 student (10 classes) and its ABFs
  against a resnet8 teacher in eval mode, REVIEWKD_WEIGHT 5 (reviewkd.yaml).
  The initial weights of all three are `make_imagenet_zoo.random_state_dict`
  (seeds `SEEDS`) in the stored key order (`<part>/keys`, `<part>/shapes`), so
  the test regenerates them; stored: the images (NHWC) and labels, each step's
  loss terms and the norm of each tensor's change since the start
  (`step<k>/<part>.<key>/change_norm`), and every student and ABF tensor after
  step 3 (`step3/<part>.<key>`, BatchNorm buffers included).
- the torch version, the commits and the SHA-256 of each source.
"""

import argparse
import copy
import hashlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

COMMITS = {"mdistiller": "a08d46f", "lud": "2704bb2"}
FILES = (
    "mdistiller__base.py",
    "mdistiller_engine_cfg.py",
    "mdistiller_ReviewKD.py",
    "mdistiller_cifar_resnet.py",
    "lud_engine_utils.py",
)
OUTPUT = Path(__file__).with_name("reviewkd.npz")
SEEDS = {"student": 20211, "abfs": 20212, "teacher": 20213}
BATCH = 4
# case: (teacher (size, channels) of preact_feats[1:] and pooled channels,
#        student's likewise, epoch)
CASES = {
    "equal": (((8, 8), (4, 16), (2, 32), 32), ((8, 4), (4, 8), (2, 16), 16), 5),
    "resize": (((12, 6), (6, 10), (4, 12), 12), ((6, 4), (3, 6), (2, 8), 8), 30),
}


class CfgNode(dict):
    """yacs's `CfgNode`, as far as cfg.py uses it."""

    __getattr__ = dict.__getitem__

    def __setattr__(self, key, value):
        self[key] = value


def load(source, filename, name):
    """Imports `source/filename` as module `peer.<name>` of a stub package."""
    if "peer" not in sys.modules:
        package = types.ModuleType("peer")
        package.__path__ = []
        sys.modules["peer"] = package
        sys.modules["peer.utils"] = types.SimpleNamespace(log_msg=None)
        yacs = types.SimpleNamespace(config=types.SimpleNamespace(CfgNode=CfgNode))
        sys.modules["yacs"], sys.modules["yacs.config"] = yacs, yacs.config
        sys.modules.setdefault("tqdm", types.SimpleNamespace(tqdm=None))
    spec = importlib.util.spec_from_file_location(
        f"peer.{name}", Path(source) / filename
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"peer.{name}"] = module
    spec.loader.exec_module(module)
    return module


def nchw(array):
    return torch.tensor(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


class FixedFeatures(torch.nn.Module):
    """A stub model: zero logits and mdistiller's feature dict from NHWC
    arrays, a stem map (which ReviewKD reads but drops) before the stages."""

    def __init__(self, stages, pooled):
        super().__init__()
        stem = np.zeros_like(stages[0])
        self.feats = [nchw(f).requires_grad_(True) for f in [stem, *stages]]
        self.pooled = torch.tensor(pooled, requires_grad=True)

    def forward(self, image):
        logits = torch.zeros(image.shape[0], 10)
        feats = {"feats": self.feats, "preact_feats": self.feats}
        return logits, {**feats, "pooled_feat": self.pooled}


def settings(teacher, student):
    """`REVIEWKD.*` for these (size, channels) stages and pooled channels."""
    return {
        "IN_CHANNELS": [c for _, c in student[:-1]] + [student[-1]],
        "OUT_CHANNELS": [c for _, c in teacher[:-1]] + [teacher[-1]],
        "SHAPES": [1] + [s for s, _ in reversed(student[:-1])],
        "OUT_SHAPES": [1] + [s for s, _ in reversed(teacher[:-1])],
    }


def reviewkd_cfg(base, **overrides):
    cfg = CfgNode(REVIEWKD=CfgNode(copy.deepcopy(dict(base.REVIEWKD))))
    cfg.REVIEWKD.update(overrides)
    return cfg


def randomize_batch_norms(module, generator):
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            with torch.no_grad():
                layer.weight.uniform_(0.5, 1.5, generator=generator)
                layer.bias.uniform_(-0.5, 0.5, generator=generator)


def forward_case(module, base, name, rng):
    teacher_spec, student_spec, epoch = CASES[name]

    def arrays(spec, relu):
        maps = [rng.normal(size=(BATCH, s, s, c)) for s, c in spec[:-1]]
        maps = [np.maximum(m, 0) if relu else m for m in maps]
        pooled = np.abs(rng.normal(size=(BATCH, spec[-1])))
        return [m.astype(np.float32) for m in maps], pooled.astype(np.float32)

    teacher, student = arrays(teacher_spec, False), arrays(student_spec, True)
    config = settings(teacher_spec, student_spec)
    torch.manual_seed(1)
    distiller = module.ReviewKD(
        FixedFeatures(*student), FixedFeatures(*teacher), reviewkd_cfg(base, **config)
    )
    randomize_batch_norms(distiller.abfs, torch.Generator().manual_seed(2))
    out = {
        f"abfs.{k}": v.numpy().copy() for k, v in distiller.abfs.state_dict().items()
    }
    _, losses = distiller.forward_train(
        torch.zeros(BATCH, 3, 2, 2), torch.zeros(BATCH).long(), epoch=epoch
    )
    losses["loss_kd"].backward()
    stub = distiller.student
    for role, (maps, pooled) in (("teacher", teacher), ("student", student)):
        for i, m in enumerate(maps):
            out[f"{role}_feats{i}"] = m
        out[f"{role}_pooled"] = pooled
    for i, f in enumerate(stub.feats[1:]):
        out[f"grad_feats{i}"] = f.grad.numpy().transpose(0, 2, 3, 1)
    out["grad_pooled"] = stub.pooled.grad.numpy()
    out["loss_kd"] = np.float64(losses["loss_kd"].item())
    out["epoch"] = np.float64(epoch)
    out["extra_parameters"] = np.int64(distiller.get_extra_parameters())
    for key, value in config.items():
        out[key.lower()] = np.array(value)
    return {f"{name}/{k}": v for k, v in out.items()}


def default_extra_parameters(module, base):
    """cfg.py's resnet32x4 -> resnet8x4 ABFs, counted by mdistiller."""
    stub = FixedFeatures([np.zeros((1, 1, 1, 1), np.float32)], np.zeros((1, 1)))
    distiller = module.ReviewKD(stub, stub, reviewkd_cfg(base))
    return np.int64(distiller.get_extra_parameters())


def state(module):
    return {
        k: v.detach().numpy().copy()
        for k, v in module.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def seed_weights(module, seed):
    """Loads `random_state_dict` (make_imagenet_zoo.py) drawn in `module`'s
    key order: the test regenerates it from the stored keys and shapes."""
    keys = list(state(module))
    shapes = [tuple(module.state_dict()[k].shape) for k in keys]
    from make_imagenet_zoo import random_state_dict  # beside this script

    values = random_state_dict(keys, shapes, seed=seed)
    module.load_state_dict(
        {k: torch.tensor(v) for k, v in values.items()}, strict=False
    )
    return {
        "keys": np.array(keys),
        "shapes": np.array([",".join(map(str, s)) for s in shapes]),
    }


def sgd_steps(module, base, resnet, utils):
    """mdistiller's trainer step, three times, as described above."""
    rng = np.random.default_rng(24)
    batch, classes = 16, 10
    images = rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, classes, size=batch)
    student = resnet.resnet8(num_classes=classes)
    teacher = resnet.resnet8(num_classes=classes)
    config = settings(
        ((32, 16), (16, 32), (8, 64), 64), ((32, 16), (16, 32), (8, 64), 64)
    )
    cfg = reviewkd_cfg(base, REVIEWKD_WEIGHT=5.0, **config)
    distiller = module.ReviewKD(student, teacher, cfg)
    distiller.teacher.eval()
    distiller.student.train()
    parts = {"student": student, "abfs": distiller.abfs, "teacher": teacher}
    out = {"images": images, "labels": labels, "learning_rate": np.float64(0.1)}
    out["milestones"] = np.array([1, 2])
    for name, part in parts.items():
        out[f"{name}/seed"] = np.int64(SEEDS[name])  # the tests need no torch
        for key, value in seed_weights(part, SEEDS[name]).items():
            out[f"{name}/{key}"] = value
    for key, value in config.items():
        out[key.lower()] = np.array(value)
    initial = {name: state(part) for name, part in parts.items()}
    optimizer = torch.optim.SGD(
        distiller.get_learnable_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    solver = types.SimpleNamespace(LR=0.1, LR_DECAY_STAGES=[1, 2], LR_DECAY_RATE=0.1)
    image, target = nchw(images), torch.tensor(labels)
    for epoch in (1, 2, 3):
        utils.adjust_learning_rate(
            epoch, types.SimpleNamespace(SOLVER=solver), optimizer
        )
        optimizer.zero_grad()
        _, losses = distiller.forward_train(image, target, epoch=epoch)
        loss = sum(value.mean() for value in losses.values())
        loss.backward()
        optimizer.step()
        for key, value in losses.items():
            out[f"step{epoch}/{key}"] = np.float64(value.item())
        for name in ("student", "abfs"):
            for key, value in state(parts[name]).items():
                change = value - initial[name][key]
                out[f"step{epoch}/{name}.{key}/change_norm"] = np.float64(
                    np.linalg.norm(change.astype(np.float64))
                )
                if epoch == 3:
                    out[f"step3/{name}.{key}"] = value
    for key, value in state(teacher).items():
        assert np.array_equal(value, initial["teacher"][key]), key  # eval mode
    out["extra_parameters"] = np.int64(distiller.get_extra_parameters())
    return {f"sgd/{k}": v for k, v in out.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    source = parser.parse_args().source
    torch.use_deterministic_algorithms(True)
    sys.path.insert(0, str(Path(__file__).parent))
    load(source, "mdistiller__base.py", "_base")
    base = load(source, "mdistiller_engine_cfg.py", "cfg").CFG
    module = load(source, "mdistiller_ReviewKD.py", "ReviewKD")
    resnet = load(source, "mdistiller_cifar_resnet.py", "resnet")
    utils = load(source, "lud_engine_utils.py", "utils")
    rng = np.random.default_rng(20211203)
    out = {}
    for name in CASES:
        out.update(forward_case(module, base, name, rng))
    out["extra_parameters/resnet32x4_resnet8x4"] = default_extra_parameters(
        module, base
    )
    out.update(sgd_steps(module, base, resnet, utils))
    out["torch_version"] = np.array(torch.__version__)
    out["mdistiller_commit"] = np.array(COMMITS["mdistiller"])
    out["lud_commit"] = np.array(COMMITS["lud"])
    for filename in FILES:
        digest = hashlib.sha256((Path(source) / filename).read_bytes()).hexdigest()
        out[f"sha256/{filename}"] = np.array(digest)
    np.savez_compressed(OUTPUT, **out)
    for name in CASES:
        print(name, out[f"{name}/loss_kd"], out[f"{name}/extra_parameters"])
    print("default extra parameters", out["extra_parameters/resnet32x4_resnet8x4"])
    print("sgd losses", [out[f"sgd/step{e}/loss_kd"] for e in (1, 2, 3)])
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
