"""GroupViT's zero-shot segmentation protocol written directly in torch, as the original code does it.

This is the yardstick for `groupvit_edge.segmentation` (numpy, shared by every backend). It does not import
that package's post-processing; it transcribes, op for op, the NVlabs and mmseg code the paper was evaluated with:

- NVlabs/GroupViT `segmentation/evaluation/group_vit_seg.py`:
  `GroupViTSegInference.get_attn_maps` (multiply the stages' soft attention in [N, G] layout, `resize_attn_map`
  to the crop with bilinear/align_corners=False, `rescale`, one-hot of the argmax) and `encode_decode`
  (group→class affinity × clamp(exp(logit_scale), 100), top-5 mask from the image embedding with masked_fill -inf,
  softmax, `*= pre_group_affinity`, one-hot @ affinity, background channel 0 set to 1 where the best score is
  below min(0.95, affinity.max())).
- open-mmlab/mmsegmentation 0.x `EncoderDecoder.slide_inference` (crop grid, F.pad-and-sum of crop logits,
  count matrix, division, bilinear resize to `ori_shape`), `inference` (softmax over classes) and `simple_test`
  (argmax).

Only the pixels come from `groupvit_edge.segmentation.preprocess.prepare` (the resized, normalised canvas) and
the embeddings/grouping from the torch model's own `encode_image`, so differences point at post-processing or
stitching. The one deliberate departure from mmseg: a crop smaller than the crop size would be run at its own
size there; a fixed-size export cannot, so `encode_crops` refuses such canvases (COCO photos never produce one).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BG_THRESH = 0.95          # GroupViT's test_cfg bg_thresh
TOP_K = 5                 # encode_decode: avg_affinity_mat.topk(k=min(5, num_fg_classes))
LOGIT_SCALE_MAX = 100     # encode_decode: torch.clamp(logit_scale.exp(), max=100)


# ------------------------------------------------------------------------------------------- crop grid (mmseg)

def mmseg_crop_grid(h_img: int, w_img: int, h_crop: int, w_crop: int, h_stride: int, w_stride: int):
    """The (y1, y2, x1, x2) of every crop, in mmseg 0.x `slide_inference`'s loop order."""
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    crops = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crops.append((y1, y2, x1, x2))
    return crops


# ------------------------------------------------------------------------------------- attention maps (NVlabs)

def resize_attn_map(attentions: torch.Tensor, h: int, w: int, align_corners: bool = False) -> torch.Tensor:
    """[B, nH, h'*w', G] → [B, nH, h, w, G]: NVlabs `resize_attn_map`, feature-map shape recovered the same way."""
    scale = (h * w // attentions.shape[2]) ** 0.5
    if h > w:
        w_featmap = w // int(np.round(scale))
        h_featmap = attentions.shape[2] // w_featmap
    else:
        h_featmap = h // int(np.round(scale))
        w_featmap = attentions.shape[2] // h_featmap
    assert attentions.shape[2] == h_featmap * w_featmap, (attentions.shape, h_featmap, w_featmap)
    bs, nh, _, groups = attentions.shape
    # 'bs nh (h w) c -> (bs nh) c h w'
    maps = attentions.reshape(bs * nh, h_featmap, w_featmap, groups).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=align_corners)
    # '(bs nh) c h w -> bs nh h w c'
    return maps.permute(0, 2, 3, 1).reshape(bs, nh, h, w, groups)


def attn_product_nvlabs(soft_assignments) -> torch.Tensor:
    """Per-stage soft assignments [B, G_s, N_s] → [B, 1, N, G_last], multiplied like `get_attn_maps`.

    NVlabs keeps them as [B, nH, G, N] and rearranges 'b h g n -> b h n g' before `prev @ attn`.
    """
    prev = None
    for soft in soft_assignments:
        attn = soft.unsqueeze(1).transpose(-2, -1)          # [B, 1, N_s, G_s]
        prev = attn if prev is None else prev @ attn
    return prev


