"""Makes the golden fixture of DOT (the Distillation-Oriented Trainer) from its code.

    pip install torch==2.13.0 pyyaml   # CPU build; only for this script, never for CI
    python tests/golden/make_dot.py --source=../shared/reference/peer

`--source` holds verbatim copies of megvii-research/mdistiller @ a08d46f's
`engine/dot.py` (`mdistiller_engine_dot.py`: `DistillationOrientedTrainer`),
`engine/trainer.py` (`mdistiller_engine_trainer.py`: the `DOT` trainer's
`init_optimizer` and `train_iter`), `distillers/KD.py`, `distillers/_base.py`,
`models/cifar/resnet.py`, `configs/cifar100/dot/res32x4_res8x4.yaml` (as
`mdistiller_configs_cifar100/dot_res32x4_res8x4.yaml`) and the lud fork's
`engine/utils.py` (`lud_engine_utils.py`, mdistiller's `adjust_learning_rate`,
`AverageMeter` and `accuracy`). Their code is imported from there, never copied;
only the numbers it produces are committed, in `dot.npz` next to this script:

- `optimizer/<case>/...`: three `DistillationOrientedTrainer` steps
  (`step_kd()` then `step()`, as the trainer calls them) on fixed float32
  parameters `a` (task and distillation gradients), `b` (task gradient only)
  and `c` (distillation gradient only), with fixed gradients (`task_a`,
  `kd_a`, `task_b`, `kd_c` per step) and rates 0.1, 0.1, 0.01: each parameter
  after each step. Cases: `recipe` (momentum 0.9, delta 0.075, weight decay
  5e-4, the DOT configs) and `strong_decay` (weight decay 0.1, so that the
  decay rules show well above float32 rounding).
- `training/step<k>/<key>`: mdistiller's resnet8 (10 classes) trained by the
  `DOT` trainer's own `init_optimizer` and `train_iter` with mdistiller's KD
  (T 4, CE 0.1, KD 0.9) under the config of `dot/res32x4_res8x4.yaml`
  (momentum 0.9, delta 0.075, weight decay 5e-4) with the decay stages moved
  to epochs 1 and 2 and the base rate 0.1 (see `LEARNING_RATE`): one step per
  epoch for three epochs, from the initial weights, batch (the first view)
  and teacher logits of `sgd_steps.npz`, every parameter and BatchNorm
  buffer after each step.
"""

import argparse
import hashlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from make_reference_training import FixedLogits  # noqa: E402

COMMIT = "a08d46f"
FILES = (
    "mdistiller_engine_dot.py",
    "mdistiller_engine_trainer.py",
    "mdistiller_KD.py",
    "mdistiller__base.py",
    "mdistiller_cifar_resnet.py",
    "lud_engine_utils.py",
    "mdistiller_configs_cifar100/dot_res32x4_res8x4.yaml",
)
OUTPUT = Path(__file__).with_name("dot.npz")
INPUTS = Path(__file__).with_name("sgd_steps.npz")
RATES = (0.1, 0.1, 0.01)
CASES = {"recipe": 5e-4, "strong_decay": 0.1}  # weight decay
MOMENTUM, DELTA = 0.9, 0.075
# The training steps' base rate: sgd_steps.npz's. At the config's 0.05 the second
# step's gradient is ill-conditioned: torch's own float32 gradient of one
# stage-3 kernel is 10% from its float64 one (a ReLU input within rounding of 0).
LEARNING_RATE = 0.1


def load(source, filename, name):
    """Imports `source/filename` as module `peer.<name>` of a stub package."""
    if "peer" not in sys.modules:
        package = types.ModuleType("peer")
        package.__path__ = []
        sys.modules["peer"] = package
        sys.modules.setdefault("tqdm", types.SimpleNamespace(tqdm=None))
        sys.modules.setdefault(
            "tensorboardX", types.SimpleNamespace(SummaryWriter=None)
        )
    spec = importlib.util.spec_from_file_location(
        f"peer.{name}", Path(source) / filename
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"peer.{name}"] = module
    spec.loader.exec_module(module)
    return module


