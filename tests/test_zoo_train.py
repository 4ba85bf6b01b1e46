import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from helpers import TINY, randomise
from safetensors.torch import load_file

from lessonlib import zoo
from lessonlib.nets.classifier import JudgeNet
from lessonlib.nets.config import config_from_dict
from lessonlib.nets.unet import UNet
from lessonlib.recipes import RECIPES, Recipe
from lessonlib.samplers import sample_images
from lessonlib.schedules import linear_schedule
from lessonlib.train import run_recipe
from lessonlib.training import EMA, diffusion_loss_fn, drop_conditions, fit
from lessonlib.transforms import random_hflip, random_shift
from lessonlib.types import NULL_CLASS


def test_save_load_round_trip_is_bitwise(tmp_path):
    net = randomise(UNet(TINY), std=1.0)
    entry = zoo.save("tiny", net, info={"command": "python -m lessonlib.train tiny"}, directory=tmp_path)
    back = zoo.load("tiny", directory=tmp_path)
    assert entry["sha256"] == zoo.sha256_of(tmp_path / "tiny.safetensors")
    for (k, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    assert back.config == net.config and not back.training


def test_corrupt_missing_and_unknown_checkpoints_are_refused(tmp_path):
    zoo.save("judge", JudgeNet(), info={"command": "python -m lessonlib.train mnist-judge"}, directory=tmp_path)
    path = tmp_path / "judge.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(zoo.ZooError, match="corrupt.*python -m lessonlib.train mnist-judge"):
        zoo.load("judge", directory=tmp_path)
    path.unlink()
    with pytest.raises(zoo.ZooError, match="missing.*Retrain"):
        zoo.load("judge", directory=tmp_path)
    with pytest.raises(zoo.ZooError, match="known: judge"):
        zoo.load("nope", directory=tmp_path)


def test_shipped_checkpoints_are_verified_small_and_documented():
    entries = zoo.manifest()
    if not entries:
        pytest.skip("no shipped checkpoints yet")
    for name, entry in entries.items():
        path = zoo.checkpoint_file(name)
        assert path.suffix == ".safetensors" and path.stat().st_size < 10 * 1024 * 1024
        load_file(str(path))  # parses as safetensors (no pickle)
        for key in ("command", "data", "wall_time_s", "machine", "metrics", "recipe", "train_images"):
            assert key in entry, f"{name} lacks {key}"
        zoo.load(name)  # sha256 verified


def test_every_shipped_checkpoint_matches_the_recipe_that_would_retrain_it():
    """The manifest's recorded recipe (old untyped ``extra`` dicts included) reads back as today's recipe, and the
    checkpoint's config is the one that recipe builds: retraining gives a checkpoint of the same shape."""
    entries = zoo.manifest()
    if not entries:
        pytest.skip("no shipped checkpoints yet")
    for name, entry in entries.items():
        recorded, current = Recipe.from_dict(entry["recipe"]), RECIPES[name]
        assert {k: v for k, v in asdict(recorded).items() if k != "config"} == \
            {k: v for k, v in asdict(current).items() if k != "config"}, name
        config_cls = zoo.ARCHITECTURES[entry["arch"]][1]
        assert config_from_dict(config_cls, entry["config"]) == config_from_dict(config_cls, current.config), name
        got, want = zoo.schedule_for(name), current.noise_schedule()   # a NoiseSchedule, or flow.LINEAR for flows
        assert type(got) is type(want) and got.name == want.name and getattr(got, "T", None) == getattr(want, "T", None)


def test_recipes_refuse_unknown_fields_tasks_and_missing_helpers():
    with pytest.raises(ValueError, match="no field"):
        Recipe.from_dict({**asdict(RECIPES["mnist-judge"]), "colour": "red"})
    with pytest.raises(ValueError, match="unknown task"):
        Recipe("x", "painting", "UNet", {}, steps=1, batch_size=1, lr=1.0)
    with pytest.raises(ValueError, match="clip="):
        Recipe("x", "text-diffusion", "UNet", {}, steps=1, batch_size=1, lr=1.0)
    old = {**asdict(RECIPES["mnist-controlnet"]), "extra": {"base": "mnist-cfg", "cells": 5, "eval_n": 500}}
    del old["base"], old["layout_cells"], old["eval_n"]
    assert Recipe.from_dict(old).layout_cells == 5


def test_ema_tracks_the_weights_with_the_requested_decay():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, 0.5)
    with torch.no_grad():
        net.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(net, step=1000)  # past the warm-up: decay 0.5 exactly
    torch.testing.assert_close(ema.model.weight, 0.5 * before + 0.5 * net.weight)
    assert not ema.model.weight.requires_grad
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(net, 1.0)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 28, 28, generator=g).round() * 2 - 1
    labels = torch.randint(0, 10, (64,), generator=g)
    loss_fn = diffusion_loss_fn(images, labels, linear_schedule(1000), batch_size=32, conditional=True,
                                p_uncond=0.1, generator=g)
    eval_loss = lambda m: sum(diffusion_loss_fn(images, labels, linear_schedule(1000), batch_size=64, conditional=True,
                                                generator=torch.Generator().manual_seed(i))(m, 0).item() for i in range(5))
    torch.manual_seed(0)
    net = UNet(TINY)
    before = eval_loss(net)
    result = fit(net, loss_fn, steps=40, lr=3e-3, warmup=5, ema_decay=0.9, progress=False)
    assert result.steps == 40 and eval_loss(result.model) < 0.9 * before


