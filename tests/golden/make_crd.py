"""Makes the golden fixture of mdistiller's CRD (its forward and its training step).

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_crd.py --source=../shared/reference/peer

`--source` holds verbatim copies of megvii-research/mdistiller @ a08d46f's
`distillers/CRD.py`, `_base.py` (`mdistiller_CRD.py`, `mdistiller__base.py`),
`engine/cfg.py` (`mdistiller_engine_cfg.py`; yacs's `CfgNode` stubbed by an
attribute dict), `engine/trainer.py` (`CRDTrainer`), `models/cifar/resnet.py`;
and llieeai/lud @ 2704bb2's `engine/utils.py` (`adjust_learning_rate`). Their
code is imported from there, never copied; only the numbers are committed, in
`crd.npz` next to this script. The negatives are drawn here (NumPy, seed
20241204: for each row its own index, then `K` indices of other classes
without replacement, as `CIFAR100InstanceSample` in "exact" mode) and given to
both implementations as the reference's `contrastive_index`.

- `forward/*`: `CRD.forward_train` with cfg.py's CRD settings (feature dim
  128, momentum 0.5, T 0.07, weights CE 1 and 0.8) but `K` = 50 over a bank
  of `N` = 300 examples (10 classes), stub models returning fixed pooled
  features (student 32 wide, teacher 48): the embeddings' weights (`[in,
  out]`), the initial banks, two batches of 8 (`index<b>`,
  `contrast_index<b>`, `student<b>`, `teacher<b>`) run one after the other:
  `loss_kd<b>`, `loss_ce<b>`, the gradient of `loss_kd<b>` with respect to the
  student features and both embeddings' weights, the banks and `Z` after each.
- `sgd/*`: three `CRDTrainer.train_iter` steps (one per epoch, rate 0.1 x0.1
  after epochs 1 and 2, SGD momentum 0.9, weight decay 5e-4 on the student and
  both embeddings) of mdistiller's resnet8 (10 classes, seed-0 weights)
  against a resnet8 teacher (seed-1 weights, inference mode), `N` = 200,
  `K` = 32, batches of 16: initial weights, each step's batch, indices and
  contrast indices, and every parameter, BatchNorm buffer, embedding weight
  and `Z` after each step, the banks after the third.
- the torch version, the commits and the SHA-256 of each source.
"""

import argparse
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
    "mdistiller_CRD.py",
    "mdistiller_cifar_resnet.py",
    "lud_engine_utils.py",
)
OUTPUT = Path(__file__).with_name("crd.npz")


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
        sys.modules.setdefault("tqdm", types.SimpleNamespace(tqdm=None))
        yacs = types.SimpleNamespace(config=types.SimpleNamespace(CfgNode=CfgNode))
        sys.modules["yacs"], sys.modules["yacs.config"] = yacs, yacs.config
    spec = importlib.util.spec_from_file_location(
        f"peer.{name}", Path(source) / filename
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"peer.{name}"] = module
    spec.loader.exec_module(module)
    return module


class FixedPooled(torch.nn.Module):
    """A stub model returning, for the i-th batch it is called on, fixed logits
    and mdistiller's feature dict with a fixed `pooled_feat`."""

    def __init__(self, pooled, logits):
        super().__init__()
        self.pooled = [torch.tensor(p, requires_grad=True) for p in pooled]
        self.logits = [torch.tensor(z, requires_grad=True) for z in logits]
        self.calls = 0

    def forward(self, image):
        i, self.calls = self.calls, self.calls + 1
        return self.logits[i], {"pooled_feat": self.pooled[i]}


def contrast_indices(rng, labels, index, k):
    """The reference dataset's "exact" draw: own index, then `k` indices of
    other classes without replacement."""
    rows = []
    for i in index:
        others = np.flatnonzero(labels != labels[i])
        rows.append(np.concatenate([[i], rng.choice(others, k, replace=False)]))
    return np.stack(rows).astype(np.int64)


def crd_cfg(cfg, student_dim, teacher_dim, k):
    cfg.CRD.FEAT.STUDENT_DIM, cfg.CRD.FEAT.TEACHER_DIM = student_dim, teacher_dim
    cfg.CRD.NCE.K = k
    return cfg


def build_crd(module, student, teacher, cfg, num_data):
    # ContrastMemory moves its unused alias table to CUDA: a no-op on CPU.
    module.AliasMethod.cuda = lambda self: None
    return module.CRD(student, teacher, cfg, num_data)


def state(distiller, prefix, banks=True):
    """Embedding weights (Keras layout), `Z` and the banks of `distiller`."""
    out = {}
    for name in ("embed_s", "embed_t"):
        linear = getattr(distiller, name).linear
        out[f"{prefix}{name}_kernel"] = linear.weight.detach().numpy().T.copy()
        out[f"{prefix}{name}_bias"] = linear.bias.detach().numpy().copy()
    contrast = distiller.contrast
    out[f"{prefix}z"] = contrast.params[2:4].detach().numpy().astype(np.float64)
    if not banks:
        return out
    out[f"{prefix}memory_v1"] = contrast.memory_v1.numpy().copy()
    out[f"{prefix}memory_v2"] = contrast.memory_v2.numpy().copy()
    return out


def kernel_gradient(embed):
    """The gradient of an `Embed`'s linear weight, in Keras's `[in, out]`."""
    return embed.linear.weight.grad.numpy().T.copy()


