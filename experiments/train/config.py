"""Training configuration: one flat dataclass, each model family's published defaults, and the command line.

Every field has a command-line option (`--batch-size 64`, `--amp`/`--no-amp`), added by `add_arguments`; options left
out take the defaults of the model's family (`PRESETS`), then `TrainConfig`'s own. `build_config` resolves them
(`build_config(**overrides_from_args(args))`, as `experiments.train.run.parse_args` does); a run saves the resolved
configuration as config.json in its folder and as the config_* columns of every metrics row.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import routing
from experiments.train.distributed import check_device

DATASETS = ("mnist", "fashion-mnist", "cifar10", "svhn", "affnist", "smallnorb", "smallnorb-azimuth",
            "smallnorb-elevation")  # experiments.train.data.TRAIN_DATASETS
SCHEDULES = ("exponential", "onecycle", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw")
LOSSES = ("margin", "spread", "nll", "cross-entropy")
# Image side of the datasets whose training images --max-shift moves (a shift of the side or more leaves nothing);
# training checks other datasets against their images once loaded
SHIFTED_IMAGE_SIZE = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32, "svhn": 32}
NO_ROUTING = "none"  # the routing of models that do not route (cnn-baseline)


@dataclass
class TrainConfig:
    """One training run. Field comments say what each option does; `PRESETS` overrides some per model."""

    model: str = "capsnet"  # a name from capsules.models()
    routing: str = "dynamic"  # a name from routing.available() ("none" for models that do not route)
    dataset: str = "mnist"  # one of DATASETS; smallnorb-azimuth/-elevation train familiar, test novel views
    data_root: str | None = None  # folder with the dataset's files (default $CAPSULES_DATA/<dataset>)
    train_subset: int | None = None  # use the first N training images (None: all)
    test_subset: int | None = None  # use the first N test images (None: all)
    routing_iterations: int | None = None  # routing iterations in every routed layer (None: the algorithm's own)
    routing_backend: str = "auto"  # routing backend: auto, torch, triton
    model_options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for create_model
    # optimisation
    epochs: int = 50  # epochs to train (the most, under a time budget)
    time_budget_min: float | None = None  # stop after this much training time; the schedule then follows the clock
    batch_size: int = 128  # global batch (split across DDP ranks)
    eval_batch_size: int = 500  # batch size of the test-set evaluation after every epoch
    optimizer: str = "adam"  # adam or adamw
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # L2 penalty (adam) or decoupled weight decay (adamw)
    schedule: str = "exponential"  # exponential, onecycle, cosine or constant
    decay_rate: float = 0.96  # exponential: lr * decay_rate ** (step / decay_steps)
    decay_steps: int = 2000  # exponential: steps per decay_rate factor
    warmup_fraction: float = 0.2  # onecycle: share of training spent ramping up to lr
    final_lr_fraction: float = 0.0  # onecycle/cosine: lr at the end, as a fraction of lr
    grad_clip: float | None = None  # clip the gradient's global norm (None: no clipping)
    # loss
    loss: str = "margin"  # margin (Sabour et al.), spread (Hinton et al.), nll or cross-entropy (on logits)
    spread_margin_start: float = 0.2  # spread-loss margin at the start
    spread_margin_end: float = 0.9  # spread-loss margin at the end of its ramp
    spread_margin_fraction: float = 0.5  # spread margin reaches its end value after this share of training
    reconstruction_weight: float = 0.0005  # 0 turns the decoder's loss off
    # data
    max_shift: int = 2  # MNIST training shift in pixels
    canvas: int | None = None  # place images at random on a black canvas this wide (affNIST protocol: 40; no shift)
    smallnorb_view: str | None = None  # None (stereo pair, 2 channels), "left" or "right"
    # run
    seed: int = 0  # seeds the model, the data order and the augmentation
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1
    amp: bool = False  # bf16 autocast (meant for GPUs)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    out_dir: str | None = None  # default runs/<model>-<routing>-<dataset>-seed<seed>
    resume: bool = False  # continue the run in out_dir from its checkpoint
    allow_config_change: bool = False  # --resume with settings that differ from the run's config.json
    progress: bool = True  # tqdm bar per epoch
    tensorboard: bool = False  # write loss, accuracy and lr scalars into <out_dir>/tensorboard (optional extra)

    def run_name(self) -> str:
        return f"{self.model}-{self.routing}-{self.dataset}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """The configuration as one row of scalars (model_options as JSON), for result tables."""
        row = self.to_dict()
        row["model_options"] = json.dumps(row["model_options"], sort_keys=True)
        return row


# Published (or chosen and stated) defaults per model family; command-line options override them.
PRESETS: dict[str, dict[str, Any]] = {
    # Sabour et al. 2017: Adam 1e-3 decayed 0.96 every 2000 steps, batch 128, margin + 0.0005 x reconstruction,
    # 2-px shifts.
    "capsnet": dict(dataset="mnist", optimizer="adam", lr=1e-3, schedule="exponential", decay_rate=0.96,
                    decay_steps=2000, batch_size=128, loss="margin", reconstruction_weight=0.0005, max_shift=2),
    # Hinton et al. 2018: spread loss with margin 0.2 -> 0.9; Adam; our choice: lr 3e-3 decayed 0.96 every
    # 2000 steps (the authors' released settings as reported by public re-implementations), batch 32, no decoder.
    "matrix-capsnet": dict(dataset="smallnorb", optimizer="adam", lr=3e-3, schedule="exponential", decay_rate=0.96,
                           decay_steps=2000, batch_size=32, loss="spread", reconstruction_weight=0.0, epochs=50),
    # The compact CPU model: chosen for accuracy within a short CPU budget (stated in the README's table); its loss
    # follows the routing (ROUTING_LOSS).
    "compact": dict(dataset="mnist", optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="onecycle",
                    warmup_fraction=0.15, batch_size=128, reconstruction_weight=0.0, max_shift=2, epochs=15),
}
# The plain CNN baseline trains as the compact model does, with cross-entropy (nll on its softmax) and no routing.
PRESETS["cnn-baseline"] = {**PRESETS["compact"], "routing": NO_ROUTING, "loss": "nll"}
# The loss of each routing's paper, for presets that leave the loss open (EM routing's activations start near 0.5,
# where the spread loss, which scores differences between activations, learns much faster than the margin loss):
# SR-CapsNet's trainer uses NLLLoss for self-routing; inverted dot-product routing trains cross-entropy on its
# class logits, variational Bayes routing (the authors' train.py) cross-entropy on its activations' logits;
# Efficient-CapsNet uses the margin loss.
ROUTING_LOSS = {"dynamic": "margin", "em": "spread", "self-routing": "nll", "inverted-dot-product": "cross-entropy",
                "self-attention": "margin", "variational-bayes": "cross-entropy"}


def preset_for(model: str) -> dict[str, Any]:
    """The preset of `model`'s family: an exact name, else the longest preset name it starts with, else none."""
    if model in PRESETS:
        return PRESETS[model]
    matches = [name for name in PRESETS if model.startswith(name)]
    return PRESETS[max(matches, key=len)] if matches else {}


