"""Twin: compare, batches, the embedding cache, search, bad inputs, precision and the CLI."""

from __future__ import annotations

import io
import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twinnet.cli import main
from twinnet.errors import ImageError, TwinnetError
from twinnet.infer.cache import EmbeddingCache
from twinnet.infer.runtime import cpu_has_native_bf16, resolve_runtime
from twinnet.infer.twin import Hit, Twin, list_images

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def twin(random_model_dir) -> Twin:
    return Twin.load(random_model_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def fast(random_model_dir) -> Twin:
    return Twin.load(random_model_dir, device="cpu")


@pytest.fixture(scope="module")
def files(shapes_dir) -> list[Path]:
    return sorted(shapes_dir.rglob("*.png"))


def test_compare_answers_with_the_spec_threshold_and_name(twin, files):
    r = twin.compare(files[0], files[1])
    assert 0.0 <= r.probability <= 1.0
    assert r.same == (r.probability >= twin.spec.threshold)
    assert r.model == twin.name == twin.spec.name
    p = torch.softmax(torch.tensor(r.logits), 0)[1].item()
    assert r.probability == pytest.approx(p, abs=1e-6)


def test_every_input_kind_gives_the_same_answer(twin, files):
    data = files[0].read_bytes()
    ref = twin.compare(files[0], files[1]).logits
    kinds = [str(files[0]), data, bytearray(data), io.BytesIO(data), Image.open(files[0])]
    for left in kinds:
        assert twin.compare(left, files[1]).logits == pytest.approx(ref, abs=1e-6)


def test_fp32_is_exactly_the_plain_pytorch_forward(twin, files):
    from twinnet.core.imaging import build_transforms, decode_image

    pre = build_transforms(twin.spec)
    left, right = (pre(decode_image(f))[None] for f in files[:2])
    with torch.no_grad():
        separate = twin.model(left, right)[0]  # the sample's way: one image per forward
        both = twin.model.encoder(torch.cat([left, right]))  # one forward for the pair, as Twin
        together = twin.model.head(torch.cat([both[:1], both[1:]], dim=1))[0]
    got = torch.tensor(twin.compare(*files[:2]).logits)
    assert torch.equal(got, together)
    torch.testing.assert_close(got, separate, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["twin", "fast"])
def test_batch_equals_single(which, request, files):
    t = request.getfixturevalue(which)
    pairs = [(files[i], files[-1 - i]) for i in range(0, 40, 5)]
    batch = t.compare_batch(pairs)
    for (a, b), r in zip(pairs, batch, strict=True):
        one = t.compare(a, b)
        assert r.same == one.same
        assert r.logits == pytest.approx(one.logits, abs=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_cache_hit_equals_recompute(random_model_dir, files, precision):
    cached = Twin.load(random_model_dir, precision=precision)
    first = cached.embed(files[:6])
    misses = cached.cache.misses
    again = cached.embed(files[:6])
    assert cached.cache.misses == misses and cached.cache.hits >= 6
    recompute = Twin.load(random_model_dir, precision=precision, cache_mb=0).embed(files[:6])
    assert torch.equal(first, again) and torch.equal(first, recompute)
    a = cached.compare(files[0], files[1])
    b = Twin.load(random_model_dir, precision=precision, cache_mb=0).compare(files[0], files[1])
    assert a.logits == b.logits


def test_a_new_pairing_of_seen_images_runs_the_head_only(random_model_dir, files):
    t = Twin.load(random_model_dir, precision="fp32")
    t.embed(files[:4])
    size, misses = len(t.cache), t.cache.misses
    t.compare_batch([(files[0], files[3]), (files[2], files[1])])
    t.search(files[1], files[:4])
    assert len(t.cache) == size and t.cache.misses == misses


def test_cache_is_a_bounded_lru():
    cache = EmbeddingCache(max_mb=1)  # room for 2 of these 400 KB maps
    maps = {k: torch.full((2048, 7, 7), float(i)) for i, k in enumerate("abc")}
    cache.put("a", maps["a"])
    cache.put("b", maps["b"])
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", maps["c"])
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes <= cache.max_bytes
    EmbeddingCache(0).put("x", maps["a"])
    with pytest.raises(ValueError):
        EmbeddingCache(-1)


def test_cache_keys_separate_models_and_precisions(random_model_dir, tmp_path):
    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec

    torch.manual_seed(1)
    spec = ModelSpec(arch="resnet18", image_size=64)
    other = save_model_dir(build_model(spec).eval(), spec, tmp_path / "other")
    a = Twin.load(random_model_dir, precision="fp32")
    assert a.fingerprint == Twin.load(random_model_dir, precision="fp32").fingerprint
    assert a.fingerprint != Twin.load(other, precision="fp32").fingerprint
    if cpu_has_native_bf16():
        assert a.fingerprint != Twin.load(random_model_dir, precision="auto").fingerprint


def test_search_ranks_by_the_same_probability_as_compare(twin, files):
    gallery = files[::6]
    hits = twin.search(files[0], gallery, top_k=4)
    assert len(hits) == 4 and all(isinstance(h, Hit) for h in hits)
    probs = [h.probability for h in hits]
    assert probs == sorted(probs, reverse=True)
    for h in hits:
        assert h.item == gallery[h.index]
        assert h.probability == pytest.approx(twin.compare(files[0], h.item).probability, abs=1e-5)
    everything = twin.search(files[0], gallery, top_k=None)
    assert len(everything) == len(gallery)
    scores = twin.scores(files[0], gallery)
    assert max(scores) == pytest.approx(hits[0].probability)


def test_search_over_a_folder(twin, shapes_dir, files):
    hits = twin.search(files[0], shapes_dir, top_k=3)
    assert [h.item for h in hits] == [list_images(shapes_dir)[h.index] for h in hits]
    with pytest.raises(TwinnetError, match="top_k"):
        twin.search(files[0], shapes_dir, top_k=0)


def test_bad_inputs_raise_image_error_naming_them(twin, files, tmp_path):
    with pytest.raises(ImageError, match="left: empty input") as info:
        twin.compare(b"", files[0])
    assert info.value.field == "left"
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageError, match="right image .*missing.jpg: no such file") as info:
        twin.compare(files[0], missing)
    assert info.value.field == "right"
    with pytest.raises(ImageError, match="pair 1: right: not a readable image"):
        twin.compare_batch([(files[0], files[1]), (files[0], b"not an image")])
    with pytest.raises(ImageError, match="query"):
        twin.search(b"\x00" * 10, files[:3])


def test_one_bad_pair_fails_alone_when_asked(twin, files):
    out = twin.compare_batch(
        [(files[0], files[1]), (b"junk", files[2]), (files[3], files[4])], return_exceptions=True
    )
    assert isinstance(out[1], ImageError) and out[1].field == "left"
    assert out[0].logits == pytest.approx(twin.compare(files[0], files[1]).logits, abs=1e-5)
    assert out[2].logits == pytest.approx(twin.compare(files[3], files[4]).logits, abs=1e-5)


def test_concurrent_compares_match_serial(random_model_dir, files):
    t = Twin.load(random_model_dir, precision="fp32", cache_mb=1)
    pairs = [(files[i], files[i + 20]) for i in range(0, 60, 4)]
    serial = [t.compare(a, b).logits for a, b in pairs]
    t.cache.clear()
    out: dict[int, tuple] = {}

    def work(offset: int) -> None:
        for k in range(offset, len(pairs), 4):
            out[k] = t.compare(*pairs[k]).logits

    threads = [threading.Thread(target=work, args=(o,)) for o in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k, logits in out.items():
        assert logits == pytest.approx(serial[k], abs=1e-5)
    assert len(out) == len(pairs)


def test_runtime_choices(random_model_dir):
    rt = resolve_runtime("cpu", "fp32")
    assert not rt.fast and rt.precision == "fp32"
    auto = resolve_runtime("cpu", "auto")
    assert auto.bf16 == cpu_has_native_bf16() and auto.channels_last
    with pytest.raises(TwinnetError, match="precision"):
        resolve_runtime("cpu", "fp8")
    before = torch.get_num_threads()
    try:
        assert Twin.load(random_model_dir, threads=1).runtime.threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_seed_import_resnet50_gives_the_logits_of_a_plain_pytorch_forward(tmp_path, shared_data):
    """The sample's weights, imported, compared through Twin: same logits as the sample's code."""
    import torchvision
    from torch import nn
    from torchvision import transforms

    from twinnet.core.artifacts import import_seed
    from twinnet.core.model import AdaptiveConcatPool2d

    torch.manual_seed(0)
    encoder = nn.Sequential(*list(torchvision.models.resnet50().children())[:-2])
    head = nn.Sequential(
        AdaptiveConcatPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(8192),
        nn.Dropout(0.05),
        nn.Linear(8192, 512, bias=False),
        nn.ReLU(True),
        nn.BatchNorm1d(512),
        nn.Dropout(0.1),
        nn.Linear(512, 2, bias=False),
    )
    with torch.no_grad():
        for m in [*encoder.modules(), *head.modules()]:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    torch.save(encoder.state_dict(), tmp_path / "encoder_weight.pth")
    torch.save(head.state_dict(), tmp_path / "head_weight.pth")
    model_dir = import_seed(
        tmp_path / "encoder_weight.pth", tmp_path / "head_weight.pth", tmp_path / "m"
    )

    left, right = shared_data / "samples" / "c1.jpg", shared_data / "samples" / "c2.jpg"
    tfm = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    encoder.eval(), head.eval()
    with torch.no_grad():
        lt = tfm(Image.open(left).convert("RGB"))[None]
        rt = tfm(Image.open(right).convert("RGB"))[None]
        ref = head(torch.cat([encoder(lt), encoder(rt)], dim=1))[0].numpy()
    got = Twin.load(model_dir, device="cpu", precision="fp32", cache_mb=0).compare(left, right)
    np.testing.assert_allclose(got.logits, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- bf16 agreement
#: The stated bound for precision="auto" (bf16 encoder, fp32 head) against fp32:
#: decisions identical on >= 99% of pairs, and every logit within LOGIT_ATOL + LOGIT_RTOL*|logit|.
AGREEMENT = 0.99
LOGIT_ATOL, LOGIT_RTOL = 0.3, 0.02


def _labelled(root: Path, pattern: str) -> tuple[list[Path], list[str]]:
    files = sorted(root.rglob(pattern))
    return files, [p.parent.name for p in files]


def _pairs(labels: list[str], n: int, rng: random.Random) -> list[tuple[int, int]]:
    by: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by.setdefault(lab, []).append(i)
    out = []
    for k in range(n):
        a = rng.randrange(len(labels))
        out.append((a, rng.choice(by[labels[a]]) if k % 2 else rng.randrange(len(labels))))
    return out


def _fit_head(twin: Twin, files: list[Path], labels: list[str], rng: random.Random) -> None:
    """Fit the head on fp32 features of real pairs, so decisions mean something."""
    feats = twin.embed(files)
    pairs = _pairs(labels, 3000, rng)
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    y = torch.tensor([int(labels[i] == labels[j]) for i, j in pairs])
    head = twin.model.head.train()
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        perm = torch.randperm(len(pairs), generator=gen)
        for s in range(0, len(pairs), 128):
            j = perm[s : s + 128]
            loss = torch.nn.functional.cross_entropy(
                head(torch.cat([feats[a[j]], feats[b[j]]], 1)), y[j]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    for p in head.parameters():
        p.grad = None


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16: auto is fp32")
def test_default_precision_agrees_with_fp32(tmp_path, request):
    """A resnet18 encoder (seeded) with a head fitted on real pairs: on held-out real pairs the
    default path must keep decisions and logits within the stated bound."""
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec

    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if shared.is_dir():
        fit_files, fit_labels = _labelled(shared / "att-faces", "*.pgm")
        people = sorted(set(fit_labels))
        held = set(people[len(people) // 2 :])
        train = [i for i, lab in enumerate(fit_labels) if lab not in held]
        test = [i for i, lab in enumerate(fit_labels) if lab in held]
        pets, pet_labels = _labelled(shared / "oxford-pets-sample", "*.jpg")
        evaluation = [
            ([fit_files[i] for i in test], [fit_labels[i] for i in test], 600),
            (pets, pet_labels, 400),
        ]
        fit_files, fit_labels = [fit_files[i] for i in train], [fit_labels[i] for i in train]
    else:
        from twinnet.data.datasets import make_shapes_dataset

        root = make_shapes_dataset(tmp_path / "shapes", classes=8, per_class=30, size=96, seed=3)
        files, labels = _labelled(root, "*.png")
        half = len(files) // 2
        order = random.Random(0).sample(range(len(files)), len(files))
        fit_files = [files[i] for i in order[:half]]
        fit_labels = [labels[i] for i in order[:half]]
        evaluation = [([files[i] for i in order[half:]], [labels[i] for i in order[half:]], 800)]

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", image_size=64)
    model = build_model(spec).eval()
    ref = Twin.from_model(model, spec, precision="fp32")
    rng = random.Random(0)
    _fit_head(ref, fit_files, fit_labels, rng)
    fast = Twin.from_model(model, spec, precision="auto")
    assert fast.precision == "bf16"

    agree, total, worst = 0, 0, -np.inf
    for files, labels, n in evaluation:
        pairs = [(files[i], files[j]) for i, j in _pairs(labels, n, rng)]
        lo32 = np.array([r.logits for r in ref.compare_batch(pairs)])
        lo16 = np.array([r.logits for r in fast.compare_batch(pairs)])
        agree += int(((lo32[:, 1] >= lo32[:, 0]) == (lo16[:, 1] >= lo16[:, 0])).sum())
        total += len(pairs)
        excess = np.abs(lo16 - lo32) - (LOGIT_ATOL + LOGIT_RTOL * np.abs(lo32))
        worst = max(worst, float(excess.max()))
        print(f"bf16 vs fp32 on {len(pairs)} pairs: max |dlogit| {np.abs(lo16 - lo32).max():.3f}")
    print(f"decisions agree on {agree}/{total}; worst excess {worst:.3f}")
    assert agree / total >= AGREEMENT, f"decisions agree on {agree}/{total} pairs"
    assert worst <= 0.0, f"a logit is {worst:.3f} beyond the stated tolerance"


# --------------------------------------------------------------------------- CLI
def test_cli_compare_text_json_and_cam_picture(random_model_dir, files, tmp_path, capsys):
    a, b = str(files[0]), str(files[-1])
    assert main(["compare", a, b, "-m", str(random_model_dir)]) == 0
    assert capsys.readouterr().out.split()[0] in ("Same", "Different")
    out_png = tmp_path / "cam" / "pair.png"
    argv = ["compare", a, b, "-m", str(random_model_dir), "--json", "--cam", str(out_png)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"same", "probability", "logits", "threshold", "model", "cam"}
    picture = Image.open(out_png)
    assert picture.width > 4 * 64 and picture.height > 64


def test_cli_search_json(random_model_dir, files, shapes_dir, capsys):
    argv = ["search", str(files[0]), str(shapes_dir), "-m", str(random_model_dir), "--top-k", "3"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["hits"]) == 3 and data["hits"][0]["rank"] == 1
    probs = [h["probability"] for h in data["hits"]]
    assert probs == sorted(probs, reverse=True)


def test_cli_errors_are_one_line(random_model_dir, files, tmp_path, capsys, monkeypatch):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    assert main(["compare", str(files[0]), str(junk), "-m", str(random_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: right image") and "junk.jpg" in err
    monkeypatch.delenv("TWINNET_MODEL", raising=False)
    assert main(["compare", str(files[0]), str(files[1])]) == 2
    assert "no model" in capsys.readouterr().err


# ------------------------------------------------------------------------ cache keys of PIL images
def _palette_image(seed: int, size: int = 64) -> Image.Image:
    """Index bytes fixed, palette drawn from ``seed``."""
    idx = (np.arange(size * size).reshape(size, size) % 256).astype(np.uint8)
    img = Image.frombytes("P", (size, size), idx.tobytes())
    img.putpalette(np.random.default_rng(seed).integers(0, 256, 768, np.uint8).tobytes())
    return img


def _oriented(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` reopened from a PNG whose EXIF says how to turn it for viewing."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buf.getvalue()))


def _pil_twins() -> dict[str, tuple[Image.Image, Image.Image]]:
    """Pairs of PIL images with equal mode, size and raw bytes but different decoded pixels."""
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8))
    transparent = _palette_image(3)
    transparent.info["transparency"] = 5
    return {
        "palette": (_palette_image(1), _palette_image(2)),
        "exif-orientation": (_oriented(photo, 1), _oriented(photo, 6)),
        "transparency": (_palette_image(3), transparent),
    }


@pytest.mark.parametrize("case", list(_pil_twins()))
def test_pil_images_that_decode_differently_do_not_share_a_cache_entry(random_model_dir, case):
    t = Twin.load(random_model_dir, device="cpu", precision="fp32", threads=1)
    a, b = _pil_twins()[case]
    assert (a.mode, a.size, a.tobytes()) == (b.mode, b.size, b.tobytes())
    ea, eb = t.embed(a), t.embed(b)
    t.cache.clear()
    fresh = t.embed(b)
    assert torch.equal(eb, fresh)  # what the cache gave is what b really encodes to
    assert not torch.equal(ea, fresh)
    # Equal pixels still share an entry: the same picture again is a cache hit.
    hits = t.cache.hits
    assert torch.equal(t.embed(b.copy()), fresh)
    assert t.cache.hits == hits + 1
