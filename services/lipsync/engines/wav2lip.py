"""The neural lip sync engine: Wav2Lip as published, on the official weights, batched.

Audio (once per job): the official mel spectrogram, carried as the features. Frames: the main
face's box (S3FD, or dlib where `s3fd.pth` is absent) padded and smoothed over 5 frames as the
official script does; the 96 x 96 BGR crop and the frame's 16-column mel window join a batch
for one generator pass (frames of every stream share passes); the generated lower face is
colour-matched and blended back through a feathered mask. A frame without a face passes
through unchanged and is reported; the stream goes on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from services.lipsync.config import LipSyncSettings
from services.lipsync.engines.base import (
    FEATURES_STATE,
    SAMPLE_RATE,
    AudioFeatures,
    LipSyncEngine,
)
from services.lipsync.wav2lip import files
from services.lipsync.wav2lip.mel import NUM_MELS, mel_window, melspectrogram
from services.lipsync.wav2lip.network import FACE_SIZE
from services.lipsync.wav2lip.paste_back import mouth_region, paste_mouth
from services.lipsync.wav2lip.tracking import LOOKAHEAD, BoxSmoother, Corners, padded_box
from services.shared.batching import Batcher, then
from services.shared.engine_state import check_owner, decode_state, encode_state
from services.shared.engines import FrameResult, FrameStream
from services.shared.errors import EngineNotReady
from services.shared.faces import FaceAnalyzer, default_analyzer
from services.shared.model_files import check_files

if TYPE_CHECKING:  # torch is imported only once the weights are found
    from services.lipsync.wav2lip.models import Wav2LipModel
    from services.lipsync.wav2lip.s3fd import S3FDDetector

log = logging.getLogger(__name__)

# Faces smaller than this (px, box side) carry no mouth worth generating; they pass through.
MIN_FACE_SIDE = 24


@dataclass(frozen=True)
class MouthRequest:
    crop_bgr: np.ndarray  # 96 x 96 x 3 uint8
    mel_window: np.ndarray  # 80 x 16 float32


class FaceBoxDetector:
    """The main face's box (x1, y1, x2, y2) in an RGB frame, or None."""

    def detect(self, frame: np.ndarray) -> Corners | None:
        raise NotImplementedError


class S3FDBoxes(FaceBoxDetector):
    def __init__(self, detector: S3FDDetector) -> None:
        self.detector = detector

    def detect(self, frame: np.ndarray) -> Corners | None:
        face = self.detector.detect(frame)
        return None if face is None else (face.x1, face.y1, face.x2, face.y2)


class DlibBoxes(FaceBoxDetector):
    """Stands in for S3FD: the box around dlib's jaw and brow landmarks, which spans the face
    the way S3FD's boxes do (brows to chin), unlike dlib's own tighter box."""

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        self.analyzer = analyzer

    def detect(self, frame: np.ndarray) -> Corners | None:
        face = self.analyzer.primary_face(frame)
        if face is None:
            return None
        outline = face.landmarks[:27]
        (x1, y1), (x2, y2) = outline.min(axis=0), outline.max(axis=0)
        return float(x1), float(y1), float(x2), float(y2)