def build_config(**overrides: Any) -> TrainConfig:
    """TrainConfig with the model's preset applied, then `overrides` (a None override keeps the default)."""
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}")
    model = overrides.get("model") or TrainConfig.model
    values = {**preset_for(model), **{k: v for k, v in overrides.items() if v is not None}}
    values.setdefault("loss", ROUTING_LOSS.get(values.get("routing", TrainConfig.routing), TrainConfig.loss))
    resolve_iterations(values)
    config = TrainConfig(**values)
    validate(config)
    return config


def resolve_iterations(values: dict[str, Any]) -> None:
    """Fill in routing_iterations from the routing's own default (its paper's: 3 for dynamic and EM, 2 for inverted
    dot-product routing) where it iterates; a count given for a routing that does not iterate (self-routing,
    self-attention) is a ValueError. Unknown routing names are left to the model's registry to report."""
    name = values.get("routing", TrainConfig.routing)
    if name not in routing.available():
        return
    iterations = values.get("routing_iterations")
    if "iterations" not in routing.options(name):
        if iterations is not None:
            raise ValueError(f"--routing-iterations {iterations} does not apply: routing {name!r} does not iterate")
        return
    if iterations is None:
        values["routing_iterations"] = routing.option_defaults(name)["iterations"]


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the option, the value and what it expected (types first, then ranges); names of
    models and routings are checked where they are built (their registries list what exists)."""
    check_types(config)
    choices = {"dataset": DATASETS, "schedule": SCHEDULES, "optimizer": OPTIMIZERS, "loss": LOSSES}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{option(name)} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    for name in ("epochs", "batch_size", "eval_batch_size", "decay_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"{option(name)} must be >= 1, got {getattr(config, name)}")
    for name in ("train_subset", "test_subset", "threads", "routing_iterations"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ValueError(f"{option(name)} must be >= 1, got {getattr(config, name)}")
    if config.train_subset is not None and config.train_subset < config.batch_size:
        raise ValueError(f"--train-subset {config.train_subset} is smaller than --batch-size {config.batch_size}: "
                         f"an epoch would have no full batch")
    # (low, high, low included, high included) of every real-valued option; NaN and infinities fail every range
    ranges = {"lr": (0, math.inf, False, False), "weight_decay": (0, math.inf, True, False),
              "decay_rate": (0, 1, False, True), "warmup_fraction": (0, 1, True, False),
              "final_lr_fraction": (0, 1, True, True), "spread_margin_start": (0, math.inf, True, False),
              "spread_margin_end": (0, math.inf, True, False), "spread_margin_fraction": (0, 1, False, True),
              "reconstruction_weight": (0, math.inf, True, False), "time_budget_min": (0, math.inf, False, False),
              "grad_clip": (0, math.inf, False, False)}
    for name, (low, high, low_in, high_in) in ranges.items():
        value = getattr(config, name)
        if value is None:
            continue
        above = low <= value if low_in else low < value
        below = value <= high if high_in else value < high
        if not (above and below and math.isfinite(value)):
            interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise ValueError(f"{option(name)} must be a finite number in {interval}, got {value!r}")
    if config.spread_margin_start > config.spread_margin_end:
        raise ValueError(f"--spread-margin-start {config.spread_margin_start} is above --spread-margin-end "
                         f"{config.spread_margin_end}: the margin grows from start to end")
    if config.max_shift < 0:
        raise ValueError(f"--max-shift must be >= 0, got {config.max_shift}")
    size = SHIFTED_IMAGE_SIZE.get(config.dataset)
    if config.canvas is None and size is not None and config.max_shift >= size:
        raise ValueError(f"--max-shift {config.max_shift} would move {config.dataset}'s {size}x{size} images out "
                         f"of the frame: it must be < {size}")
    if config.canvas is not None and config.canvas < 1:
        raise ValueError(f"--canvas must be >= 1 (a width in pixels), got {config.canvas}")
    if config.smallnorb_view not in (None, "left", "right"):
        raise ValueError(f"--smallnorb-view must be left or right, got {config.smallnorb_view!r}")
    if config.smallnorb_view is not None and not config.dataset.startswith("smallnorb"):
        raise ValueError(f"--smallnorb-view applies to the smallnorb datasets, not to --dataset {config.dataset}")
    if not 0 <= config.seed < 2**63:  # what torch.manual_seed takes
        raise ValueError(f"--seed must be in [0, 2**63), got {config.seed}")
    check_device(config.device)


def option(name: str) -> str:
    """The command-line option of TrainConfig field `name`."""
    return "--" + name.replace("_", "-")


def check_types(config: TrainConfig) -> None:
    """Each field holds its annotated type (None where the annotation allows it; an int where a float goes; never a
    bool for a number): configurations built in Python get the same clear errors as the command line."""
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        annotation = str(f.type)
        if value is None and "None" in annotation:
            continue
        base = annotation.split("|")[0].split("[")[0].strip()
        expected = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "dict": (dict,)}.get(base)
        if expected is None:
            continue
        if not isinstance(value, expected) or (base != "bool" and isinstance(value, bool)):
            raise ValueError(f"{option(f.name)} must be {'an' if base == 'int' else 'a'} {base}, got {value!r}")
    if not all(isinstance(key, str) for key in config.model_options):
        raise ValueError(f"model options must have string names, got {config.model_options!r}")


def field_help() -> dict[str, str]:
    """Each TrainConfig field's trailing comment in the source above (the one place options are described)."""
    pattern = re.compile(r"^\s+(\w+): [^#]*#\s*(.*)$")
    return {m.group(1): m.group(2) for line in inspect.getsource(TrainConfig).splitlines()
            if (m := pattern.match(line))}


