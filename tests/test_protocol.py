"""The numpy segmentation protocol (groupvit_edge.segmentation) against a direct torch transcription of the
original NVlabs GroupViT + mmseg code (tests/reference_protocol.py), on real COCO photos.

Both sides get the same windows (`preprocess.prepare`) and the same model outputs (the torch model, one window
per call, so the encodings are bitwise equal — checked below); what is compared is post-processing and stitching.

Label maps must be identical except at ties: pixels where the reference's best class is not ahead of another
class by more than the numerical difference the two implementations can legitimately have there. That bound is
computed per pixel and class from three sources, each small and explained:
1. OP_ORDER_TOL = 1e-6 — float32 op order (matmul, softmax, sums) on scores in [0, 1]; measured ≤ 3e-7.
2. Bilinear weights of the canvas → image resize. `resize_bilinear` computes the source coordinate
   (i + 0.5)·in/out − 0.5 in float64; torch's CPU F.interpolate computes it in float32 (scale = float32(in)/out,
   then a fused multiply-add), off by at most in·2⁻²⁴ + ulp(coordinate)/2 per axis (`coordinate_error`,
   4e-5 … 7e-5 for the 448…673-pixel canvas sides here; see test_resize_bilinear_matches_f_interpolate). A weight error e moves a
   resized score by at most e × the largest jump between neighbouring canvas values around the pixel, so in flat
   regions nothing moves and only near class borders can a pixel tie.
3. Group ties inside a window. Each window pixel takes the group with the largest upsampled soft map; both sides
   upsample 28→448 with identical weights but sum in another order (measured ≤ 3e-8), so where two groups are
   within GROUP_TIE_TOL = 2.5e-7 (~2 ulps at 1.0) the winner may differ and the pixel's class scores may change
   by up to the difference of the two groups' score vectors (divided by the window coverage after stitching,
   times the pixel's bilinear weight after resizing).
Ties must stay under 0.1 % of the pixels; the measured agreement is printed (pytest -s).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from groupvit_edge.segmentation import Segmenter, Vocabulary
from groupvit_edge.segmentation.postprocess import group_class_affinity, resize_bilinear
from groupvit_edge.segmentation.preprocess import load_image, prepare, sliding_windows

from tests import reference_protocol as ref

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data"
BPE_GZ = SHARED / "clip/bpe_simple_vocab_16e6.txt.gz"
COCO = SHARED / "coco/eval2017/images"
# Landscape and portrait, one upscaled; 3 + 3 + 2 + 2 + 2 windows at 448 with stride 224. With random weights the
# background rule mostly leaves only background; 000000001993 (prototypes) and 000000000776/000000000872 (names)
# keep foreground next to background, so the threshold and its borders are exercised too.
IMAGES = {
    "000000000139.jpg": "landscape 640x426",
    "000000001993.jpg": "landscape 640x419",
    "000000000776.jpg": "portrait 428x640",
    "000000000872.jpg": "portrait 621x640",
    "000000000724.jpg": "portrait 375x500",
}
PROTOTYPE_IMAGE = "000000002431.jpg"     # source of the prototype vocabulary; not among IMAGES
LABELS = ["person", "dog", "cat", "car", "tree", "sky", "grass", "building", "table", "food"]

GROUP_TIE_TOL = 2.5e-7      # ~2 float32 ulps at 1.0
OP_ORDER_TOL = 1e-6         # float32 op-order noise on scores in [0, 1]
MAX_TIE_FRACTION = 1e-3

pytestmark = pytest.mark.skipif(not (BPE_GZ.is_file() and COCO.is_dir()),
                                reason=f"needs the shared data under {SHARED}")


def coordinate_error(size_in: int, size_out: int) -> float:
    """Bound on |torch's float32 bilinear source coordinate − the exact one| along one axis (0 when torch copies)."""
    if size_in == size_out:
        return 0.0
    return size_in * 2.0 ** -24 + float(np.spacing(np.float32(size_in))) / 2