def get_attn_map(grouping: torch.Tensor, img_hw) -> torch.Tensor:
    """`get_attn_maps(img, rescale=True)[-1]` for one crop, from the final grouping [1, G, h', w'] → [1, H, W, G].

    `grouping` is the model's product of soft assignments laid out as maps; flattening it row-major gives the
    [B, nH=1, h'*w', G] tensor NVlabs feeds to `resize_attn_map`.
    """
    batch, groups = grouping.shape[:2]
    attn = grouping.reshape(batch, groups, -1).transpose(1, 2).unsqueeze(1)   # [B, 1, h'*w', G]
    attn_map = resize_attn_map(attn, *img_hw).squeeze(1)                      # [B, H, W, G]
    # rescale=True: a second bilinear resize to img.shape[2:] (the same size here, which torch leaves exact)
    attn_map = attn_map.permute(0, 3, 1, 2)
    attn_map = F.interpolate(attn_map, size=tuple(img_hw), mode="bilinear", align_corners=False)
    return attn_map.permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------------- encode_decode (NVlabs)

def group_affinity(grouped_img_tokens: torch.Tensor, img_avg_feat: torch.Tensor, text_tokens: torch.Tensor,
                   logit_scale_param: torch.Tensor) -> torch.Tensor:
    """[G, C], [1, C], [K, C], log-scale parameter → group_affinity_mat [G, K] exactly as `encode_decode` builds it."""
    grouped_img_tokens = F.normalize(grouped_img_tokens, dim=-1)
    img_avg_feat = F.normalize(img_avg_feat, dim=-1)
    num_fg_classes = text_tokens.shape[0]
    logit_scale = torch.clamp(logit_scale_param.exp(), max=LOGIT_SCALE_MAX)
    group_affinity_mat = (grouped_img_tokens @ text_tokens.T) * logit_scale
    pre_group_affinity_mat = F.softmax(group_affinity_mat, dim=-1)

    avg_affinity_mat = (img_avg_feat @ text_tokens.T) * logit_scale
    avg_affinity_mat = F.softmax(avg_affinity_mat, dim=-1)
    affinity_mask = torch.zeros_like(avg_affinity_mat)
    avg_affinity_topk = avg_affinity_mat.topk(dim=-1, k=min(TOP_K, num_fg_classes))
    affinity_mask.scatter_add_(dim=-1, index=avg_affinity_topk.indices,
                               src=torch.ones_like(avg_affinity_topk.values))
    group_affinity_mat.masked_fill_(~affinity_mask.bool(), float("-inf"))
    group_affinity_mat = F.softmax(group_affinity_mat, dim=-1)
    group_affinity_mat *= pre_group_affinity_mat
    return group_affinity_mat


def encode_decode(grouping: torch.Tensor, group_embeds: torch.Tensor, image_embed: torch.Tensor,
                  text_embedding: torch.Tensor, logit_scale_param: torch.Tensor, img_hw, with_bg: bool,
                  bg_thresh: float = BG_THRESH) -> torch.Tensor:
    """One crop's model outputs → pred_logits [1, num_classes, H, W] (`GroupViTSegInference.encode_decode`)."""
    assert grouping.shape[0] == 1, "batch size must be 1"
    attn_map = get_attn_map(grouping, img_hw)[0]                           # [H, W, G]
    grouped_img_tokens = group_embeds.squeeze(0)                           # [G, C]
    img_avg_feat = image_embed.reshape(1, -1)                              # [1, C]
    onehot_attn_map = F.one_hot(attn_map.argmax(dim=-1), num_classes=attn_map.shape[-1]).to(dtype=attn_map.dtype)

    num_fg_classes = text_embedding.shape[0]
    class_offset = 1 if with_bg else 0
    num_classes = num_fg_classes + class_offset
    group_affinity_mat = group_affinity(grouped_img_tokens, img_avg_feat, text_embedding, logit_scale_param)

    pred_logits = torch.zeros(num_classes, *attn_map.shape[:2], dtype=attn_map.dtype)
    pred_logits[class_offset:] = (onehot_attn_map @ group_affinity_mat).permute(2, 0, 1)   # 'h w c -> c h w'
    if with_bg:
        threshold = min(bg_thresh, group_affinity_mat.max().item())
        pred_logits[0, (onehot_attn_map @ group_affinity_mat).max(dim=-1).values < threshold] = 1
    return pred_logits.unsqueeze(0)


# ------------------------------------------------------------------------------------ crops and slide (mmseg)

@dataclass
class EncodedCrop:
    y1: int
    y2: int
    x1: int
    x2: int
    group_embeds: torch.Tensor   # [1, G, D]
    image_embed: torch.Tensor    # [1, D]
    grouping: torch.Tensor       # [1, G, h', w']