def forward_cases(source, cfg, rng):
    module = load(source, "mdistiller_CRD.py", "CRD")
    num_data, k, batch, classes = 300, 50, 8, 10
    labels = rng.integers(0, classes, num_data)
    pooled = {
        role: [rng.normal(size=(batch, width)).astype(np.float32) for _ in range(2)]
        for role, width in (("student", 32), ("teacher", 48))
    }
    logits = [rng.normal(size=(batch, classes)).astype(np.float32) for _ in range(2)]
    student = FixedPooled(pooled["student"], logits)
    teacher = FixedPooled(pooled["teacher"], logits)
    torch.manual_seed(0)
    distiller = build_crd(module, student, teacher, crd_cfg(cfg, 32, 48, k), num_data)
    out = {"labels": labels, "num_data": np.int64(num_data), "k": np.int64(k)}
    out.update(state(distiller, "initial_"))
    for b in range(2):
        index = rng.choice(num_data, batch, replace=False)
        contrast = contrast_indices(rng, labels, index, k)
        target = torch.tensor(labels[index])
        distiller.zero_grad()
        _, losses = distiller.forward_train(
            torch.zeros(batch, 3, 2, 2),
            target,
            torch.tensor(index),
            torch.tensor(contrast),
        )
        losses["loss_kd"].sum().backward()
        out.update(
            {
                f"index{b}": index,
                f"contrast_index{b}": contrast,
                f"student{b}": pooled["student"][b],
                f"teacher{b}": pooled["teacher"][b],
                f"logits{b}": logits[b],
                f"loss_kd{b}": losses["loss_kd"].detach().numpy().astype(np.float64),
                f"loss_ce{b}": np.float64(losses["loss_ce"].item()),
                f"grad_student{b}": student.pooled[b].grad.numpy().copy(),
                f"grad_embed_s_kernel{b}": kernel_gradient(distiller.embed_s),
                f"grad_embed_t_kernel{b}": kernel_gradient(distiller.embed_t),
                **state(distiller, f"after{b}_"),
            }
        )
    out["shape"] = np.array(losses["loss_kd"].shape)
    out["weight"] = np.float64(cfg.CRD.LOSS.FEAT_WEIGHT)
    out["extra_parameters"] = np.int64(distiller.get_extra_parameters())
    return {f"forward/{key}": value for key, value in out.items()}


def sgd_steps(source, cfg, rng):
    """Three `CRDTrainer.train_iter` steps, one per epoch."""
    module = load(source, "mdistiller_CRD.py", "CRD")
    resnet = load(source, "mdistiller_cifar_resnet.py", "resnet")
    utils = load(source, "lud_engine_utils.py", "engine_utils")
    num_data, k, batch, classes = 200, 32, 16, 10
    labels = rng.integers(0, classes, num_data)
    torch.manual_seed(0)
    student = resnet.resnet8(num_classes=classes)
    torch.manual_seed(1)
    teacher = resnet.resnet8(num_classes=classes)
    torch.manual_seed(2)
    distiller = build_crd(module, student, teacher, crd_cfg(cfg, 64, 64, k), num_data)
    out = {"labels": labels, "num_data": np.int64(num_data), "k": np.int64(k)}
    out.update(
        {f"initial/{k_}": v.numpy().copy() for k_, v in student.state_dict().items()}
    )
    out.update(
        {f"teacher/{k_}": v.numpy().copy() for k_, v in teacher.state_dict().items()}
    )
    out.update(state(distiller, "initial_"))
    student.train()
    teacher.eval()  # mdistiller's Distiller.train() keeps the teacher in eval
    optimizer = torch.optim.SGD(
        distiller.get_learnable_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    solver = CfgNode(SOLVER=CfgNode(LR=0.1, LR_DECAY_STAGES=[1, 2], LR_DECAY_RATE=0.1))
    for epoch in (1, 2, 3):
        images = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
        index = rng.choice(num_data, batch, replace=False)
        contrast = contrast_indices(rng, labels, index, k)
        utils.adjust_learning_rate(epoch, solver, optimizer)
        # CRDTrainer.train_iter: zero_grad, forward, sum of means, step.
        optimizer.zero_grad()
        _, losses = distiller.forward_train(
            torch.tensor(images),
            torch.tensor(labels[index]),
            torch.tensor(index),
            torch.tensor(contrast),
        )
        loss = sum(term.mean() for term in losses.values())
        loss.backward()
        optimizer.step()
        out[f"images{epoch}"] = images.transpose(0, 2, 3, 1)  # NHWC
        out[f"index{epoch}"], out[f"contrast_index{epoch}"] = index, contrast
        out[f"loss{epoch}"] = np.float64(loss.item())
        for key, value in student.state_dict().items():
            out[f"step{epoch}/{key}"] = value.detach().numpy().copy()
        out.update(state(distiller, f"step{epoch}_", banks=epoch == 3))
    return {f"sgd/{key}": value for key, value in out.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    source = parser.parse_args().source
    torch.use_deterministic_algorithms(True)
    load(source, "mdistiller__base.py", "_base")
    rng = np.random.default_rng(20241204)
    cfg = load(source, "mdistiller_engine_cfg.py", "cfg").CFG
    out = forward_cases(source, cfg, rng)
    cfg = load(source, "mdistiller_engine_cfg.py", "cfg").CFG
    out.update(sgd_steps(source, cfg, rng))
    out["torch_version"] = np.array(torch.__version__)
    for repository, commit in COMMITS.items():
        out[f"{repository}_commit"] = np.array(commit)
    for filename in FILES:
        digest = hashlib.sha256((Path(source) / filename).read_bytes()).hexdigest()
        out[f"sha256/{filename}"] = np.array(digest)
    np.savez_compressed(OUTPUT, **out)
    print(
        f"wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes): loss_kd",
        out["forward/loss_kd0"],
        out["forward/loss_kd1"],
        "sgd losses",
        [out[f"sgd/loss{e}"] for e in (1, 2, 3)],
    )


if __name__ == "__main__":
    main()
