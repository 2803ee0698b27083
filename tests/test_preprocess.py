"""Image loading and preprocessing: every Pillow mode becomes 8-bit RGB, bad input is a UserError naming the path,
and the slide grid / canvas size match mmseg's GroupViT test pipeline (img_scale (2048, 448), crop 448, stride 224)."""

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groupvit_edge.artifact import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from groupvit_edge.errors import UserError
from groupvit_edge.segmentation.preprocess import (list_images, load_image, normalize, prepare, sliding_windows,
                                                   to_rgb)

COCO = Path(__file__).resolve().parents[1].parent / "shared/data/coco/eval2017/images"
LANDSCAPE = COCO / "000000001000.jpg"   # 640x480
PORTRAIT = COCO / "000000002532.jpg"    # 480x640

needs_coco = pytest.mark.skipif(not LANDSCAPE.is_file() or not PORTRAIT.is_file(), reason="COCO eval images absent")


# ---------------------------------------------------------------- independent transcriptions of mmcv / mmseg

def mmcv_rescale_size(w, h, scale=(2048, 448)):
    """mmcv.rescale_size(keep_ratio) as used by mmseg's Resize: (new_w, new_h)."""
    max_long, max_short = max(scale), min(scale)
    factor = min(max_long / max(h, w), max_short / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def mmseg_slide_boxes(h_img, w_img, h_crop, w_crop, h_stride, w_stride):
    """The crop loop of mmseg's EncoderDecoder.slide_inference, as (top, left, height, width)."""
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            boxes.append((y1, x1, y2 - y1, x2 - x1))
    return boxes


def reference_canvas(image, canvas_w, canvas_h):
    """The resized image normalised by hand: 3xHxW float32."""
    pixels = np.asarray(image.resize((canvas_w, canvas_h), Image.BILINEAR), dtype=np.float64)
    return ((pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)


def check_windows(prepared, image, preprocess):
    """Windows are the canvas crops at the boxes, zero (mean colour) elsewhere."""
    canvas_h, canvas_w = prepared.canvas_size
    canvas = reference_canvas(image, canvas_w, canvas_h)
    assert prepared.windows.dtype == np.float32
    assert prepared.windows.shape == (len(prepared.boxes), 3, preprocess.height, preprocess.width)
    covered = np.zeros((canvas_h, canvas_w), dtype=bool)
    for window, (top, left, box_h, box_w) in zip(prepared.windows, prepared.boxes):
        np.testing.assert_allclose(window[:, :box_h, :box_w], canvas[:, top:top + box_h, left:left + box_w],
                                   atol=1e-5)
        assert not window[:, box_h:, :].any() and not window[:, :, box_w:].any()
        covered[top:top + box_h, left:left + box_w] = True
    assert covered.all()


def save(tmp_path, image, name, **params):
    path = tmp_path / name
    image.save(path, **params)
    return path


def stored_mode(path):
    with Image.open(path) as image:
        return image.mode


def pixels(image):
    assert image.mode == "RGB"
    return np.asarray(image)


# ---------------------------------------------------------------- load_image: modes

@pytest.mark.parametrize("mode, value, name, expected", [
    ("L", 128, "l.png", (128, 128, 128)),
    ("LA", (100, 0), "la.png", (100, 100, 100)),
    ("RGBA", (10, 20, 30, 0), "rgba.png", (10, 20, 30)),
    ("RGBA", (200, 100, 50, 255), "rgba_opaque.png", (200, 100, 50)),
    ("CMYK", (0, 0, 0, 0), "white.tif", (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), "red.tif", (255, 0, 0)),
    ("1", 1, "one.png", (255, 255, 255)),
    ("1", 0, "zero.png", (0, 0, 0)),
])
def test_simple_modes(tmp_path, mode, value, name, expected):
    path = save(tmp_path, Image.new(mode, (5, 4), value), name)
    assert stored_mode(path) == mode
    result = pixels(load_image(path))
    assert result.shape == (4, 5, 3) and result.dtype == np.uint8
    assert (result == expected).all()


@pytest.mark.parametrize("transparent", [False, True])
def test_palette(tmp_path, transparent):
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 250, 10, 20, 5, 200, 60] + [0] * (256 * 3 - 9))
    image.putdata([1, 1, 2, 2, 0, 1, 2, 0])
    params = {"transparency": 1} if transparent else {}
    path = save(tmp_path, image, "p.png", **params)
    with Image.open(path) as loaded:
        assert loaded.mode == "P" and ("transparency" in loaded.info) == transparent
    result = pixels(load_image(path))
    expected = np.array([[[250, 10, 20], [250, 10, 20], [5, 200, 60], [5, 200, 60]],
                         [[0, 0, 0], [250, 10, 20], [5, 200, 60], [0, 0, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(result, expected)


def test_16bit_greyscale_png_is_rescaled_by_range_not_clipped(tmp_path):
    path = save(tmp_path, Image.fromarray(np.array([[1000, 2000, 3000]], dtype=np.uint16)), "depth.png")
    assert stored_mode(path) == "I;16"
    result = pixels(load_image(path))
    np.testing.assert_array_equal(result[0, :, 0], [0, 128, 255])
    assert (result == result[..., :1]).all()   # grey


def test_32bit_integer_is_rescaled(tmp_path):
    path = save(tmp_path, Image.fromarray(np.array([[-100, 0, 300]], dtype=np.int32)), "i.tif")
    assert stored_mode(path) == "I"
    np.testing.assert_array_equal(pixels(load_image(path))[0, :, 1], [0, 64, 255])   # 100 * 255 / 400 = 63.75


def test_float_is_rescaled(tmp_path):
    path = save(tmp_path, Image.fromarray(np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 1.0]], dtype=np.float32)),
                "f.tif")
    assert stored_mode(path) == "F"
    np.testing.assert_array_equal(pixels(load_image(path))[..., 2], [[0, 128, 255], [64, 191, 255]])


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_constant_wide_image_does_not_divide_by_zero(mode):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pixels(to_rgb(Image.new(mode, (3, 2), 7)))
    assert result.shape == (2, 3, 3)


def test_float_with_nan_keeps_finite_pixels(tmp_path):
    path = save(tmp_path, Image.fromarray(np.array([[0.0, np.nan, 1.0]], dtype=np.float32)), "nan.tif")
    result = pixels(load_image(path))
    assert result[0, 0, 0] == 0 and result[0, 2, 0] == 255


def test_rgb_array_and_pil_inputs():
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(pixels(load_image(array)), array)
    np.testing.assert_array_equal(pixels(load_image(Image.new("L", (3, 2), 9))), np.full((2, 3, 3), 9))


# ---------------------------------------------------------------- load_image: EXIF orientation

def two_colour_jpeg(tmp_path, orientation):
    """40x20 as stored: left half red, right half blue, with an EXIF orientation tag."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(tmp_path, image, f"o{orientation}.jpg", exif=exif, quality=95)


def is_red(rgb):
    return rgb[0] > 200 and rgb[2] < 60


def is_blue(rgb):
    return rgb[2] > 200 and rgb[0] < 60


def test_exif_orientation_6_rotates_upright(tmp_path):
    result = load_image(two_colour_jpeg(tmp_path, 6))
    assert result.size == (20, 40)
    array = pixels(result)
    # rotating 90° clockwise brings the stored left (red) half to the top
    assert is_red(array[5, 10]) and is_blue(array[35, 10])


def test_exif_orientation_3_rotates_180(tmp_path):
    result = load_image(two_colour_jpeg(tmp_path, 3))
    assert result.size == (40, 20)
    array = pixels(result)
    assert is_blue(array[10, 5]) and is_red(array[10, 35])


def test_exif_orientation_1_is_untouched(tmp_path):
    array = pixels(load_image(two_colour_jpeg(tmp_path, 1)))
    assert array.shape == (20, 40, 3) and is_red(array[10, 5]) and is_blue(array[10, 35])


# ---------------------------------------------------------------- load_image: bad input

def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(UserError, match=str(path)):
        load_image(path)


def test_text_renamed_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n" * 10)
    with pytest.raises(UserError, match=str(path)):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(UserError, match=str(path)):
        load_image(str(path))


@needs_coco
@pytest.mark.parametrize("size", [100, 20_000])
def test_truncated_jpeg(tmp_path, size):
    path = tmp_path / "truncated.jpg"
    path.write_bytes(LANDSCAPE.read_bytes()[:size])
    with pytest.raises(UserError, match=str(path)):
        load_image(path)


@pytest.mark.parametrize("array", [
    np.zeros((4, 5, 3), dtype=np.float32),
    np.zeros((4, 5, 3), dtype=np.uint16),
    np.zeros((4, 5), dtype=np.uint8),
    np.zeros((4, 5, 4), dtype=np.uint8),
    np.zeros((3, 4, 5), dtype=np.uint8),   # CHW
    np.zeros((1, 4, 5, 3), dtype=np.uint8),
], ids=["float32", "uint16", "HxW", "HxWx4", "CHW", "NHWC"])
def test_bad_arrays(array):
    with pytest.raises(UserError, match=r"shape .* dtype"):
        load_image(array)


@pytest.mark.parametrize("name, truncate", [
    ("x.png", False), ("x.jpg", False), ("x.tif", False), ("x.gif", False), ("x.jpg", True),
])
def test_file_handle_is_closed(tmp_path, name, truncate):
    path = save(tmp_path, Image.effect_noise((64, 64), 50).convert("RGB"), name)
    if truncate:
        path.write_bytes(path.read_bytes()[:1000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            load_image(path)
        except UserError:
            assert truncate
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# ---------------------------------------------------------------- normalize

def test_normalize_mean_colour_is_zero():
    mean_pixel = np.round(np.array(IMAGENET_MEAN)).astype(np.uint8)   # 124, 116, 104
    out = normalize(np.tile(mean_pixel, (6, 7, 1)), Preprocess())
    assert out.shape == (3, 6, 7) and out.dtype == np.float32
    assert np.abs(out).max() < 0.5 / min(IMAGENET_STD) + 1e-6


def test_normalize_channel_order_is_rgb():
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    out = normalize(red, Preprocess())
    expected = [(255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
                -IMAGENET_MEAN[2] / IMAGENET_STD[2]]
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-6)
    assert out[0, 0, 0] > 0 > out[1, 0, 0]


# ---------------------------------------------------------------- sliding_windows against mmseg

@pytest.mark.parametrize("height, width, crop_h, crop_w, stride_h, stride_w", [
    (448, 448, 448, 448, 224, 224), (448, 597, 448, 448, 224, 224), (597, 448, 448, 448, 224, 224),
    (448, 2048, 448, 448, 224, 224), (51, 2048, 448, 448, 224, 224), (1, 1, 448, 448, 224, 224),
    (449, 449, 448, 448, 224, 224), (672, 672, 448, 448, 224, 224), (673, 900, 448, 448, 224, 224),
    (448, 1000, 448, 672, 224, 336), (900, 300, 448, 672, 224, 336), (100, 100, 32, 48, 7, 11),
])
def test_sliding_windows_matches_mmseg(height, width, crop_h, crop_w, stride_h, stride_w):
    assert sliding_windows(height, width, crop_h, crop_w, stride_h, stride_w) == \
        mmseg_slide_boxes(height, width, crop_h, crop_w, stride_h, stride_w)


# ---------------------------------------------------------------- prepare: slide

@needs_coco
@pytest.mark.parametrize("path, original", [(LANDSCAPE, (480, 640)), (PORTRAIT, (640, 480))])
def test_slide_on_coco(path, original):
    image = load_image(path)
    preprocess = Preprocess()
    prepared = prepare(image, preprocess)
    assert prepared.original_size == original
    canvas_h, canvas_w = prepared.canvas_size
    assert min(canvas_h, canvas_w) == 448
    assert (canvas_w, canvas_h) == mmcv_rescale_size(image.width, image.height)
    assert prepared.boxes == mmseg_slide_boxes(canvas_h, canvas_w, 448, 448, 224, 224)
    assert len(prepared.boxes) == 2   # 448x597: two crops along the long side
    check_windows(prepared, image, preprocess)


@pytest.mark.parametrize("size", [(10, 7), (7, 10), (1, 1), (2000, 50), (50, 2000), (5000, 1), (3000, 3000)])
def test_slide_tiny_and_extreme(size):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    preprocess = Preprocess()
    prepared = prepare(image, preprocess)
    canvas_h, canvas_w = prepared.canvas_size
    assert (canvas_w, canvas_h) == tuple(max(1, v) for v in mmcv_rescale_size(*size))
    assert max(canvas_h, canvas_w) <= 448 * 2048 / 448
    assert prepared.boxes == mmseg_slide_boxes(canvas_h, canvas_w, 448, 448, 224, 224)
    check_windows(prepared, image, preprocess)


def test_slide_extreme_aspect_is_capped_and_padded():
    image = Image.new("RGB", (2000, 50), (255, 255, 255))
    prepared = prepare(image, Preprocess())
    assert prepared.canvas_size == (51, 2048)   # scale 2048/2000, not 448/50
    assert len(prepared.boxes) == 9 and all(box_h == 51 for _, _, box_h, _ in prepared.boxes)
    assert (prepared.windows[:, :, :51, :] > 0).all()     # white image
    assert not prepared.windows[:, :, 51:, :].any()       # padding rows: the mean colour


def test_slide_tiny_image_upscaled():
    prepared = prepare(Image.new("RGB", (10, 7), (1, 2, 3)), Preprocess())
    assert prepared.canvas_size == (448, 640) and prepared.original_size == (7, 10)
    assert prepared.boxes == [(0, 0, 448, 448), (0, 192, 448, 448)]


# ---------------------------------------------------------------- prepare: letterbox

@needs_coco
@pytest.mark.parametrize("path", [LANDSCAPE, PORTRAIT])
def test_letterbox_on_coco(path):
    image = load_image(path)
    preprocess = Preprocess(resize="letterbox")
    prepared = prepare(image, preprocess)
    canvas_h, canvas_w = prepared.canvas_size
    assert prepared.windows.shape == (1, 3, 448, 448)
    assert max(canvas_h, canvas_w) == 448 and min(canvas_h, canvas_w) == 336
    assert canvas_w / canvas_h == pytest.approx(image.width / image.height, rel=0.01)
    assert prepared.boxes == [(0, 0, canvas_h, canvas_w)]
    check_windows(prepared, image, preprocess)
    window = prepared.windows[0]
    assert (window[:, canvas_h:, :] == 0).all() and (window[:, :, canvas_w:] == 0).all()


def test_letterbox_argument_overrides_manifest_and_upscales_small():
    prepared = prepare(Image.new("RGB", (20, 10), (255, 0, 0)), Preprocess(), "letterbox")
    assert prepared.canvas_size == (224, 448) and len(prepared.boxes) == 1
    assert (prepared.windows[0, :, 224:] == 0).all()


# ---------------------------------------------------------------- prepare: non-square export size

NON_SQUARE = Preprocess(height=448, width=672, stride=(224, 336))


@needs_coco
@pytest.mark.parametrize("resize", ["slide", "letterbox"])
@pytest.mark.parametrize("path", [LANDSCAPE, PORTRAIT])
def test_non_square_export(path, resize):
    image = load_image(path)
    prepared = prepare(image, NON_SQUARE, resize)
    canvas_h, canvas_w = prepared.canvas_size
    assert prepared.windows.shape[1:] == (3, 448, 672)
    if resize == "slide":
        assert min(canvas_h, canvas_w) == 448
        assert prepared.boxes == mmseg_slide_boxes(canvas_h, canvas_w, 448, 672, 224, 336)
    else:
        assert canvas_h <= 448 and canvas_w <= 672 and 448 in (canvas_h, canvas_w)
        assert len(prepared.boxes) == 1
    check_windows(prepared, image, NON_SQUARE)


def test_non_square_wide_image_slides_horizontally():
    prepared = prepare(Image.new("RGB", (1500, 500)), NON_SQUARE)
    assert prepared.canvas_size == (448, 1344)
    assert prepared.boxes == [(0, 0, 448, 672), (0, 336, 448, 672), (0, 672, 448, 672)]
    assert prepared.windows.shape == (3, 3, 448, 672)


# ---------------------------------------------------------------- prepare: resize mode

@pytest.mark.parametrize("preprocess, resize", [(Preprocess(), "crop"), (Preprocess(resize="stretch"), None)])
def test_unknown_resize_mode(preprocess, resize):
    with pytest.raises(UserError, match="resize mode"):
        prepare(Image.new("RGB", (8, 8)), preprocess, resize)


# ---------------------------------------------------------------- list_images

def test_list_images_recursive_sorted_filtered(tmp_path):
    for name in ["z.Png", "b.JPG", "sub/c.png", "sub/deeper/d.jpeg", "a.webp", "notes.txt", "noext", "sub/e.TIFF"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()   # a directory with an image suffix is not an image
    found = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == \
        ["a.webp", "b.JPG", "sub/c.png", "sub/deeper/d.jpeg", "sub/e.TIFF", "z.Png"]


def test_list_images_files_and_directories_in_order(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir/2.jpg").write_bytes(b"")
    (tmp_path / "dir/1.jpg").write_bytes(b"")
    explicit = tmp_path / "photo.raw"      # an explicitly named file is kept whatever its suffix
    explicit.write_bytes(b"")
    assert list_images([str(explicit), tmp_path / "dir"]) == [explicit, tmp_path / "dir/1.jpg",
                                                              tmp_path / "dir/2.jpg"]


def test_list_images_missing_path(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    missing = tmp_path / "missing"
    with pytest.raises(UserError, match=str(missing)):
        list_images([tmp_path / "a.jpg", missing])
    with pytest.raises(UserError, match=str(missing)):
        list_images(str(missing))


def test_list_images_empty_directory(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path)):
        list_images(tmp_path)
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(UserError, match="no images"):
        list_images([tmp_path])
