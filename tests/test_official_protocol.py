"""groupvit-edge's evaluation against NVlabs/GroupViT's own, setting by setting and formula by formula.

Each official setting below names the file and key of the official repository it was read from (fetched
github:NVlabs/GroupViT); the formulas are transcribed independently here, in torch, from that code, and checked
against what groupvit-edge builds. Nothing here imports the official code (its licence does not allow copying it).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from groupvit_edge import runtimes
from groupvit_edge.cli import cli
from groupvit_edge.errors import UserError
from groupvit_edge.metrics import classmaps, evaluate
from groupvit_edge.metrics.protocol import eval_protocol, official_settings
from groupvit_edge.segmentation.prompts import (
    LEGACY_AVERAGING,
    OFFICIAL_AVERAGING,
    full_templates,
    resolve_templates,
)
from groupvit_edge.segmentation.vocabulary import Vocabulary
from groupvit_edge.tokenizer import ClipTokenizer, tokenize_labels

from conftest import record_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra: it is the text oracle")

# (setting, official value, where NVlabs/GroupViT states it)
OFFICIAL = {
    "templates": (("a photo of a {}.",), "configs/default.yml evaluate.seg.template: simple → "
                                         "datasets/imagenet_template.py simple_imagenet_template"),
    "voc threshold": (0.95, "segmentation/configs/_base_/datasets/pascal_voc12.py test_cfg bg_thresh=.95"),
    "coco-object threshold": (0.95, "segmentation/configs/_base_/datasets/coco.py test_cfg bg_thresh=.95"),
    "pascal-context threshold": (0.35, "segmentation/configs/_base_/datasets/pascal_context.py test_cfg bg_thresh=.35"),
    "mode": ("slide", "segmentation/configs/_base_/datasets/*.py test_cfg mode='slide'"),
    "crop": ((448, 448), "segmentation/configs/_base_/datasets/*.py test_cfg crop_size=(448, 448)"),
    "stride": ((224, 224), "segmentation/configs/_base_/datasets/*.py test_cfg stride=(224, 224)"),
    # mmcv's imresize is cv2.resize with INTER_LINEAR: no antialiasing when it shrinks.
    "resize": ("opencv", "segmentation/configs/_base_/datasets/*.py test_pipeline Resize keep_ratio=True, "
                         "img_scale=(2048, 448)"),
}
DATASETS = ("voc", "coco-object", "pascal-context")
FULL_FIRST_LAST = ("a bad photo of a {}.", "a tattoo of the {}.")   # datasets/imagenet_template.py full_imagenet_templates
LABELS = ["cat", "dog", "grass", "traffic light"]


def official_class_embedding(text_features: torch.Tensor, classes: int) -> torch.Tensor:
    """models/multi_label_contrastive.py `build_text_embedding`: encode_text of the [(n t), L] prompts (the text
    projector's output, unnormalised), rearranged to [n, t, c], mean over t, F.normalize over c."""
    per_class = text_features.reshape(classes, text_features.shape[0] // classes, -1)
    return torch.nn.functional.normalize(per_class.mean(dim=1), dim=-1)


@pytest.fixture(scope="module")
def hf_text(random_checkpoint):
    """transformers' GroupViT text tower + projection, loaded from the checkpoint: features no groupvit-edge
    code computed."""
    model = transformers.GroupViTModel.from_pretrained(str(random_checkpoint)).eval()

    def features(token_ids: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            out = model.get_text_features(input_ids=torch.from_numpy(token_ids.astype(np.int64)))
        return out if isinstance(out, torch.Tensor) else out.pooler_output
    return features


@pytest.fixture(scope="module")
def tokenizer(bpe_path):
    return ClipTokenizer.from_bpe_gz(bpe_path)


# ------------------------------------------------------------------------------------------ settings and sources

@pytest.mark.parametrize("dataset", DATASETS)
def test_each_dataset_gets_the_official_settings(dataset):
    settings = official_settings(dataset)
    assert resolve_templates(settings.templates).templates == OFFICIAL["templates"][0], OFFICIAL["templates"][1]
    assert settings.background_threshold == OFFICIAL[f"{dataset} threshold"][0], OFFICIAL[f"{dataset} threshold"][1]
    assert settings.resize == OFFICIAL["mode"][0], OFFICIAL["mode"][1]
    assert settings.window == OFFICIAL["crop"][0], OFFICIAL["crop"][1]
    assert settings.stride == OFFICIAL["stride"][0], OFFICIAL["stride"][1]
    assert settings.resample == OFFICIAL["resize"][0], OFFICIAL["resize"][1]
    assert settings.averaging == OFFICIAL_AVERAGING


def test_full_is_clips_80_imagenet_templates():
    templates = full_templates()
    assert len(templates) == 80 and (templates[0], templates[-1]) == FULL_FIRST_LAST
    assert all(t.count("{}") == 1 for t in templates) and len(set(templates)) == 80
    assert resolve_templates("full").templates == templates and resolve_templates(None).name == "simple"


def test_official_class_names():
    """segmentation/datasets/{pascal_voc,pascal_context,coco_object}.py CLASSES (first, a few, last, count)."""
    assert classmaps.voc().class_names[:3] == ("background", "aeroplane", "bicycle")
    assert classmaps.voc().class_names[11] == "table" and classmaps.voc().class_names[-1] == "monitor"
    context = classmaps.pascal_context().class_names
    assert len(context) == 60 and context[:3] == ("background", "airplane", "bag") and context[-1] == "wood"
    coco = classmaps.coco_object().class_names
    assert len(coco) == 81 and coco[:3] == ("background", "person", "bicycle") and coco[-1] == "toothbrush"


# ----------------------------------------------------------------------------------------------- class embeddings

@pytest.mark.parametrize("templates", ["simple", "full"])
def test_class_embeddings_follow_build_text_embedding(templates, reference_runtime, hf_text, tokenizer, bpe_path):
    template_set = resolve_templates(templates)
    token_ids, _ = tokenize_labels(tokenizer, LABELS, template_set.templates)
    expected = official_class_embedding(hf_text(token_ids), len(LABELS)).numpy()
    ours = Vocabulary.encode(reference_runtime, LABELS, templates, tokenizer=bpe_path)
    np.testing.assert_allclose(ours.text_embeds, expected, atol=2e-6)
    assert ours.averaging == OFFICIAL_AVERAGING and ours.templates.name == templates


def test_the_onnx_text_graph_gives_the_official_class_embeddings(onnx_artifact, hf_text, tokenizer):
    token_ids, _ = tokenize_labels(tokenizer, LABELS, full_templates())
    expected = official_class_embedding(hf_text(token_ids), len(LABELS)).numpy()
    with runtimes.open(onnx_artifact, backend="onnxruntime") as runtime:
        ours = Vocabulary.build(runtime, LABELS, "full")
    np.testing.assert_allclose(ours.text_embeds, expected, atol=1e-5)


def test_averaging_normalised_embeddings_would_differ(hf_text, tokenizer):
    """The rule matters: with several templates the mean of normalised embeddings is another vector, farther
    from the official one than the tolerance the tests above hold groupvit-edge to (random weights give prompts
    of similar norms, so the gap is small here; a trained tower's norms vary more)."""
    token_ids, _ = tokenize_labels(tokenizer, LABELS, full_templates())
    features = hf_text(token_ids)
    official = official_class_embedding(features, len(LABELS))
    legacy = official_class_embedding(torch.nn.functional.normalize(features, dim=-1), len(LABELS))
    assert (official - legacy).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------- older artifacts

@pytest.fixture(scope="module")
def legacy_artifact(onnx_artifact, tmp_path_factory):
    """An artifact as exported before the text graph returned its projection: the graph L2-normalises
    (LpNormalization) into `text_embeds`, and vocab.npz records no template set or averaging."""
    art = tmp_path_factory.mktemp("legacy") / "fp32"
    shutil.copytree(onnx_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    text_file = manifest["graphs"]["text"]["file"]
    model = onnx.load(art / text_file)
    features = model.graph.output[0].name
    model.graph.node.append(onnx.helper.make_node("LpNormalization", [features], ["text_embeds"], axis=-1, p=2))
    model.graph.output[0].name = "text_embeds"
    onnx.save(model, art / text_file)
    manifest["graphs"]["text"]["outputs"][0]["name"] = "text_embeds"
    (art / "manifest.json").write_text(json.dumps(manifest))
    record_file(art, text_file, ("graphs", "text", "sha256"))
    vocab = art / manifest["vocabulary"]["file"]
    with np.load(vocab) as data:
        old = {"labels": data["labels"], "templates": data["templates"], "text_embeds": data["text_embeds"] * 0.5}
    with open(vocab, "wb") as stream:
        np.savez(stream, **old)
    record_file(art, manifest["vocabulary"]["file"], ("vocabulary", "sha256"))
    return art


def test_a_legacy_artifact_builds_simple_vocabularies_and_refuses_several_templates(legacy_artifact, onnx_artifact):
    with runtimes.open(onnx_artifact, backend="onnxruntime") as runtime:
        current = Vocabulary.encode(runtime, LABELS, "simple")
    with runtimes.open(legacy_artifact, backend="onnxruntime") as runtime:
        assert runtime.manifest.text_output_normalised
        legacy = Vocabulary.encode(runtime, LABELS, "simple")
        with pytest.raises(UserError, match="re-export the artifact, or use --templates simple"):
            Vocabulary.encode(runtime, LABELS, "full")
    np.testing.assert_allclose(legacy.text_embeds, current.text_embeds, atol=1e-6)


def test_a_stored_vocabulary_without_its_averaging_is_rebuilt(legacy_artifact):
    with runtimes.open(legacy_artifact, backend="onnxruntime") as runtime:
        stored = Vocabulary.load(runtime.manifest.vocabulary_path())
        assert stored.averaging == LEGACY_AVERAGING
        rebuilt = Vocabulary.build(runtime, None)
        fresh = Vocabulary.encode(runtime, stored.labels, "simple")
    assert rebuilt.labels == stored.labels and rebuilt.averaging == OFFICIAL_AVERAGING
    np.testing.assert_allclose(rebuilt.text_embeds, fresh.text_embeds, atol=1e-6)
    assert np.abs(rebuilt.text_embeds - stored.text_embeds).max() > 0.1      # the stored (halved) rows were not used


def test_a_stored_vocabulary_is_reused_only_for_its_own_templates(onnx_artifact):
    with runtimes.open(onnx_artifact, backend="onnxruntime") as runtime:
        stored = Vocabulary.load(runtime.manifest.vocabulary_path())
        reused = Vocabulary.build(runtime, None)
        other = Vocabulary.build(runtime, None, "full")
    assert stored.averaging == OFFICIAL_AVERAGING and stored.templates.name == "simple"
    assert reused.labels == stored.labels and np.array_equal(reused.text_embeds, stored.text_embeds)
    assert other.templates.name == "full" and not np.allclose(other.text_embeds, stored.text_embeds)


# ------------------------------------------------------------------------------------------- each mask format

def _write_png(path: Path, values: np.ndarray, mode: str) -> Path:
    image = Image.fromarray(values.astype(np.uint8), mode="L")
    if mode == "P":                       # VOC's SegmentationClass PNGs are palette images of class indices
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        image.putdata(values.astype(np.uint8).ravel().tolist())
    image.save(path)
    return path


def test_voc_reads_palette_masks(tmp_path):
    values = np.array([[0, 1, 20], [15, 255, 21]])
    _write_png(tmp_path / "2007_000033.png", values, "P")
    assert Image.open(tmp_path / "2007_000033.png").mode == "P"
    _, truth = classmaps.voc().truth(tmp_path, Path("2007_000033.jpg"))
    np.testing.assert_array_equal(truth, [[0, 1, 20], [15, 255, 255]])    # 21 is no VOC class: ignored


def test_pascal_context_reads_59_classes_and_background(tmp_path):
    values = np.array([[0, 1, 59], [37, 60, 255]])
    _write_png(tmp_path / "2008_000002.png", values, "L")
    class_map = classmaps.pascal_context()
    _, truth = class_map.truth(tmp_path, Path("2008_000002.jpg"))
    np.testing.assert_array_equal(truth, [[0, 1, 59], [37, 255, 255]])
    assert class_map.class_names[37] == "person" and class_map.foreground[0] == "airplane"


def test_coco_object_prefers_the_official_train_ids_and_reads_panoptic_pngs(tmp_path):
    class_map = classmaps.coco_object()
    _write_png(tmp_path / "a.png", np.array([[0, 1, 90, 92]]), "L")                 # panoptic category ids
    _, panoptic = class_map.truth(tmp_path, Path("a.jpg"))
    np.testing.assert_array_equal(panoptic, [[0, 1, 80, 0]])
    _write_png(tmp_path / "a_instanceTrainIds.png", np.array([[0, 3, 80, 255]]), "L")
    path, train_ids = class_map.truth(tmp_path, Path("a.jpg"))
    assert path.name == "a_instanceTrainIds.png"
    np.testing.assert_array_equal(train_ids, [[0, 3, 80, 255]])


# ----------------------------------------------------------------------------------------------------- eval

@pytest.fixture(scope="module")
def context_masks(coco_images, tmp_path_factory):
    """PASCAL Context-format masks (L, 0..59) for two COCO photos: the format is what is under test, not the scene."""
    masks = tmp_path_factory.mktemp("context-masks")
    for number, image in enumerate(coco_images[:2]):
        width, height = Image.open(image).size
        values = np.zeros((height, width), np.uint8)
        values[: height // 2] = 15 + number                       # cat / ceiling
        _write_png(masks / f"{image.stem}.png", values, "L")
    return masks


def test_eval_on_pascal_context_uses_its_threshold_and_says_so(onnx_artifact, coco_images, context_masks,
                                                              monkeypatch):
    used = {}
    real = evaluate.Segmenter

    def spy(runtime, labels, **options):
        used.update(options, labels=labels)
        return real(runtime, labels, **options)
    monkeypatch.setattr(evaluate, "Segmenter", spy)
    report = evaluate.evaluate(onnx_artifact, coco_images[:2], context_masks, "pascal-context", progress=False)
    assert used["background_threshold"] == 0.35 and used["resample"] == "opencv" and len(used["labels"]) == 59
    assert resolve_templates(used["templates"]).templates == OFFICIAL["templates"][0]
    assert report.protocol.deviations == ()
    text = report.to_markdown()
    assert "protocol: GroupViT (NVlabs) evaluation, PASCAL Context settings" in text
    assert "background threshold 0.35" in text and "deviation" not in text
    assert report.to_dict()["protocol"]["settings"]["background_threshold"] == 0.35


def test_cli_eval_marks_each_deviation_in_its_report(onnx_artifact, coco_images, context_masks, tmp_path):
    out = tmp_path / "eval.json"
    templates = tmp_path / "two.txt"              # two templates: a deviation without 59 × 80 prompts to encode
    templates.write_text("a photo of a {}.\nitap of a {}.\n")
    done = CliRunner().invoke(cli, ["eval", str(onnx_artifact), "--images", str(coco_images[0]), "--masks",
                                    str(context_masks), "--classes", "pascal-context", "--background-threshold",
                                    "0.5", "--resample", "pillow", "--templates", str(templates), "--json", str(out)])
    assert done.exit_code == 0, done.output
    protocol = json.loads(out.read_text())["protocol"]
    deviations = {d["setting"]: (d["official"], d["used"]) for d in protocol["deviations"]}
    assert deviations == {"templates": ("simple", str(templates)), "background threshold": ("0.35", "0.5"),
                          "resample": ("opencv", "pillow")}
    assert "deviating in templates, background threshold, resample" in protocol["title"]
    assert "deviation: resample pillow (official opencv)" in done.output


def test_eval_without_opencv_names_the_extra(onnx_artifact, coco_images, context_masks, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)           # import cv2 now raises ImportError
    with pytest.raises(UserError, match=r"needs OpenCV: pip install groupvit-edge\[opencv\], or pass --resample "
                                        r"pillow"):
        evaluate.evaluate(onnx_artifact, coco_images[:1], context_masks, "pascal-context", progress=False)


def test_a_dataset_of_ones_own_says_the_official_code_has_no_settings_for_it(onnx_artifact):
    with runtimes.open(onnx_artifact, backend="onnxruntime") as runtime:
        protocol = eval_protocol("my-classes", runtime.manifest.preprocess)
    assert protocol.official is None and protocol.deviations == ()
    assert "a dataset the official code has no settings for" in protocol.title
