"""S3FD (Zhang et al., ICCV 2017), the face detector the official Wav2Lip inference uses, with
the official module names so that `s3fd.pth` (face-alignment's `s3fd-619a316812.pth`, a plain
state dict) loads key for key.

Detection follows the official `sfd/detect.py` and `sfd_detector.py`: the RGB image minus the
means (104, 117, 123), six detection heads at strides 4..128 with square anchors of 4 x stride,
softmax scores above 0.05 decoded with variances (0.1, 0.2), non-maximum suppression at IoU 0.3,
scores above 0.5 kept, and the best one taken (`api.py`: the first after NMS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.lipsync.wav2lip.checkpoints import load_state_dict_file, load_strict
from services.shared.face_geometry import non_maximum_suppression

PIXEL_MEANS = np.array([104.0, 117.0, 123.0], dtype=np.float32)
CANDIDATE_SCORE = 0.05
NMS_IOU = 0.3
KEEP_SCORE = 0.5
VARIANCES = (0.1, 0.2)
STRIDES = (4, 8, 16, 32, 64, 128)

# (name, cin, cout, kernel, stride, padding) of the VGG16 trunk and the extra layers, in order;
# "pool" marks a 2x2 max pooling.
TRUNK = (
    ("conv1_1", 3, 64, 3, 1, 1), ("conv1_2", 64, 64, 3, 1, 1), "pool",
    ("conv2_1", 64, 128, 3, 1, 1), ("conv2_2", 128, 128, 3, 1, 1), "pool",
    ("conv3_1", 128, 256, 3, 1, 1), ("conv3_2", 256, 256, 3, 1, 1),
    ("conv3_3", 256, 256, 3, 1, 1), "pool",
    ("conv4_1", 256, 512, 3, 1, 1), ("conv4_2", 512, 512, 3, 1, 1),
    ("conv4_3", 512, 512, 3, 1, 1), "pool",
    ("conv5_1", 512, 512, 3, 1, 1), ("conv5_2", 512, 512, 3, 1, 1),
    ("conv5_3", 512, 512, 3, 1, 1), "pool",
    ("fc6", 512, 1024, 3, 1, 3), ("fc7", 1024, 1024, 1, 1, 0),
    ("conv6_1", 1024, 256, 1, 1, 0), ("conv6_2", 256, 512, 3, 2, 1),
    ("conv7_1", 512, 128, 1, 1, 0), ("conv7_2", 128, 256, 3, 2, 1),
)  # fmt: skip
# The trunk layers whose outputs feed a head, the head's input name (normalised or not),
# its channels, its score channels (the first head max-outs 3 background scores), and the
# L2Norm scale of the normalised ones.
HEADS = (
    ("conv3_3", "conv3_3_norm", 256, 4, 10.0),
    ("conv4_3", "conv4_3_norm", 512, 2, 8.0),
    ("conv5_3", "conv5_3_norm", 512, 2, 5.0),
    ("fc7", "fc7", 1024, 2, None),
    ("conv6_2", "conv6_2", 512, 2, None),
    ("conv7_2", "conv7_2", 256, 2, None),
)


class L2Norm(nn.Module):
    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


class S3FD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for layer in TRUNK:
            if not isinstance(layer, str):
                name, cin, cout, kernel, stride, padding = layer
                self.add_module(name, nn.Conv2d(cin, cout, kernel, stride, padding))
        for _, head, channels, scores, scale in HEADS:
            if scale is not None:
                self.add_module(head, L2Norm(channels, scale))
            self.add_module(f"{head}_mbox_conf", nn.Conv2d(channels, scores, 3, 1, 1))
            self.add_module(f"{head}_mbox_loc", nn.Conv2d(channels, 4, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per head: class scores (B, 2, H, W) before softmax, then box offsets (B, 4, H, W)."""
        features = {}
        for layer in TRUNK:
            if layer == "pool":
                x = F.max_pool2d(x, 2, 2)
                continue
            name = layer[0]
            x = F.relu(getattr(self, name)(x))
            features[name] = x
        outputs = []
        for source, head, _, scores, scale in HEADS:
            feature = features[source]
            if scale is not None:
                feature = getattr(self, head)(feature)
            classes = getattr(self, f"{head}_mbox_conf")(feature)
            if scores == 4:
                # Max-out background: the best of three background scores against the face.
                classes = torch.cat([classes[:, :3].amax(dim=1, keepdim=True), classes[:, 3:]], 1)
            outputs += [classes, getattr(self, f"{head}_mbox_loc")(feature)]
        return outputs


