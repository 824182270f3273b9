"""fastmix.kernels.resize.resize_with_pad against PIL itself: the native kernel must be bit-identical to
`PIL.Image.resize((rw, rh), BILINEAR)` pasted centred on a zero canvas (openpi's `image_tools.resize_with_pad`),
on random, extreme and real decoded video frames, with whatever Pillow is installed; PIL serves what the native
kernel cannot prove."""

from __future__ import annotations

import warnings

import numpy as np
import PIL
import pytest
from PIL import Image

from fastmix.kernels import resize as R

RNG = np.random.default_rng(12)


def pil_resize_with_pad(image: np.ndarray, height: int, width: int, method: int = Image.BILINEAR) -> np.ndarray:
    """Independent reference for one (H, W, C) uint8 image: openpi's geometry, PIL's resize (1 channel as
    mode "L"), pasted on a zero canvas."""
    h, w, c = image.shape
    if (h, w) == (height, width):
        return image
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    plane = image[..., 0] if c == 1 else image
    small = np.asarray(Image.fromarray(plane).resize((rw, rh), resample=method)).reshape(rh, rw, c)
    canvas = np.zeros((height, width, c), np.uint8)
    top, left = max(0, int((height - rh) / 2)), max(0, int((width - rw) / 2))
    canvas[top:top + rh, left:left + rw] = small
    return canvas


def reference(images: np.ndarray, height: int, width: int, method: int = Image.BILINEAR) -> np.ndarray:
    flat = images.reshape(-1, *images.shape[-3:])
    out = np.stack([pil_resize_with_pad(im, height, width, method) for im in flat])
    return out.reshape(*images.shape[:-3], *out.shape[1:])


