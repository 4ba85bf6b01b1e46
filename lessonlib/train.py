"""Train a named recipe into the zoo: ``python -m lessonlib.train RECIPE`` (lesson 02).

:func:`run_recipe` looks the recipe up (:data:`lessonlib.recipes.RECIPES`), builds its model and loss
from its task's entry in :data:`lessonlib.tasks.TASKS`, trains with :func:`lessonlib.training.fit`,
measures the result with the task's evaluator, and writes the safetensors file and its manifest entry
(command, data, wall time, machine, metrics) through :mod:`lessonlib.zoo`.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from . import zoo
from .data import load_dataset
from .devices import device, training_precision
from .recipes import RECIPES, Recipe
from .tasks import TASKS, Context, build_model, evaluate
from .training import fit

__all__ = ["run_recipe", "budget_for", "main"]


def with_overrides(recipe: Recipe, overrides: dict) -> Recipe:
    """A copy of ``recipe`` with fields replaced; ``"config.KEY"`` replaces one key of the architecture's config.

    The result is validated as a recipe (unknown fields and config keys are refused), so an ablation run records
    exactly what it trained.
    """
    values = copy.deepcopy(asdict(recipe))
    for key, value in overrides.items():
        if key.startswith("config."):
            sub = key.removeprefix("config.")
            if sub not in values["config"]:
                raise ValueError(f"the {recipe.arch} config has no key {sub!r}; its keys are {sorted(values['config'])}.")
            values["config"][sub] = value
        elif key in ("name", "config"):
            raise ValueError(f"{key!r} cannot be overridden; override config keys one by one as config.KEY.")
        else:
            values[key] = value
    return Recipe.from_dict(values)


def parse_overrides(items: list[str]) -> dict:
    """``["min_snr_gamma=5", "config.patch_size=1"]`` -> {"min_snr_gamma": 5, "config.patch_size": 1} (JSON values;
    anything that is not JSON stays a string)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes FIELD=VALUE (e.g. min_snr_gamma=5 or config.patch_size=1), got {item!r}.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def run_recipe(name: str, *, steps: int | None = None, time_limit_min: float | None = None,
               directory: Path | None = None, measure: bool = True, progress: bool = True,
               zoo_dir: Path | None = None, overrides: dict | None = None,
               resume: bool = True, fresh: bool = False) -> tuple[nn.Module, dict]:
    """Train recipe ``name``, measure it and save it to the zoo; returns (model, manifest entry) (lesson 02).

    ``directory`` is where the checkpoint is written; ``zoo_dir`` where the models it needs (a frozen CLIP,
    a ControlNet's base, the judge that measures it) are read from. Both default to the shipped zoo.
    ``overrides`` (see :func:`with_overrides`) trains a variant of the recipe, for ablations; it needs a
    ``directory`` of your own, so that the shipped zoo only holds checkpoints its recipes reproduce.
    With ``resume`` the run writes a resume file beside the checkpoint every five minutes
    (``.NAME-HASH.resume.pt``, HASH from the recipe and the step count) and a run of the same recipe picks it up:
    a stopped training loses at most five minutes (``fresh`` deletes such a file first). The recipe's ``precision`` is honoured where the device
    computes it natively (:func:`lessonlib.devices.training_precision`); the manifest records what was used.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}.")
    recipe = copy.deepcopy(RECIPES[name])
    if overrides:
        if directory is None:
            raise ValueError("a recipe with overrides must be written to a folder of your own (--out DIR): the "
                             "shipped zoo keeps only checkpoints that its recipes reproduce.")
        recipe = with_overrides(recipe, overrides)
    if steps is not None:
        recipe.steps = steps
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    ctx = Context(recipe, recipe.noise_schedule(), directory=zoo_dir, progress=progress)
    train = load_dataset(recipe.dataset, "train")
    dev = device()
    model = build_model(ctx).to(dev)  # a GPU when there is one; batches stay on the CPU (lessonlib.devices)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = TASKS[recipe.task].loss(ctx, model, train, gen)
    precision = training_precision(recipe.precision, dev)
    resume_path = resume_file(recipe, directory) if resume else None
    if fresh and resume_path is not None and resume_path.exists():
        resume_path.unlink()
    result = fit(model, loss_fn, steps=recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
                 warmup=recipe.warmup, ema_decay=recipe.ema_decay, progress=progress, desc=name,
                 time_limit_s=None if time_limit_min is None else 60 * time_limit_min, precision=precision,
                 checkpoint=resume_path, generators=(gen,))
    metrics = evaluate(ctx, result.model, load_dataset(recipe.dataset, "test")) if measure else {}
    command = " ".join(["python -m lessonlib.train", name] + (sys.argv[2:] if sys.argv[1:2] == [name] else []))
    info = {"recipe": asdict(recipe), "command": command, "data": train.source, "train_images": len(train),
            "steps_done": result.steps, "wall_time_s": round(result.seconds, 1), "precision_used": precision,
            "final_loss": sum(result.losses[-100:]) / len(result.losses[-100:]),
            "loss_curve": _loss_curve(result.losses),
            "parameters": sum(p.numel() for p in result.model.parameters()), "metrics": metrics}
    entry = zoo.save(name, result.model, info=info, directory=directory)
    return result.model, entry


def resume_file(recipe: Recipe, directory: Path | None = None) -> Path:
    """Where :func:`run_recipe` keeps a run's resume file: beside its checkpoint, named after the recipe's content."""
    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True, default=str).encode()).hexdigest()[:10]
    return zoo.save_dir(directory) / f".{recipe.name}-{digest}.resume.pt"


def budget_for(name: str, dev: torch.device | None = None) -> str:
    """The recipe a lesson's "train it yourself" switch runs: ``name`` itself on a GPU, its quick budget
    ``name-quick`` (15 minutes or less on 2 CPU cores) elsewhere, when the recipe has one (issue 17)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}.")
    quick = f"{name}-quick"
    on_gpu = (dev or device()).type == "cuda"
    return name if on_gpu or quick not in RECIPES else quick


def _loss_curve(losses: list[float], every: int = 50) -> list[float]:
    """Mean training loss over each block of ``every`` steps (the manifest's loss curve, lesson 10)."""
    return [round(sum(losses[i:i + every]) / len(losses[i:i + every]), 5) for i in range(0, len(losses), every)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessonlib.train", description="Train a named recipe into the zoo.")
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, help="override the recipe's number of steps")
    parser.add_argument("--minutes", type=float, help="stop training after this many minutes (reported)")
    parser.add_argument("--out", help="a checkpoint folder of your own (default: $LESSONLIB_CHECKPOINTS, else the shipped zoo in a clone)")
    parser.add_argument("--no-eval", action="store_true", help="skip the metrics recorded in the manifest")
    parser.add_argument("--fresh", action="store_true", help="ignore and overwrite a resume file of a stopped run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="train a variant: replace a recipe field (min_snr_gamma=5) or a config key "
                             "(config.patch_size=1); repeatable; needs --out")
    args = parser.parse_args(argv)
    _, entry = run_recipe(args.recipe, steps=args.steps, time_limit_min=args.minutes,
                          directory=Path(args.out) if args.out else None, measure=not args.no_eval,
                          overrides=parse_overrides(args.set), resume=True, fresh=args.fresh)
    print(f"{args.recipe}: {entry['steps_done']} steps in {entry['wall_time_s']:.0f} s on {entry['machine']}; "
          f"metrics {entry['metrics']}; saved {entry['file']} ({entry['bytes'] / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
