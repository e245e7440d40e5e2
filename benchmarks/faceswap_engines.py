"""Face swap engines: bare forward passes against the service end to end, batch 1 and batched.

For each SimSwap model (224 and 512) on the same template frames: the generator alone on
aligned crops (frames/s), then the faceswap service over gRPC (PNG frames in and out,
detection, alignment, batching, paste-back), each with batches of 1 and of all frames.
Uses the weights in the models directory when present, else random weights in the official
formats (same cost). CPU runs keep to a few frames. Prints a table, writes
out/faceswap_engines.json.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from remind.v1 import media_pb2

from services.faceswap.config import FaceSwapSettings
from services.faceswap.simswap import files
from services.faceswap.simswap.alignment import aligned_crop, estimate_alignment
from services.faceswap.simswap.arcface import ArcFaceResNet
from services.faceswap.simswap.detector import DlibFivePointDetector, primary_face
from services.faceswap.simswap.generator import SimSwapGenerator
from services.faceswap.simswap.models import SimSwapModels
from services.orchestrator.builtin_templates import render_builtin_gif
from services.orchestrator.model_clients import FaceSwapClient
from services.samples import sample_face_photo
from services.shared import images, video
from services.shared.faces import default_analyzer
from services.shared.model_files import check_files, record_files

FRAMES = 4 if not torch.cuda.is_available() else 32
TEMPLATE = "astronaut-sway"


def random_models_dir(path: Path) -> Path:
    """Random weights as plain state_dicts under the official paths (the loaders take both)."""
    torch.manual_seed(0)
    for model_file, network in (
        (files.ARCFACE, ArcFaceResNet((3, 4, 14, 3))),
        (files.GENERATOR_224, SimSwapGenerator(224)),
        (files.GENERATOR_512, SimSwapGenerator(512)),
    ):
        target = path / model_file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), target)
    record_files(path, files.ALL_FILES)
    return path


def usable_models_dir(work: Path) -> tuple[Path, str]:
    models_dir = FaceSwapSettings.load().models_path()
    try:
        check_files(models_dir, (files.ARCFACE, files.GENERATOR_224, files.GENERATOR_512))
        return models_dir, "official"
    except Exception:  # noqa: BLE001 - no usable official files: random ones cost the same
        return random_models_dir(work / "models"), "random (official formats)"


def bare_forward(models: SimSwapModels, crops: list[np.ndarray], batch: int) -> float:
    identity = np.ones(512, dtype=np.float32) / np.sqrt(512)
    models.swap(crops[:batch], [identity] * batch)  # warm-up for this batch shape
    started = time.perf_counter()
    for start in range(0, len(crops), batch):
        chunk = crops[start : start + batch]
        models.swap(chunk, [identity] * len(chunk))
    return len(crops) / (time.perf_counter() - started)


def service(models_dir: Path, resolution: int, batch: int, frames: list[np.ndarray]) -> float:
    from services.faceswap.server import start

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        {
            "REMIND_FACESWAP_MODELS_DIR": str(models_dir),
            "REMIND_FACESWAP_SIMSWAP_RESOLUTION": str(resolution),
            "REMIND_FACESWAP_BATCH_MAX_SIZE": str(batch),
            "REMIND_FACESWAP_BATCH_MAX_WAIT_MS": "50",
        }
    )
    settings = FaceSwapSettings.load()
    running = start(FaceSwapSettings(**{**settings.__dict__, "port": port, "engines": "simswap"}))
    client = FaceSwapClient(f"127.0.0.1:{port}", 64 << 20, 600)
    try:
        identity = client.prepare_identity(images.encode_image(sample_face_photo(0), "png"), "")
        encoded = [
            media_pb2.Frame(
                index=index,
                image=media_pb2.EncodedImage(
                    data=images.encode_image(frame, "png"), format=media_pb2.IMAGE_FORMAT_PNG
                ),
            )
            for index, frame in enumerate(frames)
        ]
        list(client.swap_faces(identity, iter(encoded[:1])))  # warm-up
        started = time.perf_counter()
        responses = list(client.swap_faces(identity, iter(encoded)))
        elapsed = time.perf_counter() - started
        assert all(response.engine == "simswap" for response in responses)
    finally:
        client.close()
        running.stop()
    return len(frames) / elapsed


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    results = []
    with tempfile.TemporaryDirectory() as work:
        models_dir, weights = usable_models_dir(Path(work))
        render_builtin_gif(TEMPLATE, Path(work) / "template.gif")
        frames = list(video.iter_frames(Path(work) / "template.gif"))[:FRAMES]
        detector = DlibFivePointDetector(default_analyzer())
        for resolution in (224, 512):
            models = SimSwapModels(
                models_dir / files.ARCFACE.path,
                models_dir / files.GENERATORS[resolution].path,
                resolution,
            )
            crops = []
            for frame in frames:
                face = primary_face(detector, frame)
                assert face is not None, "every benchmark frame shows a face"
                crops.append(
                    aligned_crop(frame, estimate_alignment(face.points, resolution), resolution)
                )
            for batch in (1, len(frames)):
                bare = bare_forward(models, crops, batch)
                served = service(models_dir, resolution, batch, frames)
                results.append(
                    {
                        "model": resolution,
                        "batch": batch,
                        "bare_forward_fps": round(bare, 3),
                        "service_fps": round(served, 3),
                        "service_over_bare": round(served / bare, 3),
                    }
                )
            del models
    header = f"{'model':>6}{'batch':>7}{'bare fwd f/s':>14}{'service f/s':>13}{'ratio':>8}"
    print(
        f"SimSwap, {len(frames)} frames of {TEMPLATE}, {weights} weights, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {os.cpu_count()} cores"
    )
    print(header)
    for row in results:
        print(
            f"{row['model']:>6}{row['batch']:>7}{row['bare_forward_fps']:>14}"
            f"{row['service_fps']:>13}{row['service_over_bare']:>8}"
        )
    Path("out").mkdir(exist_ok=True)
    Path("out/faceswap_engines.json").write_text(
        json.dumps({"frames": len(frames), "weights": weights, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
