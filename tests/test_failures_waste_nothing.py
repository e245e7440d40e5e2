"""Failures waste nothing: an absent store does not slow rendering down, a killed process's
temporary files are gone once it is back, and a long recording costs what the job uses."""

import subprocess
import time
from pathlib import Path

from remind.v1 import job_service_pb2 as jobs_pb2

from services import samples
from services.client import RemindClient
from services.orchestrator.jobs import PROGRESS_PAUSE_AFTER_FAILURE_SECONDS
from services.shared import images
from services.stack import LocalStack
from tests.support.faults import kill_hard, long_gif_template, separating_voice
from tests.support.memory import PeakResidentMemory

TEMPLATE = "templates/astronaut-talk"  # 30 s, 750 frames


def test_rendering_keeps_its_speed_while_the_store_is_down(
    stack: LocalStack, client: RemindClient, user_photo, tmp_path
):
    # 300 frames at 50 fps: 6 s, the longest GIF template there is.
    template = long_gif_template(client, tmp_path, "outage-long", frames=300, fps=50)
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    job = client.create_gif_job(face.name, template)
    seen: dict[int, float] = {}  # frames done -> when first seen
    stopped_at_frame = 0
    try:
        for event in client.watch(job.name):
            seen.setdefault(event.progress.frames_done, time.monotonic())
            if not stopped_at_frame and event.progress.frames_done >= 100:
                stack.stop("s3")
                stopped_at_frame = max(seen)
            final = event
    finally:
        stack.start()
    assert stopped_at_frame, "the job ended before the store was stopped"
    # Without the store the result cannot be kept, and the job says so.
    assert final.state == jobs_pb2.JOB_STATE_FAILED
    assert "storage" in final.error.message
    before = _frames_per_second(seen, 20, 100)
    after_from = min(frame for frame in seen if frame > stopped_at_frame)
    after = _frames_per_second(seen, after_from, 300)
    # Writing a progress record per frame to an absent store made this 5-10x slower.
    print(f"frames/s before the store stopped {before:.1f}, after {after:.1f}")
    assert after >= 0.4 * before, (before, after)
    log = (stack.state_dir / "logs" / "orchestrator.log").read_text()
    failed_writes = log.count(f"job {job.name} progress not saved")
    render_seconds = seen[300] - seen[after_from]
    print(f"{failed_writes} failed progress writes in {render_seconds:.1f} s without the store")
    assert failed_writes <= 2 + render_seconds / PROGRESS_PAUSE_AFTER_FAILURE_SECONDS


def _frames_per_second(seen: dict[int, float], first: int, last: int) -> float:
    first = min(frame for frame in seen if frame >= first)
    return (last - first) / (seen[last] - seen[first])


def _scratch_folders(stack: LocalStack, service: str, pid: int) -> list[Path]:
    return list(stack.scratch_dir.glob(f"{service}-{pid}-*"))


def _files_in(folders: list[Path]) -> list[Path]:
    return [path for folder in folders for path in folder.rglob("*") if path.is_file()]


def test_temporary_files_of_processes_killed_mid_job_are_gone_once_they_are_back(
    stack: LocalStack, client: RemindClient, user_photo
):
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    mix = samples.make_mix("en-us", 30.0, voice_to_music_db=3.0)
    voice = client.upload(samples.wav_bytes(mix.mixture), "voice.wav")
    job = client.create_video_job(face.name, voice.name, TEMPLATE)
    for event in client.watch(job.name):
        if separating_voice(event):
            break
    # Mid-extraction: the orchestrator holds the template and the voice extracted so far, the
    # voice service the user's recording.
    dead = {name: kill_hard(stack, name) for name in ("orchestrator", "voice")}
    left = {name: _scratch_folders(stack, name, pid) for name, pid in dead.items()}
    left_files = {name: [p.name for p in _files_in(folders)] for name, folders in left.items()}
    assert "vocals.wav" in left_files["orchestrator"], left_files
    assert "recording" in left_files["voice"], left_files
    info = stack.start()
    for name, pid in dead.items():
        assert not _scratch_folders(stack, name, pid), f"{name} {pid} left its files behind"
        # The new process has a folder of its own.
        assert _scratch_folders(stack, name, info.pids[name])
    with RemindClient(info.orchestrator_address, info.api_keys["local"]) as again:
        # The job is taken up again once its lease runs out; a cancel reaches it there.
        again.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name))
        assert list(again.watch(job.name))[-1].state == jobs_pb2.JOB_STATE_CANCELLED


def _twenty_minute_recording(path: Path) -> None:
    """About 20 minutes of espeak-ng speech, looped, as 24 kb/s Opus (3.6 MB)."""
    speech = path.with_suffix(".speech.wav")
    text = "The quick brown fox jumps over the lazy dog, and then it takes a long rest."
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(speech), text], check=True)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(speech),
         "-t", "1195", "-c:a", "libopus", "-b:a", "24k", str(path)],
        check=True,
    )  # fmt: skip


def _extract_voice_then_cancel(client: RemindClient, face: str, voice: str) -> float:
    """Runs an MP4 job until its voice is extracted, then cancels it; returns how long the
    extraction took."""
    job = client.create_video_job(face, voice, TEMPLATE)
    started = 0.0
    for event in client.watch(job.name):
        stage = event.progress.stage
        if stage == jobs_pb2.JOB_STAGE_EXTRACTING_VOICE and not started:
            started = time.monotonic()
        if stage == jobs_pb2.JOB_STAGE_SYNCING_LIPS:
            client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name))
            return time.monotonic() - started
    raise AssertionError(f"the voice was never extracted: {event.error.message}")


def test_a_twenty_minute_recording_costs_what_the_thirty_seconds_the_template_uses_cost(
    stack: LocalStack, client: RemindClient, user_photo, tmp_path
):
    face = client.upload(images.encode_image(user_photo, "png"), "me.png").name
    mix = samples.make_mix("en-us", 30.0, voice_to_music_db=3.0)
    short = client.upload(samples.wav_bytes(mix.mixture), "short.wav").name
    recording = tmp_path / "long.ogg"
    _twenty_minute_recording(recording)
    long = client.upload(recording.read_bytes(), recording.name).name
    pids = {name: stack.info().pids[name] for name in ("orchestrator", "voice")}
    with PeakResidentMemory(pids) as thirty_seconds:
        short_took = _extract_voice_then_cancel(client, face, short)
    with PeakResidentMemory(pids) as twenty_minutes:
        long_took = _extract_voice_then_cancel(client, face, long)
    print(
        f"extraction: 30 s recording {short_took:.1f} s, 20 min recording {long_took:.1f} s; "
        f"peak RSS MB {_mb(thirty_seconds.peak)} then {_mb(twenty_minutes.peak)}"
    )
    # The whole recording would take minutes (Spleeter's real-time factor here is ~0.06:
    # 20 minutes is ~75 s of CPU alone) and hundreds of MB as samples.
    assert long_took < 2 * short_took + 15
    for name in pids:
        assert twenty_minutes.peak[name] < thirty_seconds.peak[name] + 50 * 2**20, name


def _mb(sizes: dict[str, int]) -> dict[str, int]:
    return {name: size // 2**20 for name, size in sizes.items()}
