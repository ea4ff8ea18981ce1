"""Grad-CAM: the sample's math, localisation on a pair with a known difference, no leftovers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from twinnet.core.imaging import build_transforms, decode_image
from twinnet.core.model import build_model
from twinnet.core.spec import ModelSpec
from twinnet.infer.explain import heatmap, normalize_cam, overlay, side_by_side, upsample_cam
from twinnet.infer.twin import Twin

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def twin(random_model_dir) -> Twin:
    return Twin.load(random_model_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def pair(shapes_dir) -> tuple:
    files = sorted(shapes_dir.rglob("*.png"))
    return files[0], files[-1]


def sample_grad_cam(model, spec, left_path, right_path):
    """The original sample's Grad-CAM, written out: activations of the encoder's output,
    backward of the predicted logit, channel weights = mean gradient, sum over channels."""
    pre = build_transforms(spec)
    left = pre(decode_image(left_path))[None]
    right = pre(decode_image(right_path))[None]
    l_emb, r_emb = model.encoder(left), model.encoder(right)
    l_emb.retain_grad()
    r_emb.retain_grad()
    res = model.head(torch.cat([l_emb, r_emb], dim=1))[0]
    res[res.argmax().item()].backward()
    cam_l = (l_emb.grad[0].mean(dim=[1, 2], keepdim=True) * l_emb[0]).sum(0)
    cam_r = (r_emb.grad[0].mean(dim=[1, 2], keepdim=True) * r_emb[0]).sum(0)
    model.zero_grad(set_to_none=True)
    return res.detach().numpy(), cam_l.detach().numpy(), cam_r.detach().numpy()


def test_maps_match_the_original_samples_math(random_model_dir, pair):
    twin = Twin.load(random_model_dir, device="cpu", precision="fp32", cache_mb=0)
    logits, ref_l, ref_r = sample_grad_cam(twin.model, twin.spec, *pair)
    result = twin.compare(*pair, cam=True)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.cam_left, ref_l, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.cam_right, ref_r, rtol=1e-4, atol=1e-5)


def test_maps_are_float32_at_encoder_resolution(twin, pair):
    r = twin.compare(*pair, cam=True)
    side = twin.spec.feature_size
    for cam in (r.cam_left, r.cam_right):
        assert isinstance(cam, np.ndarray) and cam.dtype == np.float32 and cam.shape == (side, side)
    assert r.to_dict()["cam"]["left"] == r.cam_left.astype(float).tolist()
    plain = twin.compare(*pair)
    assert plain.cam_left is None and "cam" not in plain.to_dict()
    assert plain.logits == pytest.approx(r.logits, abs=1e-6)


def test_no_hooks_or_parameter_gradients_are_left_behind(twin, pair):
    twin.compare(*pair, cam=True)
    for module in twin.model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not module._forward_pre_hooks and not module._backward_pre_hooks
    assert all(p.grad is None for p in twin.model.parameters())


def test_requests_in_a_row_and_from_threads_do_not_interfere(twin, shapes_dir):
    files = sorted(shapes_dir.rglob("*.png"))[::7][:8]
    pairs = list(zip(files[:4], files[4:8], strict=True))
    serial = [twin.compare(a, b, cam=True) for a, b in pairs]
    again = [twin.compare(a, b, cam=True) for a, b in pairs]
    for s, g in zip(serial, again, strict=True):
        assert np.array_equal(s.cam_left, g.cam_left) and np.array_equal(s.cam_right, g.cam_right)

    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                results[k] = twin.compare(*pairs[k % 4], cam=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, r in results.items():
        ref = serial[k % 4]
        np.testing.assert_allclose(r.cam_left, ref.cam_left, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.cam_right, ref.cam_right, rtol=1e-5, atol=1e-6)


def test_batched_maps_equal_single_maps(twin, shapes_dir):
    files = sorted(shapes_dir.rglob("*.png"))[::9][:6]
    pairs = list(zip(files[:3], files[3:6], strict=True))
    batch = twin.compare_batch(pairs, cam=True)
    for (a, b), r in zip(pairs, batch, strict=True):
        one = twin.compare(a, b, cam=True)
        np.testing.assert_allclose(r.cam_left, one.cam_left, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r.cam_right, one.cam_right, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- localisation
SIZE, GRID, STRIDE = 224, 7, 32


def local_change_detector() -> tuple[torch.nn.Module, ModelSpec]:
    """A twin whose "different" logit is the mean absolute difference of pooled features.

    Encoder: a random resnet18 whose residual branches are switched off (last batch norm of
    each block zeroed), so feature cell (i, j) sees only the pixels around (32 i, 32 j)
    through the stem's 7x7 convolution: a real ResNet, but with known locality.
    Head: hidden units relu(avg_right - avg_left) and relu(avg_left - avg_right) per channel;
    logit 0 ("different") is their mean minus a tiny margin, logit 1 ("same") is 0.
    """
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    c = 512
    spec = ModelSpec(arch="resnet18", image_size=SIZE, head_hidden=2 * c)
    model = build_model(spec).eval()
    head = model.head
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, BasicBlock):
                m.bn2.weight.zero_()
                m.bn2.bias.zero_()
        for bn in (head[2], head[6]):
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.zero_()
        eye = torch.eye(c)
        w1 = torch.zeros(2 * c, 4 * c)  # head input: [max L, max R, avg L, avg R]
        w1[:c, 3 * c :], w1[:c, 2 * c : 3 * c] = eye, -eye
        w1[c:, 2 * c : 3 * c], w1[c:, 3 * c :] = eye, -eye
        head[4].weight.copy_(w1)
        head[6].running_mean.fill_(1e-4)
        w2 = torch.zeros(2, 2 * c)
        w2[0] = 1.0 / c
        head[8].weight.copy_(w2)
    return model, spec


def scene(rng: np.random.Generator, avoid: tuple[int, int]) -> Image.Image:
    """A smooth, mostly green/blue background with white, black and blue squares elsewhere."""
    low = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    low[..., 0] //= 3
    img = Image.fromarray(low).resize((SIZE, SIZE), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    cells = [(i, j) for i in range(GRID) for j in range(GRID) if (i, j) != avoid]
    picks = rng.choice(len(cells), 3, replace=False)
    for k, colour in zip(picks, [(255, 255, 255), (0, 0, 0), (20, 20, 230)], strict=True):
        x, y = cells[k][0] * STRIDE, cells[k][1] * STRIDE
        draw.rectangle([x - 8, y - 8, x + 8, y + 8], fill=colour)
    return img


def with_disc(img: Image.Image, cell: tuple[int, int]) -> Image.Image:
    out = img.copy()
    cx, cy = cell[0] * STRIDE + 4, cell[1] * STRIDE + 4
    ImageDraw.Draw(out).ellipse([cx - 12, cy - 12, cx + 12, cy + 12], fill=(230, 20, 20))
    return out


def cosine_change_detector() -> tuple[torch.nn.Module, ModelSpec]:
    """The same local encoder with a cosine head whose embedding is the average-pooled map.

    The calibration puts the decision just below a cosine of 1, so any local change makes
    the pair "different" and identical images stay "same".
    """
    local, _ = local_change_detector()
    c = 512
    spec = ModelSpec(
        arch="resnet18",
        image_size=SIZE,
        head="cosine",
        embedding_dim=c,
        calibration={"scale": 1e5, "bias": -1e5 * 0.99995},
    )
    model = build_model(spec).eval()
    model.encoder.load_state_dict(local.encoder.state_dict())
    emb = model.head.embedding  # concat-pool [max, avg], BN, dropout, linear, BN
    with torch.no_grad():
        for bn in (emb[2], emb[5]):
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.zero_()
        w = torch.zeros(c, 2 * c)
        w[:, c:] = torch.eye(c)  # the average-pooled half
        emb[4].weight.copy_(w)
    return model, spec


@pytest.mark.parametrize("detector", [local_change_detector, cosine_change_detector])
def test_cam_peaks_where_the_two_images_differ(detector):
    model, spec = detector()
    twin = Twin.from_model(model, spec, device="cpu", precision="fp32")
    rng = np.random.default_rng(0)
    cells = [(0, 0), (6, 6), (1, 5), (5, 1), (3, 3), (2, 0), (6, 2), (0, 4), (4, 5), (3, 6)]
    activation_peaks = 0
    for n, cell in enumerate(cells):
        base = scene(rng, cell)
        changed = with_disc(base, cell)
        on_right = n % 2 == 0
        r = (
            twin.compare(base, changed, cam=True)
            if on_right
            else twin.compare(changed, base, cam=True)
        )
        assert not r.same, f"the detector must see the disc at {cell}"
        cam = r.cam_right if on_right else r.cam_left
        row, col = np.unravel_index(np.argmax(cam), cam.shape)
        assert (col, row) == cell, f"CAM peaks at {(col, row)}, the disc is at {cell}"
        # The identical pair is "same": nothing to explain, so the change is what the map shows.
        assert twin.compare(base, base).same
        act = twin.feature_maps(changed)[0].sum(0).numpy()
        activation_peaks += np.unravel_index(np.argmax(act), act.shape)[::-1] == cell
    # Without the gradient weighting the disc is not where the activations peak: the test
    # depends on Grad-CAM's weighting, not on the disc merely being bright.
    assert activation_peaks <= len(cells) // 2


# --------------------------------------------------------------------------- overlays
def test_upsample_and_normalize():
    cam = np.arange(4, dtype=np.float32).reshape(2, 2)
    up = upsample_cam(cam, (40, 30))
    assert up.shape == (30, 40) and up.dtype == np.float32
    assert up.min() >= 0 and up.max() <= 3
    n = normalize_cam(cam)
    assert n.min() == 0 and n.max() == 1
    assert not normalize_cam(np.full((2, 2), 5.0)).any()


@pytest.mark.parametrize("method", ["squish", "crop", "pad"])
def test_overlay_keeps_the_original_size_and_aspect(method):
    img = Image.new("RGB", (300, 120), (128, 128, 128))
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[3, 6] = 1.0  # hot on the right edge
    out = overlay(img, cam, method)
    assert out.size == (300, 120) and out.mode == "RGB"
    arr = np.asarray(out).astype(int)
    if method == "crop":  # the map covers the centred square only; margins are untouched
        assert (arr[:, :80] == 128).all() and (arr[:, -80:] == 128).all()
    else:
        assert (arr != 128).any()
    assert heatmap(cam, (300, 120), method).size == (300, 120)


def test_twin_overlay_draws_over_the_original_image(twin, tmp_path):
    photo = Image.new("RGB", (200, 100), (90, 90, 90))
    photo.save(tmp_path / "p.png")
    r = twin.compare(tmp_path / "p.png", tmp_path / "p.png", cam=True)
    out = twin.overlay(tmp_path / "p.png", r.cam_left)
    assert out.size == (200, 100)


def test_side_by_side_scales_each_panel_to_its_own_aspect():
    panels = [Image.new("RGB", (200, 100)), Image.new("RGB", (100, 200))]
    out = side_by_side(panels, caption="Same", height=100, gap=10)
    assert out.size == (200 + 50 + 3 * 10, 100 + 28 + 2 * 10)
