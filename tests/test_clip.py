import json
import socket

import pytest
import torch

from lessonlib import clip as C
from lessonlib import zoo
from lessonlib.captions import DIGIT_WORDS, AttributeBins, zero_shot_templates
from lessonlib.diffusion import x0_from_eps
from lessonlib.guidance import clip_grad, noisy_clip_grad
from lessonlib.nets.clip import SmallCLIP, SmallCLIPConfig
from lessonlib.schedules import make_schedule


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return SmallCLIP().eval()


def test_tokenizer_works_offline_and_marks_start_and_end(small):
    tok = small.tokenize(["a thick seven", "an 8"])
    assert tok.shape == (2, small.context_length)
    sot, eot = small.tokenizer.sot_token_id, small.tokenizer.eot_token_id
    assert tok[0, 0] == sot and (tok[0] == eot).sum() == 1 and tok[0, 5:].eq(0).all()


def test_bad_prompts_get_clear_errors(small):
    with pytest.raises(ValueError, match="non-empty"):
        small.encode_text("   ")
    with pytest.raises(ValueError, match="at least one"):
        small.encode_text([])
    with pytest.raises(ValueError, match="Shorten"):
        small.encode_text("a very " * 20 + "thick seven")


def test_bad_images_get_clear_errors(small):
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        small.encode_image(torch.zeros(2, 1, 32, 32) - 1)
    with pytest.raises(ValueError, match="127.5"):
        small.encode_image(torch.full((2, 1, 28, 28), 200.0))
    with pytest.raises(ValueError, match="2 x - 1"):
        small.encode_image(torch.rand(2, 1, 28, 28))


def test_encode_image_is_unit_length_and_differentiable_wrt_pixels(small):
    x = (torch.rand(3, 1, 28, 28) * 2 - 1).requires_grad_(True)
    emb = small.encode_image(x)
    torch.testing.assert_close(emb.norm(dim=-1).detach(), torch.ones(3))
    (emb @ small.encode_text("a seven").T).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_contrastive_loss_is_symmetric_and_small_when_pairs_align():
    a = torch.eye(4)
    assert C.contrastive_loss(a, a, torch.tensor(100.0)) < 1e-3
    b = torch.randn(4, 8)
    c = torch.randn(4, 8)
    assert C.contrastive_loss(b, c, torch.tensor(5.0)) == pytest.approx(float(C.contrastive_loss(c, b, torch.tensor(5.0))))


def test_zero_shot_temperature_changes_confidence_not_accuracy(small):
    x = torch.rand(20, 1, 28, 28) * 2 - 1
    labels = torch.arange(20) % 10
    cold, hot = (C.zero_shot(small, x, DIGIT_WORDS, ["a {}"], temperature=T) for T in (0.01, 1.0))
    assert torch.equal(cold.pred, hot.pred) and cold.accuracy(labels) == hot.accuracy(labels)
    assert cold.nll(labels) != pytest.approx(hot.nll(labels))
    with pytest.raises(ValueError, match="temperature"):
        C.zero_shot(small, x, DIGIT_WORDS, temperature=0)
    with pytest.raises(ValueError, match="slot"):
        C.zero_shot(small, x, DIGIT_WORDS, ["a digit"])


def test_small_clip_round_trips_through_the_zoo_with_its_bins(tmp_path, small):
    small.set_bins(AttributeBins(thickness=(1.5, 2.0), slant=(-0.1, 0.2), size=(17.0,)))
    zoo.save("tiny-clip", small, info={}, directory=tmp_path)
    back = zoo.load("tiny-clip", directory=tmp_path)
    assert back.bins == small.bins
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(back.encode_image(x), small.encode_image(x))


def test_shipped_small_clip_classifies_digits_zero_shot():
    from lessonlib.data import load_mnist

    if "mnist-clip" not in zoo.manifest():
        pytest.skip("mnist-clip is not in the zoo")
    test = load_mnist("test", limit=500)
    acc = C.zero_shot(zoo.load("mnist-clip"), test.images, DIGIT_WORDS, zero_shot_templates()).accuracy(test.labels)
    assert acc > 0.9


def test_pretrained_path_loads_weights_from_a_local_file(tmp_path):
    import open_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "lessonlib-tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "lessonlib-tiny-test.json")
    torch.manual_seed(0)
    original = open_clip.create_model("lessonlib-tiny-test")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = C.load_pretrained("lessonlib-tiny-test", str(tmp_path / "w.safetensors"))
    x = torch.rand(2, 1, 28, 28) * 2 - 1  # grey 28 x 28 digits: resized and normalised inside
    expected = torch.nn.functional.normalize(original.eval().encode_image(loaded._model_input(x)), dim=-1)
    assert torch.allclose(loaded.encode_image(x), expected, atol=1e-6)
    assert loaded.encode_text("a photo of a cat").shape == (1, 16)