@dataclass(frozen=True)
class FaceBox:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float


def decode_detections(outputs: list[torch.Tensor]) -> list[np.ndarray]:
    """Candidate boxes (N, 5: x1, y1, x2, y2, score) per image from the raw head outputs."""
    batch = outputs[0].shape[0]
    per_image: list[list[np.ndarray]] = [[] for _ in range(batch)]
    for level, stride in enumerate(STRIDES):
        scores = F.softmax(outputs[2 * level].float(), dim=1)[:, 1].cpu().numpy()
        offsets = outputs[2 * level + 1].float().cpu().numpy()
        for image, rows, columns in zip(*np.where(scores > CANDIDATE_SCORE), strict=True):
            anchor_x, anchor_y = stride / 2 + columns * stride, stride / 2 + rows * stride
            anchor = stride * 4.0
            dx, dy, dw, dh = offsets[image, :, rows, columns]
            centre_x = anchor_x + dx * VARIANCES[0] * anchor
            centre_y = anchor_y + dy * VARIANCES[0] * anchor
            with np.errstate(over="ignore"):  # untrained weights: inf boxes, dropped later
                width = anchor * np.exp(dw * VARIANCES[1])
                height = anchor * np.exp(dh * VARIANCES[1])
            per_image[image].append(
                np.array([centre_x - width / 2, centre_y - height / 2,
                          centre_x + width / 2, centre_y + height / 2,
                          scores[image, rows, columns]], dtype=np.float64)
            )  # fmt: skip
    return [np.array(boxes).reshape(-1, 5) for boxes in per_image]


def best_face(candidates: np.ndarray) -> FaceBox | None:
    usable = np.isfinite(candidates).all(axis=1)
    usable &= (candidates[:, 2] > candidates[:, 0]) & (candidates[:, 3] > candidates[:, 1])
    candidates = candidates[usable]
    kept = candidates[non_maximum_suppression(candidates[:, :4], candidates[:, 4], NMS_IOU)]
    kept = kept[kept[:, 4] > KEEP_SCORE]
    if len(kept) == 0:
        return None
    x1, y1, x2, y2, score = np.clip(kept[0], 0, None)
    if x2 <= x1 or y2 <= y1:
        return None
    return FaceBox(float(x1), float(y1), float(x2), float(y2), float(score))


class S3FDDetector:
    """Finds the main face in RGB uint8 frames with the official S3FD weights."""

    def __init__(self, path: Path, device: torch.device, max_side: int = 0) -> None:
        network = S3FD()
        load_strict(network, load_state_dict_file(path), "S3FD", path)
        self.network = network.to(device).eval()
        self.device = device
        # 0 keeps the frame's size (official); otherwise larger frames are searched downscaled.
        self.max_side = max_side

    def detect(self, frame: np.ndarray) -> FaceBox | None:
        height, width = frame.shape[:2]
        scale = 1.0
        if self.max_side and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        pixels = torch.from_numpy(frame.astype(np.float32) - PIXEL_MEANS).permute(2, 0, 1)
        with torch.inference_mode():
            outputs = self.network(pixels[None].to(self.device))
        face = best_face(decode_detections(outputs)[0])
        if face is None or scale == 1.0:
            return face
        return FaceBox(face.x1 / scale, face.y1 / scale, face.x2 / scale, face.y2 / scale,
                       face.score)  # fmt: skip
