"""Stored results (lessonlib.stored): what a lesson loads instead of recomputing must be what it would compute."""
import json

import pytest
import torch
from helpers import TINY, randomise

from lessonlib import stored, zoo
from lessonlib.metrics import FidInterval, ManifoldScores
from lessonlib.nets.unet import UNet
from lessonlib.paths import REPO_ROOT
from lessonlib.stats import PairedDifference


def test_encode_decode_keeps_keys_types_intervals_and_tensors():
    value = {0.5: {"ci": FidInterval(1.5, 0.2, 2.8, 100), "x": torch.arange(6.0).reshape(2, 3)},
             ("clean", 4.0): [1, "a", None, True, float("inf")],
             "pr": ManifoldScores(0.9, 0.8, 1.1, 0.7, 5), "d": PairedDifference(-0.5, -0.7, -0.3, 200, "paired")}
    tensors = {}
    text = json.dumps(stored.encode(value, tensors))
    back = stored.decode(json.loads(text), tensors)
    assert set(back) == {0.5, ("clean", 4.0), "pr", "d"} and back["d"] == value["d"]
    assert back[0.5]["ci"] == value[0.5]["ci"] and torch.equal(back[0.5]["x"], value[0.5]["x"])
    assert back["clean", 4.0] == value["clean", 4.0] and back["pr"] == value["pr"]


def test_pictures_come_back_as_8_bit_images_in_range():
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    tensors = {}
    back = stored.decode(stored.encode(stored.Picture(x), tensors), tensors)
    assert next(iter(tensors.values())).dtype.name == "uint8"
    assert back.shape == x.shape and (back - x).abs().max() <= 1 / 127.5 and back.min() >= -1 and back.max() <= 1


def test_an_object_it_cannot_store_is_refused_with_what_to_return():
    with pytest.raises(TypeError, match="cannot store a object"):
        stored.encode({"a": object()}, {})
    with pytest.raises(ValueError, match="plain file name"):
        stored.get("../up", lambda: 1, params={}, checkpoints=[], lesson="04", directory=".")


def test_get_computes_once_then_loads_and_recomputes_when_params_or_weights_change(tiny_zoo, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.delenv("LESSONLIB_RECOMPUTE", raising=False)
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.5 + len(calls), "x": torch.ones(2)}

    where = tmp_path / "results"
    kw = dict(checkpoints=["mnist-cfg"], lesson="07", directory=where)
    first = stored.get("07-demo", compute, params={"n": 10}, **kw)
    assert "computed here" in capsys.readouterr().out and (where / "07-demo.json").exists()
    again = stored.get("07-demo", compute, params={"n": 10}, **kw)
    out = capsys.readouterr().out
    assert len(calls) == 1 and again["acc"] == first["acc"] and torch.equal(again["x"], first["x"])
    assert "loaded, not computed here" in out and "python -m lessonlib.run_all 07 --recompute" in out
    stored.get("07-demo", compute, params={"n": 20}, **kw)  # another sample count: computed anew
    assert len(calls) == 2 and "other parameters" in capsys.readouterr().out
    stored.get("07-demo", compute, params={"n": 20}, recompute=True, **kw)
    assert len(calls) == 3
    monkeypatch.setenv("LESSONLIB_RECOMPUTE", "1")  # python -m lessonlib.run_all --recompute
    stored.get("07-demo", compute, params={"n": 20}, **kw)
    assert len(calls) == 4
    monkeypatch.delenv("LESSONLIB_RECOMPUTE")
    zoo.save("mnist-cfg", randomise(UNet(TINY), seed=1), info={"command": "test", "recipe": {"schedule": "linear", "T": 50}},
             directory=tmp_path)  # retrained: the stored result no longer describes these weights
    with pytest.raises(stored.StaleResult, match="other weights of mnist-cfg"):
        stored.load("07-demo", params={"n": 20}, checkpoints=["mnist-cfg"], directory=where)
    stored.get("07-demo", compute, params={"n": 20}, **kw)
    assert len(calls) == 5 and "retrained" in capsys.readouterr().out


SHIPPED = sorted(p.stem for p in stored.RESULTS_DIR.glob("*.json"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_result_matches_the_shipped_checkpoints(name):
    record = stored.check(name)  # raises StaleResult after a retrain: rerun the command it names
    assert record["command"] == f"python -m lessonlib.run_all {name[:2]} --recompute" and record["seconds"] > 0


def test_the_lessons_store_results_and_each_is_shipped():
    assert len(SHIPPED) >= 6
    used = set()
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        text = path.read_text()
        used |= {name for name in SHIPPED if f'"{name}"' in text or f'\\"{name}\\"' in text}
    assert used == set(SHIPPED), f"stored results no lesson loads: {sorted(set(SHIPPED) - used)}"
