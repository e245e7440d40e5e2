"""The bundled GIF templates: rendered for real, then checked as a user would receive them."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import dlib
import numpy as np
import pytest

from services.orchestrator import builtin_templates
from services.shared import video
from services.shared.errors import NotFound

TEMPLATE_IDS = [template.template_id for template in builtin_templates.BUILTIN_GIF_TEMPLATES]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = builtin_templates.render_all(tmp_path_factory.mktemp("builtin"))
    return {path.stem: path for path in paths}


@pytest.fixture(scope="module")
def decoded(rendered: dict[str, Path]) -> dict[str, list[np.ndarray]]:
    return {template_id: list(video.iter_frames(path)) for template_id, path in rendered.items()}


def mean_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.int16) - second).mean())


def frame_steps(frames: list[np.ndarray]) -> list[float]:
    return [mean_difference(a, b) for a, b in pairwise(frames)]


def test_there_are_three_templates_with_short_lowercase_ids() -> None:
    assert len(TEMPLATE_IDS) == 3
    assert len(set(TEMPLATE_IDS)) == len(TEMPLATE_IDS)
    for template_id in TEMPLATE_IDS:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", template_id)


def test_render_all_writes_one_gif_per_template(rendered: dict[str, Path]) -> None:
    assert sorted(rendered) == sorted(TEMPLATE_IDS)
    assert all(path.suffix == ".gif" for path in rendered.values())


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_template_is_a_320px_gif_of_three_to_four_seconds(
    rendered: dict[str, Path], template_id: str
) -> None:
    info = video.probe(rendered[template_id])
    assert (info.width, info.height) == (320, 320)
    assert 3.0 <= info.duration_seconds <= 4.0
    assert info.frame_count == builtin_templates.FRAME_COUNT
    assert info.video_codec == "gif" and not info.has_audio


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_a_face_is_detectable_in_at_least_90_percent_of_frames(
    decoded: dict[str, list[np.ndarray]], template_id: str
) -> None:
    detector = dlib.get_frontal_face_detector()
    frames = decoded[template_id]
    with_face = sum(1 for frame in frames if len(detector(frame, 1)) > 0)
    assert with_face >= 0.9 * len(frames)


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_consecutive_frames_differ(decoded: dict[str, list[np.ndarray]], template_id: str) -> None:
    assert min(frame_steps(decoded[template_id])) > 1.0


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_loop_has_no_jump_from_last_frame_to_first(
    decoded: dict[str, list[np.ndarray]], template_id: str
) -> None:
    frames = decoded[template_id]
    assert mean_difference(frames[-1], frames[0]) <= 1.5 * max(frame_steps(frames))


def test_templates_move_differently(decoded: dict[str, list[np.ndarray]]) -> None:
    middles = [decoded[template_id][len(decoded[template_id]) // 4] for template_id in TEMPLATE_IDS]
    for index, frame in enumerate(middles):
        for other in middles[index + 1 :]:
            assert mean_difference(frame, other) > 2


def test_rendering_is_deterministic(rendered: dict[str, Path], tmp_path: Path) -> None:
    template_id = TEMPLATE_IDS[0]
    again = tmp_path / "again.gif"
    builtin_templates.render_builtin_gif(template_id, again)
    assert again.read_bytes() == rendered[template_id].read_bytes()


def test_unknown_template_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no built-in template 'moonwalk'"):
        builtin_templates.render_builtin_gif("moonwalk", tmp_path / "moonwalk.gif")
    assert not (tmp_path / "moonwalk.gif").exists()