def lower_taps(size_in: int, size_out: int) -> np.ndarray:
    """The lower bilinear tap (align_corners=False) of every output index, from the exact coordinate."""
    source = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    return np.minimum(np.floor(source).astype(np.int64), size_in - 1)


def around_taps(field: torch.Tensor, size, spread: bool) -> torch.Tensor:
    """[C, h, w] canvas field → [C, H, W]: per image pixel, the max (spread=False) or max − min (spread=True) of
    the field over canvas rows/columns low−1 … low+2 — its two taps and, in case a rounded coordinate crosses
    an integer, their outer neighbours."""
    padded = F.pad(field[None], (1, 2, 1, 2), mode="replicate")
    result = F.max_pool2d(padded, 4, stride=1)[0]
    if spread:
        result = result + F.max_pool2d(-padded, 4, stride=1)[0]
    rows, cols = lower_taps(field.shape[1], size[0]), lower_taps(field.shape[2], size[1])
    return result[:, rows][:, :, cols]


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def runtime():
    from groupvit_edge.runtimes import open as open_runtime
    return open_runtime("random:0", image_size=(448, 448))


@pytest.fixture(scope="module")
def vocabularies(runtime):
    """The real-name vocabulary (near-constant maps with random weights) and 8 group prototypes (rich maps)."""
    real = Vocabulary.encode(runtime, LABELS, tokenizer=BPE_GZ)
    windows = prepare(load_image(COCO / PROTOTYPE_IMAGE), runtime.manifest.preprocess).windows
    group_embeds = runtime.encode_image(windows[:1]).group_embeds[0]
    prototypes = group_embeds / np.linalg.norm(group_embeds, axis=-1, keepdims=True)
    proto = Vocabulary([f"group{i}" for i in range(len(prototypes))], ("{}",), prototypes.astype(np.float32))
    return {"real": real, "proto": proto}


@pytest.fixture(scope="module")
def segmenters(runtime, vocabularies):
    # batch_size=1: the reference runs one window per call (NVlabs asserts batch size 1) and batching changes
    # the encoder's float32 results by ~1e-7, which would blur the comparison of the post-processing.
    built = {"bg": Segmenter(runtime, LABELS, tokenizer=BPE_GZ, batch_size=1),
             "no_bg": Segmenter(runtime, LABELS, tokenizer=BPE_GZ, background_threshold=None, batch_size=1)}
    assert built["bg"].background_threshold == ref.BG_THRESH
    for segmenter in built.values():
        np.testing.assert_array_equal(segmenter.vocabulary.text_embeds, vocabularies["real"].text_embeds)
    return built


@pytest.fixture(scope="module")
def encoded(runtime, segmenters):
    """Per image, computed once: both sides' windows and encodings, and the windows' near-equal groups."""
    cache = {}

    def get(name):
        if name not in cache:
            _, prepared = segmenters["bg"].prepare(COCO / name)
            reference_prepared = prepare(load_image(COCO / name), runtime.manifest.preprocess)
            crops = ref.encode_crops(runtime.loaded.model, reference_prepared)
            cache[name] = dict(prepared=prepared, encoding=segmenters["bg"].encode(prepared),
                               reference_prepared=reference_prepared, crops=crops,
                               near_groups=[near_equal_groups(crop) for crop in crops])
        return cache[name]

    return get


def near_equal_groups(crop):
    """Window pixels whose two best groups are within GROUP_TIE_TOL: (rows, cols, best group, second group)."""
    attn_map = ref.get_attn_map(crop.grouping, (crop.y2 - crop.y1, crop.x2 - crop.x1))[0]    # [H, W, G]
    top2 = attn_map.topk(2, dim=-1)
    rows, cols = torch.nonzero(top2.values[..., 0] - top2.values[..., 1] <= GROUP_TIE_TOL, as_tuple=True)
    return rows, cols, top2.indices[rows, cols, 0], top2.indices[rows, cols, 1]


