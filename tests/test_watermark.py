"""The invisible watermark survives our own encoders and is absent from unmarked media."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.orchestrator.builtin_templates import render_builtin_gif
from services.shared import video, watermark


@pytest.fixture(scope="module")
def template_frames(tmp_path_factory) -> list[np.ndarray]:
    path = tmp_path_factory.mktemp("wm") / "template.gif"
    render_builtin_gif("astronaut-sway", path)
    return list(video.iter_frames(path))


def test_the_watermark_is_invisible(template_frames):
    frame = template_frames[0]
    assert cv2.PSNR(watermark.embed(frame), frame) > 40


@pytest.mark.parametrize("encoder", [video.GifEncoder, video.Mp4Encoder])
def test_marked_media_verifies_and_unmarked_does_not(template_frames, tmp_path, encoder):
    height, width = template_frames[0].shape[:2]
    marked, plain = tmp_path / "marked", tmp_path / "plain"
    for path, mark in ((marked, True), (plain, False)):
        with encoder(path, width, height, 12) as out:
            for frame in template_frames:
                out.write(watermark.embed(frame) if mark else frame)
    found = watermark.verify(video.iter_frames(marked))
    absent = watermark.verify(video.iter_frames(plain))
    assert found.watermarked and found.score > 2 * watermark.THRESHOLD
    assert not absent.watermarked and abs(absent.score) < watermark.THRESHOLD / 2


def test_another_key_does_not_verify(template_frames):
    marked = [watermark.embed(frame) for frame in template_frames]
    assert watermark.verify(marked).watermarked
    assert not watermark.verify(marked, key="someone-else").watermarked


def test_remind_verify_command(template_frames, tmp_path):
    height, width = template_frames[0].shape[:2]
    path = tmp_path / "out.gif"
    with video.GifEncoder(path, width, height, 12) as gif:
        for frame in template_frames:
            gif.write(watermark.embed(frame))
    remind = [sys.executable, "-m", "services.cli", "verify"]
    marked = subprocess.run([*remind, str(path)], capture_output=True, text=True, timeout=120)
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert "Watermark: found" in marked.stdout
    assert "synthetic media made by Re:Mind" in marked.stdout
    plain = tmp_path / "plain.gif"
    with video.GifEncoder(plain, width, height, 12) as gif:
        for frame in template_frames:
            gif.write(frame)
    unmarked = subprocess.run([*remind, str(plain)], capture_output=True, text=True, timeout=120)
    assert unmarked.returncode == 1, unmarked.stdout + unmarked.stderr
    assert "Watermark: not found" in unmarked.stdout and "no Re:Mind mark found" in unmarked.stdout
    assert Path(plain).exists()