def optimizer_case(dot, weight_decay, rng):
    """Three DistillationOrientedTrainer steps on fixed gradients."""
    shapes = {"a": (4, 3), "b": (5,), "c": (3, 2)}
    initial = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    gradients = {
        f"{kind}_{p}": rng.normal(size=(3, *shapes[p])).astype(np.float32)
        for kind, p in (("task", "a"), ("kd", "a"), ("task", "b"), ("kd", "c"))
    }
    params = {k: nn.Parameter(torch.tensor(v)) for k, v in initial.items()}
    optimizer = dot.DistillationOrientedTrainer(
        list(params.values()),
        lr=RATES[0],
        momentum=MOMENTUM - DELTA,
        momentum_kd=MOMENTUM + DELTA,
        weight_decay=weight_decay,
    )
    out = {f"initial_{k}": v for k, v in initial.items()}
    out.update(gradients)
    for step, rate in enumerate(RATES):
        optimizer.param_groups[0]["lr"] = rate
        optimizer.zero_grad(set_to_none=True)
        for p in ("a", "c"):
            params[p].grad = torch.tensor(gradients[f"kd_{p}"][step])
        optimizer.step_kd()
        optimizer.zero_grad(set_to_none=True)
        for p in ("a", "b"):
            params[p].grad = torch.tensor(gradients[f"task_{p}"][step])
        optimizer.step()
        for k, v in params.items():
            out[f"step{step + 1}_{k}"] = v.detach().numpy().copy()
    out["rates"] = np.array(RATES)
    out["weight_decay"] = np.float64(weight_decay)
    return out


def namespace(tree):
    if isinstance(tree, dict):
        return types.SimpleNamespace(**{k: namespace(v) for k, v in tree.items()})
    return tree


def trainer_config(source):
    """The res32x4_res8x4 DOT config over engine/cfg.py's KD defaults, with
    the decay stages at epochs 1 and 2."""
    path = Path(source) / "mdistiller_configs_cifar100/dot_res32x4_res8x4.yaml"
    config = yaml.safe_load(path.read_text())
    config["SOLVER"]["LR_DECAY_STAGES"] = [1, 2]
    config["SOLVER"]["LR"] = LEARNING_RATE
    config["KD"] = {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}}
    return namespace(config)


class Parallel(nn.Module):
    """What the trainer holds: `distiller.module` is the distiller (as
    `nn.DataParallel` gives), calls go through to it."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, **kwargs):
        return self.module(**kwargs)


def training_steps(source):
    """Three `DOT.train_iter` calls, one per epoch, on resnet8 with KD."""
    load(source, "mdistiller__base.py", "_base")
    utils = load(source, "lud_engine_utils.py", "utils")
    load(source, "mdistiller_engine_dot.py", "dot")
    trainer_module = load(source, "mdistiller_engine_trainer.py", "trainer")
    kd = load(source, "mdistiller_KD.py", "KD")
    resnet = load(source, "mdistiller_cifar_resnet.py", "resnet")
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU only
    with np.load(INPUTS) as inputs:
        inputs = dict(inputs)
    student = resnet.resnet8(num_classes=10)
    student.load_state_dict(
        {
            k[len("initial/") :]: torch.tensor(v)
            for k, v in inputs.items()
            if k.startswith("initial/")
        }
    )
    image = torch.tensor(inputs["images"][0].transpose(0, 3, 1, 2).copy())
    teacher = FixedLogits([(image, torch.tensor(inputs["teacher_logits"][0]))])
    config = trainer_config(source)
    trainer = object.__new__(trainer_module.DOT)
    trainer.cfg = config
    trainer.distiller = Parallel(kd.KD(student, teacher, config))
    trainer.optimizer = trainer.init_optimizer(config)
    trainer.distiller.train()
    target = torch.tensor(inputs["labels"])
    index = torch.arange(len(target))
    out = {}
    for epoch in (1, 2, 3):
        utils.adjust_learning_rate(epoch, config, trainer.optimizer)
        meters = {
            k: utils.AverageMeter()
            for k in ("training_time", "data_time", "losses", "top1", "top5")
        }
        trainer.train_iter((image, target, index), epoch, meters)
        for key, value in student.state_dict().items():
            out[f"training/step{epoch}/{key}"] = value.detach().numpy().copy()
    out["training/learning_rate"] = np.float64(config.SOLVER.LR)
    out["training/milestones"] = np.array(config.SOLVER.LR_DECAY_STAGES)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the reference sources")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    dot = load(args.source, "mdistiller_engine_dot.py", "dot")
    rng = np.random.default_rng(20240605)
    out = {}
    for case, weight_decay in CASES.items():
        for key, value in optimizer_case(dot, weight_decay, rng).items():
            out[f"optimizer/{case}/{key}"] = value
    out.update(training_steps(args.source))
    out["momentum"], out["delta"] = np.float64(MOMENTUM), np.float64(DELTA)
    out["torch_version"] = np.array(torch.__version__)
    out["mdistiller_commit"] = np.array(COMMIT)
    for name in FILES:
        digest = hashlib.sha256((Path(args.source) / name).read_bytes()).hexdigest()
        out[f"sha256/{name}"] = np.array(digest)
    np.savez_compressed(OUTPUT, **out)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