def group_tie_change(crops, near_groups, text_embedding, logit_scale_param, with_bg, canvas_size) -> torch.Tensor:
    """[h, w] canvas: how much a stitched class score can change if near-equal groups swap (0 almost everywhere)."""
    change = torch.zeros(canvas_size)
    count = torch.zeros(canvas_size)
    for crop, (rows, cols, best, second) in zip(crops, near_groups):
        affinity = ref.group_affinity(crop.group_embeds[0], crop.image_embed, text_embedding, logit_scale_param)
        logits = affinity
        if with_bg:   # encode_decode's background rule, per group
            background = affinity.max(dim=-1).values < min(ref.BG_THRESH, affinity.max().item())
            logits = torch.cat([background.float()[:, None], affinity], dim=1)
        swing = (logits[best] - logits[second]).abs().max(dim=-1).values if len(rows) else torch.zeros(0)
        change.index_put_((rows + crop.y1, cols + crop.x1), swing, accumulate=True)
        count[crop.y1:crop.y2, crop.x1:crop.x2] += 1
    return change / count


# ------------------------------------------------------------------------------------------ the whole protocol

def test_same_windows_and_encodings(encoded):
    """Precondition: the comparison below is about post-processing only."""
    for name in IMAGES:
        data = encoded(name)
        prepared, reference_prepared = data["prepared"], data["reference_prepared"]
        np.testing.assert_array_equal(prepared.windows, reference_prepared.windows)
        assert prepared.boxes == [(c.y1, c.x1, c.y2 - c.y1, c.x2 - c.x1) for c in data["crops"]]
        for index, crop in enumerate(data["crops"]):
            np.testing.assert_array_equal(data["encoding"].group_embeds[index], crop.group_embeds[0].numpy())
            np.testing.assert_array_equal(data["encoding"].image_embed[index], crop.image_embed[0].numpy())
            np.testing.assert_array_equal(data["encoding"].grouping[index], crop.grouping[0].numpy())