def test_unknown_models_and_tags_fail_with_advice(monkeypatch):
    with pytest.raises(ValueError, match="unknown open_clip model"):
        C.load_pretrained("ViT-Q-99")
    with pytest.raises(ValueError, match="tags"):
        C.load_pretrained("ViT-B-32", "no-such-tag")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("offline, load_pretrained must decide without touching the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(C.open_clip, "create_model", no_network)  # no download retries either
    with pytest.raises(C.PretrainedUnavailable, match="mnist-clip"):
        C.load_pretrained("ViT-B-32", "laion2b_s34b_b79k")


def test_clip_grad_points_uphill_for_both_encoders(small):
    torch.manual_seed(1)
    text = small.encode_text("a thick seven")[0]
    x = torch.randn(2, 1, 28, 28) * 0.5
    t = torch.tensor([300, 300])
    noisy = lambda x, t: small.encode_image(x.clamp(-1.4, 1.4))  # noqa: E731  a stand-in noise-aware tower
    cos = lambda x: (small.encode_image(x.clamp(-1.4, 1.4)) @ text).sum()  # noqa: E731
    g = noisy_clip_grad(noisy, text)(x, t)
    assert g.shape == x.shape and torch.isfinite(g).all()
    assert cos(x + 1e-2 * g / g.norm()) > cos(x)
    with pytest.raises(ValueError, match=r"\(D,\) or \(B, D\)"):
        noisy_clip_grad(noisy, text[None, None])


def test_clean_clip_grad_matches_finite_differences_through_x0_hat():
    """The clean-CLIP direction is d/dx_t cos(E(clip(x0_hat(x_t))), e): checked against central differences
    in float64 along random directions, so the x0_hat chain (through the eps-model too) is really followed."""
    torch.manual_seed(0)
    clip = SmallCLIP(SmallCLIPConfig(vision_width=32, vision_layers=1, text_layers=1, text_width=16)).double().eval()
    schedule = make_schedule("linear", 1000)
    w = torch.randn(1, 1, 28, 28, dtype=torch.float64) * 0.1
    eps_fn = lambda x, t: torch.tanh(x) * w  # a nonlinear stand-in eps-model: its Jacobian matters
    text = clip.encode_text(["a thick seven", "a thin one"])
    x, t = torch.randn(2, 1, 28, 28, dtype=torch.float64) * 0.05, torch.tensor([100, 600])

    def cosine(x):  # written out from the formula, not from the implementation
        a = schedule.abar[t].view(-1, 1, 1, 1)
        x0 = ((x - (1 - a).sqrt() * eps_fn(x, t)) / a.sqrt()).clamp(-1, 1)
        return (clip.encode_image(x0) * text).sum(-1)

    g = clip_grad(clip.encode_image, text, eps_fn=eps_fn, schedule=schedule)(x, t)
    assert x0_from_eps(schedule, x, t, eps_fn(x, t)).abs().max() < 1  # inside the clip range, where cos is smooth
    for _ in range(3):
        v = torch.randn_like(x)
        h = 1e-5
        numeric = (cosine(x + h * v) - cosine(x - h * v)) / (2 * h)
        torch.testing.assert_close((g * v).sum((1, 2, 3)), numeric, rtol=1e-5, atol=1e-8)




class _WordClip:
    """A stand-in CLIP whose text embedding is [1, 0] for "thick" prompts and [0, 1] otherwise."""

    def encode_text(self, texts):
        return torch.tensor([[1.0, 0.0] if "thick" in t else [0.0, 1.0] for t in texts])


def test_attribute_auc_ranks_by_the_text_direction_and_checks_its_input():
    feats = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    words = ["thick"] * 5 + ["thin"] * 5
    auc, half = C.attribute_auc(_WordClip(), feats, words, "three", "thin", "thick")
    assert auc == 1.0 and half < 0.2
    swapped, _ = C.attribute_auc(_WordClip(), feats.flip(0), words, "three", "thin", "thick")
    assert swapped == 0.0
    with pytest.raises(ValueError, match="one word per image"):
        C.attribute_auc(_WordClip(), feats, words[:3], "three", "thin", "thick")