def test_condition_dropout_is_per_sample_at_the_requested_rate():
    labels = torch.arange(10).repeat(20_000)
    g = torch.Generator().manual_seed(0)
    dropped = drop_conditions(labels, 0.2, g) == NULL_CLASS
    assert abs(dropped.float().mean().item() - 0.2) < 0.01
    assert 0 < dropped.view(-1, 10).sum(1).float().std().item()  # not all-or-nothing per batch
    assert not (drop_conditions(labels, 0.0, g) == NULL_CLASS).any() and (drop_conditions(labels, 1.0, g) == NULL_CLASS).all()
    with pytest.raises(ValueError, match="p_uncond"):
        drop_conditions(labels, 1.5)


def test_random_shift_keeps_ink_and_moves_it():
    x = -torch.ones(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal((y == 1).sum((1, 2, 3)), (x == 1).sum((1, 2, 3))) and not torch.equal(x, y)


def test_random_hflip_mirrors_about_half_the_images():
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(400, 1, 1, 1)
    y = random_hflip(x, torch.Generator().manual_seed(0))
    mirrored = (y[:, 0, 0, 0] == 3).float()
    assert torch.equal(y[mirrored.bool()], x[mirrored.bool()].flip(-1)) and torch.equal(y[~mirrored.bool()], x[~mirrored.bool()])
    assert 0.4 < mirrored.mean().item() < 0.6


def test_each_diffusion_recipe_has_a_quick_budget_with_the_same_model_and_loss():
    for name in ("mnist-uncond", "mnist-cfg", "mnist-flow-cfg", "mnist-text-cfg", "cifar10-cfg"):
        full, quick = RECIPES[name], RECIPES[f"{name}-quick"]
        assert quick.config == full.config and quick.task == full.task and quick.min_snr_gamma == full.min_snr_gamma
        assert quick.steps * quick.batch_size < full.steps * full.batch_size, name


def test_manifest_entries_written_side_by_side_are_all_kept(tmp_path):
    """Trainings on one GPU save into one zoo at once: every entry survives (lessonlib.zoo.save locks the manifest)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_save_tiny_judge, args=(f"judge-{i}", str(tmp_path))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert sorted(zoo.manifest(tmp_path)) == [f"judge-{i}" for i in range(4)]


def _save_tiny_judge(name: str, directory: str) -> None:
    for _ in range(5):
        zoo.save(name, JudgeNet(width=4, feature_dim=8), info={"note": "concurrency test"}, directory=Path(directory))


def test_run_recipe_writes_a_documented_entry(tmp_path):
    _, entry = run_recipe("mnist-judge", steps=3, directory=tmp_path, measure=False, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["mnist-judge"]["steps_done"] == 3 and entry["train_images"] > 1000
    with pytest.raises(ValueError, match="available"):
        run_recipe("mnist-everything")
    assert {"mnist-judge", "mnist-uncond"} <= set(RECIPES)


def test_sample_images_is_seeded_batched_and_clamped():
    s = linear_schedule(50)
    eps = lambda x, t: -3 * x  # pushes samples outside [-1, 1] so clamping is visible
    a = sample_images(eps, 5, s, steps=4, batch=2, seed=1, shape=(1, 4, 4))
    b = sample_images(eps, 5, s, steps=4, batch=2, seed=1, shape=(1, 4, 4))
    assert a.shape == (5, 1, 4, 4) and torch.equal(a, b) and a.abs().max() <= 1
    assert not torch.equal(a, sample_images(eps, 5, s, steps=4, batch=2, seed=2, shape=(1, 4, 4)))
    noise = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    whole, parts = sample_images(eps, noise, s, steps=4), sample_images(eps, noise, s, steps=4, batch=2)
    assert torch.allclose(whole, parts, atol=1e-6)  # DDIM is deterministic: batching changes nothing
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="x_T"):
            sample_images(eps, bad, s, steps=4)
    with pytest.raises(ValueError, match="seed="):
        sample_images(eps, 5, s, steps=4, generator=torch.Generator())


def test_bench_command_line_rejects_unknown_benchmarks(capsys):
    from lessonlib.bench import main
    with pytest.raises(SystemExit):
        main(["everything"])
    assert "invalid choice" in capsys.readouterr().err


def test_withholding_is_for_mnist_clip_recipes_and_reads_back_from_json():
    with pytest.raises(ValueError, match="MNIST clip recipes only"):
        replace(RECIPES["mnist-uncond"], withhold_digit=7)
    recipe = Recipe.from_dict(json.loads(json.dumps(asdict(RECIPES["mnist-clip-withheld"]))))
    assert recipe == RECIPES["mnist-clip-withheld"] and recipe.withhold_pair == ("thick", 3)


def test_a_recipe_variant_is_validated_recorded_and_kept_out_of_the_shipped_zoo(tmp_path):
    from lessonlib.train import parse_overrides, with_overrides

    overrides = parse_overrides(["min_snr_gamma=2", "config.base_channels=8", "description=ablation arm"])
    assert overrides == {"min_snr_gamma": 2, "config.base_channels": 8, "description": "ablation arm"}
    _, entry = run_recipe("mnist-cfg", steps=2, directory=tmp_path, measure=False, progress=False,
                          overrides=overrides)
    assert entry["recipe"]["min_snr_gamma"] == 2 and entry["recipe"]["config"]["base_channels"] == 8
    assert entry["recipe"]["config"]["patch_size"] == RECIPES["mnist-cfg"].config["patch_size"]  # the rest kept
    assert RECIPES["mnist-cfg"].config["base_channels"] == 32 and RECIPES["mnist-cfg"].min_snr_gamma == 5
    with pytest.raises(ValueError, match="folder of your own"):
        run_recipe("mnist-cfg", steps=2, overrides={"min_snr_gamma": 2})
    with pytest.raises(ValueError, match="no key 'widht'"):
        with_overrides(RECIPES["mnist-cfg"], {"config.widht": 3})
    with pytest.raises(ValueError, match="no field"):
        with_overrides(RECIPES["mnist-cfg"], {"min_snr": 5})
    with pytest.raises(ValueError, match="not a clip recipe"):
        with_overrides(RECIPES["mnist-clip"], {"min_snr_gamma": 5})
    with pytest.raises(ValueError, match="hflip augments classifier recipes"):
        with_overrides(RECIPES["mnist-cfg"], {"hflip": True})
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_overrides(["min_snr_gamma"])