def extremes(h: int, w: int, c: int) -> np.ndarray:
    """All 0, all 255, 0/255 checkerboards of 1- and 3-pixel cells, vertical stripes, a single bright pixel."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    planes = [np.zeros((h, w)), np.full((h, w), 255), ((yy + xx) % 2) * 255, ((yy // 3 + xx // 3) % 2) * 255,
              (xx % 2) * 255, np.zeros((h, w))]
    planes[-1][h // 2, w // 2] = 255
    return np.stack([np.repeat(p[:, :, None], c, axis=2) for p in planes]).astype(np.uint8)


@pytest.fixture(autouse=True)
def fresh_plans(monkeypatch):
    """Each test decides its geometries afresh (the self-check cache is process-wide)."""
    monkeypatch.setattr(R, "_plans", {})


GEOMETRIES = [  # (H, W) -> (height, width)
    ((256, 256), (224, 224)),   # LIBERO -> pi0
    ((480, 640), (224, 224)),   # pads top/bottom
    ((180, 320), (224, 224)),   # upscale with padding
    ((640, 480), (224, 224)),   # pads left/right
    ((64, 64), (40, 56)),
    ((7, 13), (100, 33)),       # tiny, upscaled a lot
    ((1, 9), (224, 224)),       # 1 x N
    ((9, 1), (30, 40)),         # N x 1
    ((33, 33), (32, 32)),       # barely down
    ((100, 200), (400, 400)),   # 2x up, exact ratio
    ((224, 300), (224, 224)),   # one axis barely changes
    ((301, 47), (96, 128)),     # odd sizes, strong reduction in height
    ((300, 50), (17, 170)),     # Pillow 13 resamples this one vertically first
    ((50, 300), (170, 17)),
    ((97, 131), (61, 89)),
]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("src", "dst"), GEOMETRIES)
def test_random_and_extreme_images_equal_pil(src, dst, channels):
    h, w = src
    images = np.concatenate([RNG.integers(0, 256, size=(4, h, w, channels), dtype=np.uint8),
                             extremes(h, w, channels)])
    got = R.resize_with_pad(images, *dst)
    assert got.shape == (len(images), *dst, channels) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, reference(images, *dst))
    if 1 not in src:  # a 1-pixel axis makes both pass orders equal on every image: PIL keeps those
        assert R.native_geometry_ok(images.shape, *dst), "the native kernel should serve this geometry"


def test_main_geometries_are_native_and_batch_dims_kept():
    images = RNG.integers(0, 256, size=(2, 3, 256, 256, 3), dtype=np.uint8)
    out = R.resize_with_pad(images, 224, 224)
    assert out.shape == (2, 3, 224, 224, 3)
    np.testing.assert_array_equal(out, reference(images, 224, 224))
    for shape in [(256, 256, 3), (480, 640, 3), (180, 320, 3)]:
        assert R.native_geometry_ok(shape, 224, 224)


def test_identity_out_and_non_contiguous_input():
    images = RNG.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    assert R.resize_with_pad(images, 8, 8) is images
    wide = RNG.integers(0, 256, size=(3, 40, 60, 3), dtype=np.uint8)
    view = wide[:, ::2, ::2]  # (3, 20, 30, 3), not contiguous
    out = np.full((3, 24, 24, 3), 9, np.uint8)
    assert R.resize_with_pad(view, 24, 24, out=out) is out
    np.testing.assert_array_equal(out, reference(np.ascontiguousarray(view), 24, 24))


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_images_go_through_pil(channels):
    """LA / RGBA: PIL resizes them with premultiplied alpha, which the kernel does not replicate."""
    images = RNG.integers(0, 256, size=(2, 50, 70, channels), dtype=np.uint8)
    np.testing.assert_array_equal(R.resize_with_pad(images, 32, 32), reference(images, 32, 32))
    assert not R.native_geometry_ok(images.shape, 32, 32)


@pytest.mark.parametrize("method", [Image.NEAREST, Image.BICUBIC, Image.LANCZOS])
def test_other_filters_go_through_pil(method):
    images = RNG.integers(0, 256, size=(2, 50, 70, 3), dtype=np.uint8)
    np.testing.assert_array_equal(R.resize_with_pad(images, 32, 48, method=method),
                                  reference(images, 32, 48, method))


def test_bilinear_constant_is_pils():
    assert R.BILINEAR == Image.BILINEAR == Image.Resampling.BILINEAR


def test_without_the_native_symbol_pil_serves(monkeypatch):
    from fastmix.kernels import backend

    monkeypatch.delattr(backend.native(), "resize_with_pad_u8")
    images = RNG.integers(0, 256, size=(3, 256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(R.resize_with_pad(images, 224, 224), reference(images, 224, 224))
    assert not R.native_geometry_ok(images.shape, 224, 224)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_backend_switch_turns_the_native_kernel_off(monkeypatch, channels):
    """FASTMIX_BACKEND=numba: no native kernel (resize has no numba twin), PIL serves, same pixels; a geometry
    checked natively before is not used natively while the switch is off, and is again after."""
    images = np.concatenate([RNG.integers(0, 256, size=(3, 256, 256, channels), dtype=np.uint8),
                             extremes(256, 256, channels)])
    want = reference(images, 224, 224)
    monkeypatch.delenv("FASTMIX_BACKEND", raising=False)
    np.testing.assert_array_equal(R.resize_with_pad(images, 224, 224), want)
    assert R.native_geometry_ok(images.shape, 224, 224)

    monkeypatch.setenv("FASTMIX_BACKEND", "numba")
    assert R._kernel() is None and not R.native_geometry_ok(images.shape, 224, 224)
    pil_calls = []
    real = R._pil_resized
    monkeypatch.setattr(R, "_pil_resized", lambda *a, **k: (pil_calls.append(1), real(*a, **k))[1])
    out = np.full((len(images), 224, 224, channels), 7, np.uint8)
    assert R.resize_with_pad(images, 224, 224, out=out) is out
    np.testing.assert_array_equal(out, want)
    assert len(pil_calls) == int(images.reshape(len(images), -1).any(axis=1).sum())  # all-zero images: no PIL

    monkeypatch.setenv("FASTMIX_BACKEND", "native")
    assert R.native_geometry_ok(images.shape, 224, 224)
    pil_calls.clear()
    np.testing.assert_array_equal(R.resize_with_pad(images, 224, 224), want)
    assert not pil_calls


def test_a_self_check_mismatch_warns_once_and_pil_serves(monkeypatch):
    kernel = R._kernel()

    def off_by_one(src, out, *args):  # a kernel that is wrong by one level on one pixel
        kernel(src, out, *args)
        out[:, out.shape[1] // 2, out.shape[2] // 2, 0] ^= 1

    monkeypatch.setattr(R, "_kernel", lambda: off_by_one)
    images = RNG.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)

    with pytest.warns(RuntimeWarning, match="64x64x3 -> 40x56") as record:
        got = R.resize_with_pad(images, 40, 56)
    assert f"Pillow {PIL.__version__}" in str(record[0].message)
    np.testing.assert_array_equal(got, reference(images, 40, 56))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per geometry
        np.testing.assert_array_equal(R.resize_with_pad(images, 40, 56), got)
    assert not R.native_geometry_ok(images.shape, 40, 56)


def test_transforms_resize_with_pad_delegates_and_equals_pil():
    from fastmix.openpi import transforms as T

    images = RNG.integers(0, 256, size=(4, 480, 640, 3), dtype=np.uint8)
    images[1] = 0
    np.testing.assert_array_equal(T.resize_with_pad(images, 224, 224), reference(images, 224, 224))
    out = T.ResizeImages(224, 224).batch({"image": {"base_0_rgb": images}})["image"]["base_0_rgb"]
    np.testing.assert_array_equal(out, reference(images, 224, 224))


def test_equals_openpi_client_when_installed():
    image_tools = pytest.importorskip("openpi_client.image_tools")
    images = RNG.integers(0, 256, size=(3, 256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(R.resize_with_pad(images, 224, 224),
                                  image_tools.resize_with_pad(images, 224, 224))


def _synthetic_video(path, n: int, h: int, w: int, codec: str) -> None:
    """n frames of a moving, textured scene (gradients, a bright square, noise), encoded with `codec`."""
    import av

    rng = np.random.default_rng(3)
    texture = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            frame = np.stack([(xx * 2 + i * 3) % 256, (yy * 2 + i) % 256, (xx + yy + i * 5) % 256], axis=2)
            frame = ((frame.astype(np.uint16) + texture) // 2).astype(np.uint8)
            y0, x0 = (i * 2) % (h - 40), (i * 3) % (w - 40)
            frame[y0:y0 + 40, x0:x0 + 40] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(("codec", "size", "target"), [("libx264", (256, 256), (224, 224)),
                                                       ("libx264", (240, 320), (224, 224)),
                                                       ("libsvtav1", (256, 256), (224, 224))])
def test_decoded_video_frames_equal_pil(tmp_path, codec, size, target):
    av = pytest.importorskip("av")
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} encoder not available")
    path = tmp_path / f"clip_{codec}.mp4"
    _synthetic_video(path, 200, *size, codec)
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames.shape == (200, *size, 3)
    got = R.resize_with_pad(frames, *target)
    np.testing.assert_array_equal(got, reference(frames, *target))
    assert R.native_geometry_ok(frames.shape, *target)


def test_portable_code_path_equals_pil_too(tmp_path):
    """The AVX2 horizontal pass is bypassed with FASTMIX_RESIZE_SCALAR=1: the portable loop must agree too."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_resize_native import reference, GEOMETRIES\n"
        "from fastmix.kernels import resize as R\n"
        "rng = np.random.default_rng(5)\n"
        "for (h, w), dst in GEOMETRIES:\n"
        "    ims = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)\n"
        "    assert np.array_equal(R.resize_with_pad(ims, *dst), reference(ims, *dst)), (h, w, dst)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "FASTMIX_RESIZE_SCALAR": "1"}
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", script, here], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