def add_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One option per TrainConfig field (except `skip`), all defaulting to None (= the preset's value)."""
    described = field_help()
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        preset = "; model presets may change it" if any(f.name in p for p in PRESETS.values()) else ""
        shown = f"{described.get(f.name, '')} (default: {default!r}{preset})".strip()
        if f.name == "model_options":
            parser.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                                help="extra create_model keyword argument, VALUE parsed as JSON if it can be; "
                                     "repeatable")
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=shown)
        else:
            kind = _field_type(f.name)
            parser.add_argument(flag, type=kind, default=None, help=shown)


def overrides_from_args(args: argparse.Namespace, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The options given on the command line as TrainConfig keyword arguments."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
              if f.name not in skip and hasattr(args, f.name)}
    if values.get("model_options") is not None:
        values["model_options"] = parse_model_options(values["model_options"])
    return values


def parse_model_options(items: Sequence[str]) -> dict[str, Any]:
    """["depth=3", "name=x"] -> {"depth": 3, "name": "x"}."""
    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


_TYPES = {"int": int, "float": float, "str": str}


def _field_type(name: str) -> type:
    """The scalar type of a field ("int | None" -> int)."""
    annotation = {f.name: f.type for f in fields(TrainConfig)}[name]
    base = str(annotation).split("|")[0].strip()
    return _TYPES[base]
