"""Training precision (issue 39): bf16 autocast with float32 master weights, the device check, and resumable runs."""
import pytest
import torch

from lessonlib import devices
from lessonlib.recipes import RECIPES, Recipe
from lessonlib.train import resume_file, with_overrides
from lessonlib.training import fit


def _toy_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.SiLU(), torch.nn.Linear(32, 8))
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(8, 8, generator=torch.Generator().manual_seed(99))

    def loss(m, step):
        x = torch.randn(16, 8, generator=gen)
        return ((m(x) - x @ target) ** 2).mean()
    return model, loss, gen


def test_bf16_trains_with_float32_weights_and_reaches_the_fp32_loss():
    if not devices.bf16_support(torch.device("cpu"))[0]:
        pytest.skip("this CPU has no native bf16")
    results = {}
    for precision in devices.PRECISIONS:
        model, loss, _ = _toy_problem()
        out = fit(model, loss, steps=300, lr=1e-2, warmup=10, ema_decay=0.99, progress=False, precision=precision)
        assert all(p.dtype == torch.float32 for p in out.model.parameters())
        results[precision] = sum(out.losses[-50:]) / 50
    assert results["bf16"] < 0.2 * _toy_initial_loss()  # it learned
    assert abs(results["bf16"] - results["fp32"]) < 0.25 * results["fp32"] + 0.02


def _toy_initial_loss():
    model, loss, _ = _toy_problem()
    with torch.no_grad():
        return float(loss(model, 0))


def test_bf16_autocast_really_runs_the_matmuls_in_bf16():
    with devices.autocast("bf16", torch.device("cpu")):
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with devices.autocast("fp32", torch.device("cpu")):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_precision_is_validated_everywhere():
    with pytest.raises(ValueError, match="precision must be one of"):
        devices.autocast("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be one of"):
        devices.training_precision("half", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be one of"):
        with_overrides(RECIPES["mnist-uncond-quick"], {"precision": "float16"})
    model, loss, _ = _toy_problem()
    with pytest.raises(ValueError, match="precision must be one of"):
        fit(model, loss, steps=2, lr=1e-3, progress=False, precision="bf8")


def test_a_device_without_native_bf16_trains_in_fp32_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(devices, "bf16_support", lambda dev: (False, "no bf16 here"))
    monkeypatch.setattr(devices, "_SAID", set())
    assert devices.training_precision("bf16", torch.device("cpu")) == "fp32"
    assert devices.training_precision("bf16", torch.device("cpu")) == "fp32"
    assert capsys.readouterr().out.count("training in fp32, not bf16: no bf16 here") == 1  # said once
    assert devices.training_precision("fp32", torch.device("cpu")) == "fp32"


def test_a_stopped_run_resumes_on_the_same_batches_and_ends_where_an_unbroken_run_ends(tmp_path):
    steps = 40
    model, loss, gen = _toy_problem()
    whole = fit(model, loss, steps=steps, lr=1e-2, warmup=5, ema_decay=0.9, progress=False)

    model, loss, gen = _toy_problem()
    calls = {"n": 0}

    def breaking_loss(m, step):
        calls["n"] += 1
        if calls["n"] == 23:
            raise KeyboardInterrupt  # the run is stopped in the middle of step 22
        return loss(m, step)
    path = tmp_path / "run.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(model, breaking_loss, steps=steps, lr=1e-2, warmup=5, ema_decay=0.9, progress=False, checkpoint=path,
            checkpoint_every_s=0, generators=(gen,))
    assert path.exists()

    model, loss, gen = _toy_problem()  # a fresh process: new weights, generator back at its seed
    resumed = fit(model, loss, steps=steps, lr=1e-2, warmup=5, ema_decay=0.9, progress=False, checkpoint=path,
                  generators=(gen,))
    assert not path.exists()  # removed once the run ended
    assert resumed.steps == steps and len(resumed.losses) == steps
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)
    for a, b in zip(resumed.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(a, b)


def test_a_resume_file_of_another_run_is_refused(tmp_path):
    model, loss, gen = _toy_problem()
    path = tmp_path / "run.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(model, lambda m, s: (_ for _ in ()).throw(KeyboardInterrupt) if s == 3 else loss(m, s), steps=10,
            lr=1e-2, progress=False, checkpoint=path, checkpoint_every_s=0, generators=(gen,))
    model, loss, gen = _toy_problem()
    with pytest.raises(ValueError, match="belongs to another run"):
        fit(model, loss, steps=20, lr=1e-2, progress=False, checkpoint=path, generators=(gen,))


def test_resume_files_are_named_after_the_recipe_content(tmp_path):
    quick = RECIPES["mnist-uncond-quick"]
    assert resume_file(quick, tmp_path) == resume_file(quick, tmp_path)
    assert resume_file(quick, tmp_path) != resume_file(with_overrides(quick, {"steps": 10}), tmp_path)
    assert resume_file(quick, tmp_path).parent == tmp_path


def test_manifest_recipes_without_a_precision_read_as_fp32():
    from dataclasses import asdict
    old = asdict(RECIPES["mnist-judge"])
    old.pop("precision")
    assert Recipe.from_dict(old).precision == "fp32"


def test_bench_train_times_each_mode_and_counts_a_steps_flops():
    from lessonlib.bench import step_speed
    rows = step_speed("mnist-judge", ("fp32", "bf16"), steps=1, rounds=2, warmup=1)
    assert [r["mode"] for r in rows] == ["fp32", "bf16"] and [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert all(r["s_per_step"] == min(r["rounds_s"]) > 0 and len(r["rounds_s"]) == 2 for r in rows)
    # forward + backward of the judge CNN on a batch of 128: millions of FLOPs, the same count in both precisions
    assert rows[0]["flops_per_step"] > 1e8 and rows[0]["flops_per_step"] == rows[1]["flops_per_step"]
    with pytest.raises(ValueError, match="mode must be one of"):
        step_speed("mnist-judge", ("fp16",), steps=1)
