"""The task table: every task's loss trains its model, every evaluator measures a tiny zoo (lessons 02-10)."""
from dataclasses import replace

import pytest
import torch
from helpers import TINY, randomise

from lessonlib import zoo
from lessonlib.captions import fit_bins
from lessonlib.data import load_mnist
from lessonlib.nets.classifier import JudgeConfig, JudgeNet, NoisyClassifierConfig
from lessonlib.nets.clip import SmallCLIP, SmallCLIPConfig
from lessonlib.nets.unet import UNet
from lessonlib.recipes import RECIPES, Recipe
from lessonlib.recipes import TASKS as TASK_NAMES
from lessonlib.tasks import TASKS, Context, build_model, evaluate

TINY_CLIP = SmallCLIPConfig(vision_width=32, vision_layers=1, text_layers=1, text_width=16, text_heads=2)
TINY_CLASSIFIER = NoisyClassifierConfig(base_channels=8, groups=4)
TINY_CONFIGS = {"UNet": TINY.to_dict(), "JudgeNet": JudgeConfig(width=8, feature_dim=16).to_dict(),
                "NoisyClassifier": TINY_CLASSIFIER.to_dict(), "SmallCLIP": TINY_CLIP.to_dict()}


@pytest.fixture(scope="module")
def digits():
    return load_mnist("test", limit=64)


@pytest.fixture
def tiny_zoo_dir(tmp_path, digits):
    """A zoo with a random judge and a tiny CLIP (with attribute bins), what tasks load as helpers."""
    zoo.save("mnist-judge", randomise(JudgeNet(JudgeConfig(width=8, feature_dim=16))), info={}, directory=tmp_path)
    clip = SmallCLIP(TINY_CLIP)
    clip.set_bins(fit_bins(digits.images))
    zoo.save("tiny-clip", clip.eval(), info={}, directory=tmp_path)
    zoo.save("mnist-cfg", randomise(UNet(TINY)), info={}, directory=tmp_path)
    return tmp_path


def tiny_recipe(name: str, **changes) -> Recipe:
    """The shipped recipe with a tiny model of the same architecture (and the tiny CLIP as its helper)."""
    r = RECIPES[name]
    config = TINY_CONFIGS.get(r.arch, r.config)
    if r.arch == "UNet":
        config = {**config, **{k: r.config[k] for k in ("num_classes", "cond_dim", "context_dim", "class_injection")}}
        if config["cond_dim"]:
            config["cond_dim"] = TINY_CLIP.embed_dim
        if config["context_dim"]:
            config["context_dim"] = TINY_CLIP.text_width
    if r.arch == "NoisyClassifier":
        config = {**config, "num_classes": r.config["num_classes"] if r.task != "noisy-clip" else TINY_CLIP.embed_dim}
    changes = {"eval_n": 20, **changes}
    return replace(r, config=config, clip="tiny-clip" if r.clip else None, batch_size=8, **changes)


def test_every_recipe_names_a_task_in_the_table():
    assert set(TASKS) == set(TASK_NAMES)
    assert {r.task for r in RECIPES.values()} <= set(TASKS)


@pytest.mark.parametrize("name", ["mnist-judge", "mnist-noisy-classifier", "mnist-clean-classifier", "mnist-clip",
                                  "mnist-clip-noisy", "mnist-uncond", "mnist-cfg", "mnist-text-cfg", "mnist-pooled-cfg",
                                  "mnist-controlnet"])
def test_each_task_builds_a_loss_that_trains_its_model(name, tiny_zoo_dir, digits):
    recipe = tiny_recipe(name, base="mnist-cfg" if name == "mnist-controlnet" else None)
    ctx = Context(recipe, recipe.noise_schedule(), directory=tiny_zoo_dir)
    torch.manual_seed(0)
    model = build_model(ctx).train()
    loss = TASKS[recipe.task].loss(ctx, model, digits, torch.Generator().manual_seed(0))(model, 0)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    if name == "mnist-controlnet":  # only the copy learns; the base stays frozen
        assert all(p.grad is None for p in model.base.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-judge", "mnist-noisy-classifier", "mnist-clip", "mnist-uncond", "mnist-cfg",
                                  "mnist-text-cfg", "mnist-pooled-cfg"])
def test_each_evaluator_measures_a_tiny_zoo(name, tiny_zoo_dir, digits):
    recipe = tiny_recipe(name, eval_n=50 if name.endswith(("text-cfg", "pooled-cfg")) else 20)  # 50: every attribute asked for
    ctx = Context(recipe, recipe.noise_schedule(), directory=tiny_zoo_dir)
    model = randomise(build_model(ctx), std=0.1)  # fresh U-Nets output zeros: every sample would be the same
    if name == "mnist-clip":
        model.set_bins(fit_bins(digits.images))
    metrics = evaluate(ctx, model, load_mnist("test", limit=200))
    numbers = [v for v in _leaves(metrics) if isinstance(v, float)]
    assert numbers and all(v == v and v >= 0 for v in numbers)  # measured, not NaN
    if name == "mnist-judge":
        assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_images"] == 200
    if name == "mnist-cfg":
        assert set(metrics) >= {"cfg0", "cfg1", "cfg3", "fid_floor"} and metrics["n"] == 20
        assert metrics["cfg0"]["fid_judge"] != metrics["cfg3"]["fid_judge"]  # the scale changed the samples


def test_a_generative_task_without_a_judge_says_so(tmp_path):
    recipe = tiny_recipe("mnist-uncond")
    ctx = Context(recipe, recipe.noise_schedule(), directory=tmp_path)
    assert "no judge" in evaluate(ctx, build_model(ctx), load_mnist("test", limit=50))["note"]


def _leaves(d):
    for v in d.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])
