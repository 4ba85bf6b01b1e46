"""Classifier-free guidance pieces of lesson 07: recipes, datasets, and the cfg / widgets benchmarks."""
import os
from dataclasses import asdict

import pytest
import torch

from lessonlib.bench import bench_cfg, bench_widgets, main
from lessonlib.data import load_dataset
from lessonlib.guidance import batched_cfg
from lessonlib.recipes import RECIPES
from lessonlib.train import run_recipe
from lessonlib.types import NULL_CLASS


def test_ablation_recipes_differ_only_in_p_uncond():
    rates = {name: r.p_uncond for name, r in RECIPES.items() if name.startswith("mnist-cfg-p")}
    assert sorted(rates.values()) == [0.0, 0.1, 0.2, 0.5, 1.0]
    base = asdict(RECIPES["mnist-cfg-p0.1"])
    for name in rates:
        other = asdict(RECIPES[name])
        assert {k for k in base if base[k] != other[k]} <= {"name", "p_uncond", "description"}, name
    assert RECIPES["mnist-cfg"].p_uncond == 0.1 and RECIPES["mnist-cfg"].config["num_classes"] == 10


def test_cifar_recipes_use_colour_images():
    for name in ("cifar10-cfg", "cifar10-judge"):
        assert RECIPES[name].dataset == "cifar10" and RECIPES[name].config["in_channels"] == 3
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", "train")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(os.path.join(os.environ.get("LESSONLIB_DATA", "/nonexistent"), "cifar10-jpeg")),
                    reason="no CIFAR-10 under LESSONLIB_DATA (CI sets it to ../shared/data)")
def test_cifar_cfg_recipe_trains_and_saves(tmp_path):
    model, entry = run_recipe("cifar10-cfg", steps=2, directory=tmp_path, measure=False, progress=False)
    assert entry["steps_done"] == 2 and "CIFAR-10" in entry["data"] and entry["train_images"] >= 1000
    x = torch.randn(2, 3, 32, 32)
    assert batched_cfg(model, torch.tensor([1, 2]), NULL_CLASS, 3.0)(x, torch.tensor([10, 10])).shape == x.shape


def test_cfg_benchmark_measures_every_batch(tiny_zoo, capsys):
    rows = bench_cfg(batches=(2, 8), min_seconds=0.05)
    assert [r["batch"] for r in rows] == [2, 8]
    for r in rows:  # timings themselves are the benchmark's business; here: every number is there and sane
        assert all(0 < r[k] < float("inf") for k in ("conditional", "batched_cfg", "two_passes", "ratio_batched"))
    assert "batched CFG" in capsys.readouterr().out


def test_widgets_benchmark_renders_then_hits_the_cache(tiny_zoo):
    out = bench_widgets(n_images=2, steps=2, settings=3)
    assert out["renders"] == 3 and out["cache_hits"] == 3  # the panel's own record, not wall time
    with pytest.raises(SystemExit):
        main(["widgets", "--images", "many"])


def test_sampling_benchmark_skips_ddpm_at_zero_and_refuses_negative_counts(tiny_zoo, tmp_path, capsys):
    from helpers import randomise

    from lessonlib import zoo
    from lessonlib.bench import bench_sampling
    from lessonlib.nets.classifier import JudgeConfig, JudgeNet

    zoo.save("mnist-judge", randomise(JudgeNet(JudgeConfig())), info={"command": "test"}, directory=tmp_path)
    rows = bench_sampling(model="mnist-cfg", n=8, n_ddpm=0, ddim_steps=(2,))  # a class-conditional net runs unconditioned
    assert [(r["sampler"], r["n"]) for r in rows] == [("ddim-2", 8)] and rows[0]["ratio"] > 0
    assert "ddpm" not in capsys.readouterr().out.split("real vs real")[-1]
    with pytest.raises(ValueError, match="0 skips DDPM"):
        bench_sampling(model="mnist-cfg", n=8, n_ddpm=-1)


@pytest.mark.slow
def test_quality_benchmark_reads_an_ablation_folder_and_reports_against_the_targets(tmp_path, capsys):
    from helpers import TINY, randomise

    from lessonlib import zoo
    from lessonlib.bench import bench_quality
    from lessonlib.nets.unet import UNet

    zoo.save("mnist-cfg", randomise(UNet(TINY)), info={"command": "test", "recipe": {"schedule": "linear", "T": 50},
                                                        "steps_done": 0, "wall_time_s": 0.0}, directory=tmp_path)
    rows = bench_quality(model="mnist-cfg", directory=tmp_path, n=20, steps=2, scales=(1.0, 3.0))
    assert [r["scale"] for r in rows] == [1.0, 3.0]
    assert all(0 <= r["adherence"] <= 1 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in rows)
    assert all(r["ratio"] > 5 for r in rows)  # a random network is far from the data
    out = capsys.readouterr().out
    assert "class-matched" in out and "targets" in out and "not met" in out