@pytest.mark.parametrize("vocabulary", ["real", "proto"])
@pytest.mark.parametrize("background", ["bg", "no_bg"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_label_map_matches_torch_reference(name, background, vocabulary, segmenters, vocabularies, encoded,
                                           runtime):
    data = encoded(name)
    segmenter = segmenters[background]
    segmenter.vocabulary = vocabularies[vocabulary]
    try:
        labels, scores = segmenter.decide(data["prepared"], data["encoding"])
    finally:
        segmenter.vocabulary = vocabularies["real"]
    expected = ref.segment(runtime.loaded.model, data["reference_prepared"], vocabularies[vocabulary].text_embeds,
                           with_bg=background == "bg", crops=data["crops"])

    assert labels.shape == expected.labels.shape == data["prepared"].original_size

    # Per pixel and class, how far the two implementations may legitimately be apart (see the module docstring).
    prepared = data["prepared"]
    size = prepared.original_size
    text_embedding = torch.from_numpy(vocabularies[vocabulary].text_embeds)
    weight_error = sum(coordinate_error(i, o) for i, o in zip(prepared.canvas_size, size))
    jumps = around_taps(expected.canvas_logits, size, spread=True)                             # [C, H, W]
    change = group_tie_change(data["crops"], data["near_groups"], text_embedding,
                              runtime.loaded.model.logit_scale.detach(), background == "bg", prepared.canvas_size)
    # A canvas pixel's change reaches an image pixel with that pixel's bilinear weight on it (± weight_error).
    swing = (F.interpolate(change[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0]
             + weight_error * around_taps(change[None], size, spread=False))                   # [1, H, W]
    class_error = OP_ORDER_TOL + weight_error * jumps + swing                                  # [C, H, W]

    scores_ref = expected.seg_logit
    best = torch.from_numpy(expected.labels)[None]
    lead = scores_ref.gather(0, best) - scores_ref                                              # [C, H, W] ≥ 0
    close = lead <= class_error.gather(0, best) + class_error
    close.scatter_(0, best, False)
    ties = close.any(dim=0).numpy()

    mismatch = labels != expected.labels
    top2 = scores_ref.topk(2, dim=0).values
    print(f"\n{name} ({IMAGES[name]}) {vocabulary}/{background}: agreement {1 - mismatch.mean():.6%} "
          f"({int(mismatch.sum())} of {labels.size} px differ), ties {int(ties.sum())} px = {ties.mean():.4%} "
          f"(top-2 gap ≤ {OP_ORDER_TOL:g}: {int((top2[0] - top2[1] <= OP_ORDER_TOL).sum())} px; "
          f"near-equal groups: {sum(len(g[0]) for g in data['near_groups'])} window px), "
          f"weight error {weight_error:.1e}, reference classes {np.unique(expected.labels).tolist()}")

    assert not (mismatch & ~ties).any(), (
        f"{int((mismatch & ~ties).sum())} pixels differ away from ties, e.g. at "
        f"{np.argwhere(mismatch & ~ties)[:5].tolist()}")
    assert ties.mean() < MAX_TIE_FRACTION, f"{ties.mean():.4%} of the pixels are ties"
    # The reported score is the stitched score of the reported class, to within the same bound.
    chosen = torch.from_numpy(labels.astype(np.int64))[None]
    difference = np.abs(scores - scores_ref.gather(0, chosen)[0].numpy())
    assert (difference <= class_error.gather(0, chosen)[0].numpy()).all(), difference.max()


def test_segment_is_prepare_encode_decide(segmenters, encoded):
    """`Segmenter.segment` (the user's call) yields what the decomposed calls compared above yield."""
    name = "000000000776.jpg"
    segmentation = segmenters["bg"].segment(COCO / name)
    labels, scores = segmenters["bg"].decide(encoded(name)["prepared"], encoded(name)["encoding"])
    np.testing.assert_array_equal(segmentation.labels, labels)
    np.testing.assert_array_equal(segmentation.scores, scores)
    assert segmentation.class_names == ["background", *LABELS]


def test_grouping_is_nvlabs_attention_product(runtime, encoded):
    """The exported `grouping` equals get_attn_maps' product of per-stage soft attention in [N, G] layout."""
    model = runtime.loaded.model
    crop = encoded("000000000724.jpg")["crops"][0]
    pixels = torch.from_numpy(encoded("000000000724.jpg")["reference_prepared"].windows[:1])
    with torch.no_grad():
        _, assignments = model.vision_model(pixels, model.vision_model.embeddings.position_embeddings_for(448, 448))
        product = ref.attn_product_nvlabs(assignments)                                 # [1, 1, N, G]
    maps = ref.resize_attn_map(product, 28, 28)[:, 0].permute(0, 3, 1, 2)              # identity resize
    torch.testing.assert_close(maps, crop.grouping, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ unit tests

RESIZE_CASES = [   # (in_h, in_w, out_h, out_w)
    (28, 28, 448, 448),     # grouping maps → window (exact weights)
    (7, 5, 20, 13),         # up, non-square
    (13, 17, 5, 4),         # down
    (28, 28, 33, 97),       # mixed
    (100, 3, 1, 50),        # down to one row, up in width
    (40, 60, 60, 40),       # up one axis, down the other
    (6, 9, 6, 9),           # identity
]
# Canvas → original image sizes of the protocol, where the float32 rounding of torch's source coordinate matters.
RESIZE_CASES_LARGE = [
    (448, 673, 426, 640),   # 000000000139.jpg
    (489, 448, 640, 586),   # 000000000285.jpg
    (597, 448, 500, 375),   # 000000000724.jpg
    (448, 910, 315, 640),   # 000000001490.jpg
]
@pytest.mark.parametrize("in_h, in_w, out_h, out_w", RESIZE_CASES + RESIZE_CASES_LARGE)
def test_resize_bilinear_matches_f_interpolate(in_h, in_w, out_h, out_w):
    maps = np.random.default_rng(in_h * 1000 + out_w).random((3, in_h, in_w), dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(maps)[None], size=(out_h, out_w), mode="bilinear",
                             align_corners=False)[0].numpy()
    actual = resize_bilinear(maps, out_h, out_w)
    assert actual.shape == (3, out_h, out_w)
    assert np.abs(actual - expected).max() < 1e-5


@pytest.mark.parametrize("in_h, in_w, out_h, out_w", RESIZE_CASES + RESIZE_CASES_LARGE)
def test_resize_bilinear_within_coordinate_rounding_of_f_interpolate(in_h, in_w, out_h, out_w):
    """The per-pixel bound the end-to-end ties rely on: weight error × the local jump of the input (+ op order)."""
    maps = np.random.default_rng(in_h * 1000 + out_w).random((3, in_h, in_w), dtype=np.float32)
    maps[:, : in_h // 2] = 0.25            # a flat region, where nothing may move
    expected = F.interpolate(torch.from_numpy(maps)[None], size=(out_h, out_w), mode="bilinear",
                             align_corners=False)[0].numpy()
    weight_error = coordinate_error(in_h, out_h) + coordinate_error(in_w, out_w)
    bound = OP_ORDER_TOL + weight_error * around_taps(torch.from_numpy(maps), (out_h, out_w), spread=True).numpy()
    assert (np.abs(resize_bilinear(maps, out_h, out_w) - expected) <= bound).all()


@pytest.mark.parametrize("h_img, w_img, crop, stride", [
    (448, 448, (448, 448), (224, 224)),
    (448, 673, (448, 448), (224, 224)),
    (489, 448, (448, 448), (224, 224)),
    (448, 910, (448, 448), (224, 224)),
    (448, 2048, (448, 448), (224, 224)),
    (300, 448, (448, 448), (224, 224)),      # smaller than the crop
    (672, 672, (448, 448), (224, 224)),      # grid lands exactly on the edge
    (1000, 777, (512, 384), (341, 256)),     # non-square crop and stride
])
def test_sliding_windows_is_mmseg_grid(h_img, w_img, crop, stride):
    expected = [(y1, x1, y2 - y1, x2 - x1) for y1, y2, x1, x2 in ref.mmseg_crop_grid(h_img, w_img, *crop, *stride)]
    assert sliding_windows(h_img, w_img, *crop, *stride) == expected


@pytest.mark.parametrize("num_classes", [1, 3, 5, 8, 20])
@pytest.mark.parametrize("logit_scale_param", [2.6592, float(np.log(150.0))])   # 14.28, and one clamped to 100
def test_group_class_affinity_matches_encode_decode(num_classes, logit_scale_param):
    rng = np.random.default_rng(num_classes)

    def unit(*shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    text = unit(num_classes, 256)
    # groups close to some classes so the softmaxes are far from uniform, as with the prototype vocabulary
    groups = unit(8, 256) + 2 * text[rng.integers(0, num_classes, 8)]
    groups = groups / np.linalg.norm(groups, axis=-1, keepdims=True)
    image = unit(256)
    scale_param = torch.tensor(logit_scale_param, dtype=torch.float32)
    expected = ref.group_affinity(torch.from_numpy(groups), torch.from_numpy(image)[None], torch.from_numpy(text),
                                  scale_param).numpy()
    actual = group_class_affinity(groups, image, text, float(scale_param.exp()))
    assert actual.shape == expected.shape == (8, num_classes)
    np.testing.assert_array_equal(actual == 0, expected == 0)      # the same top-5 classes survive
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