class Wav2LipEngine(LipSyncEngine):
    name = "wav2lip"

    def __init__(self, settings: LipSyncSettings | None = None) -> None:
        self.settings = settings or LipSyncSettings.load()
        self.device = "-"
        self.model: Wav2LipModel | None = None
        self.detector: FaceBoxDetector | None = None
        self.batcher: Batcher[MouthRequest, np.ndarray] | None = None

    def load(self) -> None:
        checkpoint = self.settings.wav2lip_checkpoint
        if checkpoint not in files.CHECKPOINTS:
            raise EngineNotReady(
                f"REMIND_LIPSYNC_WAV2LIP_CHECKPOINT is {checkpoint!r}: "
                f"choose one of {sorted(files.CHECKPOINTS)}"
            )
        present = check_files(self.settings.models_path(), files.files_for(checkpoint))
        # Torch is imported only once the files are there, so a server without weights
        # starts as fast as one without this engine.
        from services.lipsync.wav2lip.models import Wav2LipModel
        from services.lipsync.wav2lip.s3fd import S3FDDetector

        model = Wav2LipModel(
            present[files.CHECKPOINTS[checkpoint].path], cpu_threads=self.settings.cpu_threads
        )
        if files.DETECTOR.path in present:
            detector: FaceBoxDetector = S3FDBoxes(
                S3FDDetector(
                    present[files.DETECTOR.path], model.device, self.settings.detector_max_side
                )
            )
        else:
            log.info("S3FD file absent (%s): dlib landmarks stand in", files.DETECTOR.path)
            detector = DlibBoxes(default_analyzer())
        self.model, self.detector = model, detector
        self.device = model.device.type
        self.batcher = Batcher.for_frames(self._generate_batch, self.settings, "wav2lip-batcher")

    def prepare_audio(self, samples: np.ndarray) -> AudioFeatures:
        mel = melspectrogram(samples)
        return AudioFeatures(
            self.name,
            encode_state(self.name, {"mel": mel}, compress=True),
            len(samples) / SAMPLE_RATE,
        )

    def start_stream(self, features: AudioFeatures, fps: float) -> FrameStream:
        self._loaded()
        check_owner(features.engine, self.name, FEATURES_STATE)
        mel = decode_state(features.state, self.name, ("mel",), FEATURES_STATE)["mel"]
        if mel.ndim != 2 or mel.shape[0] != NUM_MELS:
            raise FEATURES_STATE.corrupt()
        return Wav2LipSyncer(self, mel.astype(np.float32), fps)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    def _generate_batch(self, requests: Sequence[MouthRequest]) -> list[np.ndarray]:
        model, _, _ = self._loaded()
        return model.generate(
            [request.crop_bgr for request in requests], [request.mel_window for request in requests]
        )

    def _loaded(
        self,
    ) -> tuple[Wav2LipModel, FaceBoxDetector, Batcher[MouthRequest, np.ndarray]]:
        if self.model is None or self.detector is None or self.batcher is None:
            raise EngineNotReady("The Wav2Lip engine is not loaded.")
        return self.model, self.detector, self.batcher


@dataclass
class _HeldFrame:
    index: int
    image: np.ndarray
    future: Future[FrameResult]


class Wav2LipSyncer(FrameStream):
    """Holds back LOOKAHEAD frames so each box is smoothed with the frames after it too."""

    def __init__(self, engine: Wav2LipEngine, mel: np.ndarray, fps: float) -> None:
        self.engine = engine
        self.mel = mel
        self.fps = fps
        self.smoother = BoxSmoother()
        self.held: deque[_HeldFrame] = deque()
        self.next_index = 0

    def process(self, frame: np.ndarray) -> FrameResult:
        future = self.submit(frame)
        self.finish()
        return future.result()

    def submit(self, frame: np.ndarray) -> Future[FrameResult]:
        _, detector, _ = self.engine._loaded()
        box = detector.detect(frame)
        self.smoother.add(None if box is None else padded_box(box, frame.shape))
        held = _HeldFrame(self.next_index, frame, Future())
        self.next_index += 1
        self.held.append(held)
        if len(self.held) > LOOKAHEAD:
            self._release(self.held.popleft(), offset_from_newest=LOOKAHEAD)
        return held.future

    def finish(self) -> None:
        while self.held:
            self._release(self.held.popleft(), offset_from_newest=len(self.held))

    def _release(self, held: _HeldFrame, offset_from_newest: int) -> None:
        box = self.smoother.smoothed(offset_from_newest)
        corners = None if box is None else _pixel_box(box)
        if corners is None:
            held.future.set_result(FrameResult.unchanged(held.image))
            return
        x1, y1, x2, y2 = corners
        crop = cv2.cvtColor(held.image[y1:y2, x1:x2], cv2.COLOR_RGB2BGR)
        request = MouthRequest(
            crop_bgr=cv2.resize(crop, (FACE_SIZE, FACE_SIZE)),
            mel_window=mel_window(self.mel, held.index, self.fps),
        )
        _, _, batcher = self.engine._loaded()

        def finish(generated_bgr: np.ndarray) -> FrameResult:
            generated = cv2.cvtColor(generated_bgr, cv2.COLOR_BGR2RGB)
            return FrameResult(
                image=paste_mouth(held.image, generated, corners),
                face_found=True,
                box=mouth_region(corners),
            )

        pending = then(batcher.submit(request), finish)
        pending.add_done_callback(lambda done: _forward(done, held.future))


def _pixel_box(box: Corners) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = (int(value) for value in box)
    if min(x2 - x1, y2 - y1) < MIN_FACE_SIDE:
        return None
    return x1, y1, x2, y2


def _forward(done: Future[FrameResult], target: Future[FrameResult]) -> None:
    error = done.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(done.result())
