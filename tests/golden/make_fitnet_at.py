"""Makes the golden fixture of mdistiller's FitNet and AT.

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_fitnet_at.py --source=../shared/reference/peer

`--source` holds verbatim copies of megvii-research/mdistiller @ a08d46f's
`distillers/{FitNet,AT,_common,_base}.py`, `engine/cfg.py` and
`models/cifar/resnet.py` (`mdistiller_<name>.py`, `mdistiller_cifar_resnet.py`;
yacs's `CfgNode` stubbed as in make_feature_losses.py). Their code is imported
from there, never copied; only the numbers are committed, in `fitnet_at.npz`:

- `teacher_feats<i>`, `student_feats<i>` (i = 0..3), NHWC float32 post-ReLU
  features of a batch of 4 (make_feature_losses's shapes), and
  `student_large_feats1` (16x16, twice the teacher's stage 1, for AT's pooling).
- `fitnet/<case>/...` for four hint shapes, one per `ConvReg` branch (`stride2`:
  the student's map twice the teacher's height, `transposed`: half,
  `same`: equal (1x1 kernel), `kernel`: 6x6 to 4x4 (3x3 valid kernel)):
  `teacher`, `student` (the hint maps, NHWC), the `ConvReg` parameters as
  initialised with torch seed 20241203 + case index, BatchNorm weight and bias
  drawn at random (`conv.weight` OIHW or IOHW, `conv.bias`, `bn.weight`,
  `bn.bias`), `forward_train`'s `loss_kd` (cfg.py's weight 100) with the
  distiller in training mode, its gradient w.r.t. the student map (NHWC) and
  the `ConvReg` parameters, the BatchNorm running statistics after that pass,
  and `get_extra_parameters()`.
- `at/loss_kd`, `at/grad_feats<i>` (i = 1..3): AT's `forward_train` (p 2,
  weight 1000) on `feats[1:]`; `at_pooled/...` the same with the student's
  stage 1 at 16x16.
- `steps/...`: three `torch.optim.SGD(momentum=0.9, weight_decay=5e-4)` steps
  (rate 0.1, x0.1 after epochs 1 and 2, one step per epoch, as sgd_steps.npz)
  of mdistiller's resnet8 (10 classes) from `sgd_steps.npz`'s initial weights,
  first view and labels, with a resnet8 teacher (torch seed 1, inference
  mode, `teacher/<name>`): for `fitnet` (its `ConvReg` 32->32 1x1 from torch
  seed 2, `fitnet/initial/conv_reg.<name>`; trained with the student, as
  `get_learnable_parameters` lists it): every student parameter and
  buffer and the `ConvReg`'s after steps 1 and 3 (`fitnet/step<k>/<name>`).
  The distiller is built from models in inference mode, so that
  `get_feat_shapes` moves no statistics (the clean variant).
- `probe/...`: the surprise: FitNet built from models in training mode (as
  tools/train.py builds it) with `get_feat_shapes`'s `torch.randn(1, 3, 32, 32)`
  replaced by `probe/image` (NHWC): every BatchNorm running statistic of the
  student (`probe/student/<name>`) and teacher (`probe/teacher/<name>`) after.
- the torch version, the commit and the SHA-256 of each source.
"""

import argparse
import hashlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

