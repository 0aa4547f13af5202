"""YuNet face detection in PyTorch, batched: the detector of `faces.YuNetFaceDetector`, on
any torch device.

`faces.py` runs YuNet through OpenCV's `cv2.FaceDetectorYN`, one photo at a time on the CPU.
The torch preprocessing model (`torch_pipeline.py`) needs the same faces on the GPU, for
batches. So this module converts the shipped ONNX graph node by node into a torch module (any
batch size, any input side a multiple of 32) and decodes its outputs as OpenCV's
`modules/objdetect/src/face_detect.cpp` does: zero padding to a multiple of 32, scores
sqrt(cls * obj), boxes from the anchor grids of strides 8/16/32, the 50 best, greedy NMS on
integer rectangles. `tests/test_torch_yunet.py` checks it against ONNX Runtime and OpenCV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from sampleiqa.runtime.preprocessing.faces import MIN_SIDE, YUNET_MODEL, Box, clip_boxes

STRIDES = (8, 16, 32)
DIVISOR = 32  # OpenCV pads the input with zeros at right/bottom to a multiple of this
TOP_K = 50  # as faces.YuNetFaceDetector asks cv2.FaceDetectorYN
OPS = {"Conv", "Relu", "Sigmoid", "Transpose", "Reshape", "MaxPool", "Resize", "Add"}


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _expect(node, attrs: dict, **wanted) -> None:
    for key, value in wanted.items():
        got = attrs.get(key, value)
        got = got.decode() if isinstance(got, bytes) else got
        if (list(got) if isinstance(got, (list, tuple)) else got) != value:
            raise ValueError(f"ONNX {node.op_type} {node.name!r}: {key}={got!r} is not handled (only {value!r})")


class OnnxYuNet(torch.nn.Module):
    """The ONNX graph, run node by node in torch. Float initializers are buffers (so `.to()`
    and `.half()` move them); the constant shapes of Reshape and scales of Resize are read
    once. A Reshape's leading 1 (the ONNX file's fixed batch) becomes the batch size."""

    def __init__(self, path: str | Path = YUNET_MODEL):
        super().__init__()
        graph = onnx.load(str(path)).graph
        consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self._buffer = {}  # ONNX tensor name -> buffer name
        self.steps = []  # (op, input names, output name, keyword arguments)
        for node in graph.node:
            if node.op_type not in OPS:
                raise ValueError(f"ONNX op {node.op_type!r} (node {node.name!r}) is not handled by {__name__}")
            self.steps.append(self._step(node, _attrs(node), consts))
        self.input_name = next(i.name for i in graph.input if i.name not in consts)
        self.output_names = [o.name for o in graph.output]

    def _tensor(self, name: str, consts: dict) -> str:
        if name in consts and name not in self._buffer:
            self._buffer[name] = f"c{len(self._buffer)}"
            self.register_buffer(self._buffer[name], torch.from_numpy(consts[name].copy()))
        return name

    def _step(self, node, attrs: dict, consts: dict):
        op, ins, out = node.op_type, list(node.input), node.output[0]
        if op == "Conv":
            pads = attrs.get("pads", [0, 0, 0, 0])
            if pads[:2] != pads[2:]:
                raise ValueError(f"ONNX Conv {node.name!r}: asymmetric pads {pads} are not handled")
            _expect(node, attrs, auto_pad="NOTSET")
            kw = dict(
                stride=tuple(attrs.get("strides", [1, 1])),
                padding=tuple(pads[:2]),
                dilation=tuple(attrs.get("dilations", [1, 1])),
                groups=attrs.get("group", 1),
            )
            return op, [self._tensor(n, consts) for n in ins], out, kw
        if op == "MaxPool":
            _expect(node, attrs, auto_pad="NOTSET", ceil_mode=0, dilations=[1, 1], storage_order=0)
            pads = attrs.get("pads", [0, 0, 0, 0])
            if pads[:2] != pads[2:]:
                raise ValueError(f"ONNX MaxPool {node.name!r}: asymmetric pads {pads} are not handled")
            kw = dict(
                kernel_size=tuple(attrs["kernel_shape"]),
                stride=tuple(attrs.get("strides", [1, 1])),
                padding=tuple(pads[:2]),
            )
            return op, ins[:1], out, kw
        if op == "Resize":
            _expect(node, attrs, mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            scales = consts.get(ins[2]) if len(ins) > 2 else None
            if (
                scales is None
                or len(ins) > 3
                and ins[3]
                or list(scales[:2]) != [1, 1]
                or any(s != int(s) for s in scales[2:])
            ):
                raise ValueError(f"ONNX Resize {node.name!r}: only constant integer H/W scales are handled")
            return op, ins[:1], out, dict(scale_factor=tuple(float(s) for s in scales[2:]))
        if op == "Reshape":
            shape = [int(s) for s in consts[ins[1]]]
            if 0 in shape or shape[0] != 1:
                raise ValueError(f"ONNX Reshape {node.name!r}: shape {shape} is not handled (want [1, ...])")
            return op, ins[:1], out, dict(shape=tuple(shape[1:]))
        if op == "Transpose":
            return op, ins, out, dict(dims=tuple(attrs["perm"]))
        return op, [self._tensor(n, consts) for n in ins], out, {}  # Relu, Sigmoid, Add

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        env = {self.input_name: x}
        env.update({name: getattr(self, buf) for name, buf in self._buffer.items()})
        for op, ins, out, kw in self.steps:
            a = [env[n] for n in ins]
            if op == "Conv":
                env[out] = F.conv2d(a[0], a[1], a[2] if len(a) > 2 else None, **kw)
            elif op == "Relu":
                env[out] = torch.relu(a[0])
            elif op == "Sigmoid":
                env[out] = torch.sigmoid(a[0])
            elif op == "Add":
                env[out] = a[0] + a[1]
            elif op == "MaxPool":
                env[out] = F.max_pool2d(a[0], **kw)
            elif op == "Resize":
                env[out] = F.interpolate(a[0], scale_factor=kw["scale_factor"], mode="nearest")
            elif op == "Transpose":
                env[out] = a[0].permute(kw["dims"])
            else:  # Reshape
                env[out] = a[0].reshape(a[0].shape[0], *kw["shape"])
        return {name: env[name] for name in self.output_names}


def _grid(h: int, w: int, device) -> torch.Tensor:
    """[A, 3] (col, row, stride) of every anchor: strides 8, 16, 32, each row-major."""
    parts = []
    for s in STRIDES:
        rows, cols = torch.meshgrid(
            torch.arange(h // s, device=device), torch.arange(w // s, device=device), indexing="ij"
        )
        parts.append(torch.stack([cols.flatten(), rows.flatten(), torch.full_like(cols.flatten(), s)], 1))
    return torch.cat(parts).float()


def _greedy_nms(rects: torch.Tensor, keep: torch.Tensor, threshold: float) -> torch.Tensor:
    """OpenCV's NMSBoxes on score-sorted integer rects [N, K, 4] (x, y, w, h): a box stays
    unless its IoU with a kept, better one is over `threshold`. Batched, no host sync."""
    x0, y0 = rects[..., 0], rects[..., 1]
    x1, y1 = x0 + rects[..., 2], y0 + rects[..., 3]
    iw = (torch.minimum(x1[:, :, None], x1[:, None]) - torch.maximum(x0[:, :, None], x0[:, None])).clamp(min=0)
    ih = (torch.minimum(y1[:, :, None], y1[:, None]) - torch.maximum(y0[:, :, None], y0[:, None])).clamp(min=0)
    inter, area = iw * ih, rects[..., 2] * rects[..., 3]
    union = area[:, :, None] + area[:, None] - inter
    over = torch.where(union > 0, inter / union.clamp(min=1e-9), torch.ones_like(inter)) > threshold
    keep = keep.clone()
    for i in range(1, keep.shape[1]):
        keep[:, i] &= ~(keep[:, :i] & over[:, i, :i]).any(1)
    return keep


class TorchYuNetDetector:
    """`faces.YuNetFaceDetector` in torch: same boxes, on `device`, for batches."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        model: str | Path = YUNET_MODEL,
        max_side: int = 256,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
    ):
        self.device = torch.device(device)
        self.net = OnnxYuNet(model).to(self.device).eval()
        self.max_side, self.score_threshold, self.nms_threshold = max_side, score_threshold, nms_threshold
        self._grids: dict = {}

    def _decode(self, outs: dict, h: int, w: int) -> torch.Tensor:
        """[N, K, 5] (x, y, w, h, kept) of the K best anchors per image, best first."""
        if (h, w) not in self._grids:
            self._grids[h, w] = _grid(h, w, self.device)
        grid = self._grids[h, w]
        cat = {k: torch.cat([outs[f"{k}_{s}"] for s in STRIDES], 1).float() for k in ("cls", "obj", "bbox")}
        score = (cat["cls"].clamp(0, 1) * cat["obj"].clamp(0, 1)).sqrt()[..., 0]  # [N, A]
        score, idx = score.topk(min(TOP_K, score.shape[1]), dim=1)
        bbox = cat["bbox"].gather(1, idx[..., None].expand(-1, -1, 4))
        g = grid[idx]  # [N, K, 3]
        cx, cy = (g[..., 0] + bbox[..., 0]) * g[..., 2], (g[..., 1] + bbox[..., 1]) * g[..., 2]
        bw, bh = bbox[..., 2].exp() * g[..., 2], bbox[..., 3].exp() * g[..., 2]
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, bw, bh], -1)
        rects = torch.nan_to_num(boxes, 0.0, 1e6, -1e6).clamp(-1e6, 1e6).trunc()  # OpenCV's Rect2i(int(...))
        keep = _greedy_nms(rects, score >= self.score_threshold, self.nms_threshold)
        return torch.cat([boxes, keep[..., None].float()], -1)

    @staticmethod
    def _as_bgr(img: torch.Tensor) -> torch.Tensor:
        if img.ndim == 2:
            img = img[None]
        return img.expand(3, -1, -1) if img.shape[0] == 1 else img

    @torch.inference_mode()
    def detect_batch(self, images: list[torch.Tensor]) -> list[list[Box]]:
        """Faces in each BGR image [3, h, w] (uint8 or float 0..255; gray [h, w] too), in its
        pixels. Images are padded to their own multiple of 32, as OpenCV does, and each padded
        size runs as one batch (a larger pad changes the network's outputs near the border)."""
        dtype = next(self.net.buffers()).dtype
        groups: dict[tuple[int, int], list[int]] = {}
        images = [self._as_bgr(img) for img in images]
        for i, img in enumerate(images):
            h, w = img.shape[-2:]
            if min(h, w) >= MIN_SIDE:  # YuNet's smallest anchors: below this it can return non-finite boxes
                groups.setdefault((-(-h // DIVISOR) * DIVISOR, -(-w // DIVISOR) * DIVISOR), []).append(i)
        results: list[list[Box]] = [[] for _ in images]
        for (ph, pw), members in groups.items():
            x = torch.zeros(len(members), 3, ph, pw, dtype=dtype, device=self.device)
            for j, i in enumerate(members):
                x[j, :, : images[i].shape[1], : images[i].shape[2]] = images[i].to(self.device, dtype)
            found = self._decode(self.net(x), ph, pw).cpu().numpy()  # the boxes leave for Python here
            for j, i in enumerate(members):
                rows = found[j][found[j][:, 4] > 0, :4]
                results[i] = clip_boxes(rows, *images[i].shape[1:])
        return results

    def detect(self, bgr: np.ndarray) -> list[Box]:
        """The `faces.FaceDetector` protocol: one HxWx3 BGR (or HxW gray) uint8 image."""
        img = torch.from_numpy(np.ascontiguousarray(bgr))
        return self.detect_batch([img if img.ndim == 2 else img.permute(2, 0, 1)])[0]