def canvas_from_prepared(prepared) -> torch.Tensor:
    """Reassemble the normalised resized image [1, 3, h, w] from `prepare`'s windows; overlaps must agree."""
    canvas = torch.full((3, *prepared.canvas_size), float("nan"))
    for window, (top, left, box_h, box_w) in zip(prepared.windows, prepared.boxes):
        crop = torch.from_numpy(np.ascontiguousarray(window[:, :box_h, :box_w]))
        region = canvas[:, top:top + box_h, left:left + box_w]
        written = ~torch.isnan(region)
        assert torch.equal(region[written], crop[written]), "overlapping windows disagree"
        region.copy_(crop)
    assert not torch.isnan(canvas).any(), "windows do not cover the canvas"
    return canvas.unsqueeze(0)


@torch.no_grad()
def encode_crops(model, prepared, crop_size=(448, 448), stride=(224, 224)) -> list[EncodedCrop]:
    """Cut the canvas like mmseg and run `model.encode_image` on each crop, one at a time (NVlabs asserts B=1)."""
    img = canvas_from_prepared(prepared)
    h_img, w_img = img.shape[-2:]
    position_embeddings = model.vision_model.embeddings.position_embeddings_for(*crop_size)
    crops = []
    for y1, y2, x1, x2 in mmseg_crop_grid(h_img, w_img, *crop_size, *stride):
        if (y2 - y1, x2 - x1) != tuple(crop_size):
            raise ValueError(f"crop {y2 - y1}x{x2 - x1} is smaller than {crop_size}: mmseg would run it at its own "
                             f"size, which a fixed-size export cannot reproduce")
        crop_img = img[:, :, y1:y2, x1:x2].contiguous()
        group_embeds, image_embed, grouping = model.encode_image(crop_img, position_embeddings)
        crops.append(EncodedCrop(y1, y2, x1, x2, group_embeds, image_embed, grouping))
    return crops


@dataclass
class ReferenceResult:
    labels: np.ndarray           # [H, W] int64, the mmseg prediction
    seg_logit: torch.Tensor      # [C, H, W] stitched logits resized to the original image (before softmax)
    canvas_logits: torch.Tensor  # [C, h, w] stitched logits on the canvas


@torch.no_grad()
def slide_inference(crops: list[EncodedCrop], canvas_size, ori_shape, text_embedding: torch.Tensor,
                    logit_scale_param: torch.Tensor, with_bg: bool, bg_thresh: float = BG_THRESH) -> ReferenceResult:
    """mmseg 0.x `slide_inference(rescale=True)` → `inference` (softmax) → `simple_test` (argmax)."""
    h_img, w_img = canvas_size
    num_classes = text_embedding.shape[0] + (1 if with_bg else 0)
    preds = torch.zeros((1, num_classes, h_img, w_img))
    count_mat = torch.zeros((1, 1, h_img, w_img))
    for crop in crops:
        y1, y2, x1, x2 = crop.y1, crop.y2, crop.x1, crop.x2
        crop_seg_logit = encode_decode(crop.grouping, crop.group_embeds, crop.image_embed, text_embedding,
                                       logit_scale_param, (y2 - y1, x2 - x1), with_bg, bg_thresh)
        preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
        count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    canvas_logits = preds / count_mat
    seg_logit = F.interpolate(canvas_logits, size=tuple(ori_shape), mode="bilinear", align_corners=False)
    output = F.softmax(seg_logit, dim=1)
    labels = output.argmax(dim=1)[0]
    return ReferenceResult(labels.numpy(), seg_logit[0], canvas_logits[0])


def segment(model, prepared, text_embeds: np.ndarray, with_bg: bool, bg_thresh: float = BG_THRESH,
            crop_size=(448, 448), stride=(224, 224), crops: list[EncodedCrop] | None = None) -> ReferenceResult:
    """The whole protocol for one prepared image; pass `crops` (from `encode_crops`) to reuse encodings."""
    crops = crops if crops is not None else encode_crops(model, prepared, crop_size, stride)
    text_embedding = torch.from_numpy(np.ascontiguousarray(text_embeds, dtype=np.float32))
    return slide_inference(crops, prepared.canvas_size, prepared.original_size, text_embedding,
                           model.logit_scale.detach(), with_bg, bg_thresh)