COMMIT = "a08d46f"
FILES = (
    "mdistiller__base.py",
    "mdistiller__common.py",
    "mdistiller_engine_cfg.py",
    "mdistiller_FitNet.py",
    "mdistiller_AT.py",
    "mdistiller_cifar_resnet.py",
)
HERE = Path(__file__).parent
KEPT_STEPS = (1, 3)  # the fixture's size: step 3 depends on step 2 anyway
OUTPUT = HERE / "fitnet_at.npz"
BATCH = 4
TEACHER_SHAPES = ((8, 4), (8, 8), (6, 16), (4, 32))
STUDENT_SHAPES = ((8, 4), (8, 4), (6, 8), (4, 16))
# case: ((student H, C), (teacher H, C)) of the hint map feats[2].
FITNET_CASES = {
    "stride2": ((8, 4), (4, 8)),
    "transposed": ((4, 4), (8, 8)),
    "same": ((8, 4), (8, 16)),
    "kernel": ((6, 4), (4, 8)),
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
    spec = importlib.util.spec_from_file_location(
        f"peer.{name}", Path(source) / filename
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"peer.{name}"] = module
    spec.loader.exec_module(module)
    return module


def nchw(x):
    return torch.tensor(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(x):
    return x.detach().numpy().transpose(0, 2, 3, 1).copy()


def post_relu(rng, shapes):
    return [
        np.maximum(rng.normal(size=(BATCH, h, h, c)), 0).astype(np.float32)
        for h, c in shapes
    ]


class FixedFeatures(torch.nn.Module):
    """A stub model: zero logits and mdistiller's `feats` list (NCHW)."""

    def __init__(self, feats):
        super().__init__()
        self.feats = [nchw(f).requires_grad_(True) for f in feats]

    def forward(self, image):
        return torch.zeros(image.shape[0], 10), {"feats": self.feats}


def forward(distiller):
    _, losses = distiller.forward_train(
        torch.zeros(BATCH, 3, 2, 2), torch.zeros(BATCH).long()
    )
    return losses["loss_kd"]


def fitnet_case(fitnet, cfg, index, shapes):
    rng = np.random.default_rng(100 + index)
    (student_h, student_c), (teacher_h, teacher_c) = shapes
    student = post_relu(rng, [(8, 2), (8, 2), (student_h, student_c), (4, 2)])
    teacher = post_relu(rng, [(8, 2), (8, 2), (teacher_h, teacher_c), (4, 2)])
    torch.manual_seed(20241203 + index)
    distiller = fitnet.FitNet(FixedFeatures(student), FixedFeatures(teacher), cfg)
    with torch.no_grad():  # BatchNorm's affine parameters away from 1 and 0
        distiller.conv_reg.bn.weight.copy_(
            torch.tensor(rng.uniform(0.5, 1.5, teacher_c))
        )
        distiller.conv_reg.bn.bias.copy_(torch.tensor(rng.normal(size=teacher_c)))
    out = {"teacher": teacher[2], "student": student[2]}
    for name, value in distiller.conv_reg.named_parameters():
        out[name] = value.detach().numpy().copy()
    distiller.train()
    loss = forward(distiller)
    loss.backward()
    out["loss_kd"] = np.float64(loss.item())
    out["grad_student"] = nhwc(distiller.student.feats[2].grad)
    for name, value in distiller.conv_reg.named_parameters():
        out[f"grad/{name}"] = value.grad.numpy().copy()
    out["running_mean"] = distiller.conv_reg.bn.running_mean.numpy().copy()
    out["running_var"] = distiller.conv_reg.bn.running_var.numpy().copy()
    out["extra_parameters"] = np.int64(distiller.get_extra_parameters())
    out["weight"] = np.float64(cfg.FITNET.LOSS.FEAT_WEIGHT)
    return out


def at_case(at, cfg, teacher, student):
    distiller = at.AT(FixedFeatures(student), FixedFeatures(teacher), cfg)
    loss = forward(distiller)
    loss.backward()
    out = {
        "loss_kd": np.float64(loss.item()),
        "weight": np.float64(cfg.AT.LOSS.FEAT_WEIGHT),
    }
    for i in (1, 2, 3):
        out[f"grad_feats{i}"] = nhwc(distiller.student.feats[i].grad)
    return out


def feature_cases(modules, cfg):
    rng = np.random.default_rng(20241203)
    teacher, student = post_relu(rng, TEACHER_SHAPES), post_relu(rng, STUDENT_SHAPES)
    large = post_relu(np.random.default_rng(7), [(16, 4)])[0]
    out = {"student_large_feats1": large}
    for i in range(4):
        out[f"teacher_feats{i}"], out[f"student_feats{i}"] = teacher[i], student[i]
    results = {"at": at_case(modules["AT"], cfg, teacher, student)}
    results["at_pooled"] = at_case(
        modules["AT"], cfg, teacher, [student[0], large, *student[2:]]
    )
    for index, (case, shapes) in enumerate(FITNET_CASES.items()):
        results[f"fitnet/{case}"] = fitnet_case(modules["FitNet"], cfg, index, shapes)
    for prefix, values in results.items():
        for key, value in values.items():
            out[f"{prefix}/{key}"] = value
    return out


def resnet_pair(resnet, initial):
    student = resnet.resnet8(num_classes=10)
    student.load_state_dict(initial)
    torch.manual_seed(1)
    teacher = resnet.resnet8(num_classes=10)
    return student, teacher


def sgd_steps(modules, resnet, cfg, initial, steps):
    """Three `BaseTrainer` steps of FitNet (the student and its `ConvReg`)."""
    images = torch.tensor(
        np.ascontiguousarray(steps["images"][0].transpose(0, 3, 1, 2))
    )
    labels = torch.tensor(steps["labels"])
    student, teacher = resnet_pair(resnet, initial)
    out = {f"teacher/{k}": v.numpy().copy() for k, v in teacher.state_dict().items()}
    student.eval(), teacher.eval()  # no statistics moved at construction
    torch.manual_seed(2)
    distiller = modules["FitNet"].FitNet(student, teacher, cfg)
    for k, v in distiller.conv_reg.state_dict().items():
        out[f"fitnet/initial/conv_reg.{k}"] = v.numpy().copy()
    distiller.train()
    optimizer = torch.optim.SGD(
        distiller.get_learnable_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    for epoch, rate in ((1, 0.1), (2, 0.01), (3, 0.001)):
        for group in optimizer.param_groups:
            group["lr"] = rate
        optimizer.zero_grad()
        _, terms = distiller.forward_train(image=images, target=labels)
        loss = sum(term.mean() for term in terms.values())  # BaseTrainer
        loss.backward()
        optimizer.step()
        if epoch not in KEPT_STEPS:
            continue
        state = dict(student.state_dict())
        state.update(
            {f"conv_reg.{k}": v for k, v in distiller.conv_reg.state_dict().items()}
        )
        for key, value in state.items():
            out[f"fitnet/step{epoch}/{key}"] = value.detach().numpy().copy()
    return out


def probe(modules, resnet, cfg, initial):
    student, teacher = resnet_pair(resnet, initial)
    image = torch.tensor(
        np.random.default_rng(11).normal(size=(1, 3, 32, 32)).astype(np.float32)
    )
    common = sys.modules["peer._common"]
    randn = common.torch.randn
    common.torch = types.SimpleNamespace(
        **{**vars(torch), "randn": lambda *shape: image.clone()}
    )
    modules["FitNet"].FitNet(student, teacher, cfg)
    common.torch = torch
    assert torch.randn is randn
    out = {"probe/image": nhwc(image)}
    for role, model in (("student", student), ("teacher", teacher)):
        for key, value in model.state_dict().items():
            if "running" in key:
                out[f"probe/{role}/{key}"] = value.numpy().copy()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    source = parser.parse_args().source
    torch.use_deterministic_algorithms(True)
    load(source, "mdistiller__base.py", "_base")
    load(source, "mdistiller__common.py", "_common")
    cfg = load(source, "mdistiller_engine_cfg.py", "cfg").CFG
    modules = {m: load(source, f"mdistiller_{m}.py", m) for m in ("FitNet", "AT")}
    resnet = load(source, "mdistiller_cifar_resnet.py", "resnet")
    with np.load(HERE / "sgd_steps.npz") as data:
        steps = dict(data)
    initial = {
        k[len("initial/") :]: torch.tensor(v)
        for k, v in steps.items()
        if k.startswith("initial/")
    }
    out = feature_cases(modules, cfg)
    out.update(sgd_steps(modules, resnet, cfg, initial, steps))
    out.update(probe(modules, resnet, cfg, initial))
    out["torch_version"] = np.array(torch.__version__)
    out["commit"] = np.array(COMMIT)
    for filename in FILES:
        digest = hashlib.sha256((Path(source) / filename).read_bytes()).hexdigest()
        out[f"sha256/{filename}"] = np.array(digest)
    np.savez_compressed(OUTPUT, **out)
    for key in sorted(out):
        if key.endswith("loss_kd"):
            print(key, out[key])
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
