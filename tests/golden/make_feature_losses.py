"""Makes the golden fixture of mdistiller's NST, PKT, RKD, SP and KDSVD.

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_feature_losses.py --source=../shared/reference/peer

`--source` holds verbatim copies of megvii-research/mdistiller @ a08d46f's
`distillers/{NST,PKT,RKD,SP,KDSVD}.py` and `_base.py` (`mdistiller_<name>.py`)
and `engine/cfg.py` (`mdistiller_engine_cfg.py`; yacs's `CfgNode` is stubbed by
an attribute dict). Their code is imported from there, never copied; only the
numbers are committed, in `feature_losses.npz` next to this script:

- `teacher_feats<i>`, `student_feats<i>` (i = 0..3: stem and three stages)
  and `teacher_pooled`, `student_pooled`: fixed float32 features, NHWC
  (transposed to NCHW for the reference), post-ReLU like a ResNet's; the
  pooled ones standard normal, not post-ReLU: on positive features PKT's
  similarities are all close, its value is a small difference of float32
  numbers, and torch's own float32 value is 1e-4 from the exact one.
- `<method>/loss_kd`: `forward_train`'s `loss_kd` (cfg.py's weights) with stub
  teacher and student models returning those features; `<method>/weight`:
  cfg.py's `FEAT_WEIGHT`; `<method>/grad_<key>`: its gradient with respect to
  the student features the method reads (NHWC). Methods: `nst`, `pkt`, `rkd`,
  `sp`, `kdsvd` (torch's own SVD signs) and `kdsvd_canonical` (`torch.svd`
  wrapped so each right singular vector's largest component is positive);
  `nst_pooled`: NST with the student's stage 1 at twice the teacher's size.
- `sp/shape`: the shape of SP's `loss_kd`, `(1,)`.
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
METHODS = ("NST", "PKT", "RKD", "SP", "KDSVD")
FILES = ("mdistiller__base.py", "mdistiller_engine_cfg.py") + tuple(
    f"mdistiller_{m}.py" for m in METHODS
)
OUTPUT = Path(__file__).with_name("feature_losses.npz")
BATCH = 4
# (height = width, channels) of feats[0..3]; pooled_feat has stage 3's channels.
TEACHER_SHAPES = ((8, 4), (8, 8), (6, 16), (4, 32))
STUDENT_SHAPES = ((8, 4), (8, 4), (6, 8), (4, 16))


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


def features(rng, shapes):
    """`feats` (NHWC float32, post-ReLU) and `pooled_feat` of one network."""
    feats = [
        np.maximum(rng.normal(size=(BATCH, h, h, c)), 0).astype(np.float32)
        for h, c in shapes
    ]
    return feats, rng.normal(size=(BATCH, shapes[-1][1])).astype(np.float32)


class FixedFeatures(torch.nn.Module):
    """A stub model: fixed logits and mdistiller's feature dict (NCHW)."""

    def __init__(self, feats, pooled):
        super().__init__()
        self.feats = [
            torch.tensor(
                np.ascontiguousarray(f.transpose(0, 3, 1, 2)), requires_grad=True
            )
            for f in feats
        ]
        self.pooled = torch.tensor(pooled, requires_grad=True)

    def forward(self, image):
        logits = torch.zeros(image.shape[0], 10)
        return logits, {"feats": self.feats, "pooled_feat": self.pooled}


def canonical_svd(svd):
    """`svd` with each right singular vector's largest component positive."""

    def wrapped(x, *args, **kwargs):
        u, s, v = svd(x, *args, **kwargs)
        largest = v.abs().argmax(dim=1, keepdim=True)
        sign = torch.where(v.gather(1, largest) < 0, -1.0, 1.0)
        return u * sign, s, v * sign

    return wrapped


def run(module, name, cfg, teacher, student):
    """`loss_kd` and its gradient w.r.t. the student's features (NHWC)."""
    distiller = getattr(module, name)(
        FixedFeatures(*student), FixedFeatures(*teacher), cfg
    )
    _, losses = distiller.forward_train(
        torch.zeros(BATCH, 3, 2, 2), torch.zeros(BATCH).long()
    )
    loss = losses["loss_kd"]
    stub = distiller.student
    loss.sum().backward()
    out = {
        "loss_kd": loss.detach().numpy().astype(np.float64),
        "shape": np.array(loss.shape),
    }
    for i, f in enumerate(stub.feats):
        if f.grad is not None:
            out[f"grad_feats{i}"] = f.grad.numpy().transpose(0, 2, 3, 1)
    if stub.pooled.grad is not None:
        out["grad_pooled"] = stub.pooled.grad.numpy()
    out["weight"] = np.float64(cfg[name].LOSS.FEAT_WEIGHT)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    source = parser.parse_args().source
    load(source, "mdistiller__base.py", "_base")
    cfg = load(source, "mdistiller_engine_cfg.py", "cfg").CFG
    modules = {m: load(source, f"mdistiller_{m}.py", m) for m in METHODS}
    rng = np.random.default_rng(20241203)
    teacher, student = features(rng, TEACHER_SHAPES), features(rng, STUDENT_SHAPES)
    out = {}
    for i in range(4):
        out[f"teacher_feats{i}"], out[f"student_feats{i}"] = (
            teacher[0][i],
            student[0][i],
        )
    out["teacher_pooled"], out["student_pooled"] = teacher[1], student[1]
    results = {m.lower(): run(modules[m], m, cfg, teacher, student) for m in METHODS}
    torch_svd = torch.svd
    modules["KDSVD"].torch = types.SimpleNamespace(
        **{**vars(torch), "svd": canonical_svd(torch_svd)}
    )
    results["kdsvd_canonical"] = run(modules["KDSVD"], "KDSVD", cfg, teacher, student)
    modules["KDSVD"].torch = torch
    pooled_student = features(
        np.random.default_rng(7), ((8, 4), (16, 4), (6, 8), (4, 16))
    )
    out["student_pooled_feats1"] = pooled_student[0][1]
    student_with_large_stage1 = (
        [*student[0][:1], pooled_student[0][1], *student[0][2:]],
        student[1],
    )
    results["nst_pooled"] = run(
        modules["NST"], "NST", cfg, teacher, student_with_large_stage1
    )
    for method, values in results.items():
        for key, value in values.items():
            out[f"{method}/{key}"] = value
    out["torch_version"] = np.array(torch.__version__)
    out["commit"] = np.array(COMMIT)
    for filename in FILES:
        digest = hashlib.sha256((Path(source) / filename).read_bytes()).hexdigest()
        out[f"sha256/{filename}"] = np.array(digest)
    np.savez_compressed(OUTPUT, **out)
    for method, values in results.items():
        print(method, values["loss_kd"], values["shape"])


if __name__ == "__main__":
    main()
