"""`remind`: the command line for the local stack and the public API."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import grpc
import typer
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.client import RemindClient
from services.shared import images
from services.shared.content_credentials import ABSENT
from services.shared.errors import RemindError
from services.shared.provenance import verify_media
from services.shared.signing_certificates import local_credentials
from services.stack import DEFAULT_BASE_PORT, ORCHESTRATOR, LocalStack

app = typer.Typer(
    help="Re:Mind: put a face into GIF templates, served over gRPC.", no_args_is_help=True
)
console = Console(stderr=True)

STAGE_LABELS = {
    jobs_pb2.JOB_STAGE_QUEUED: "queued",
    jobs_pb2.JOB_STAGE_PREPARING: "preparing",
    jobs_pb2.JOB_STAGE_EXTRACTING_VOICE: "extracting voice",
    jobs_pb2.JOB_STAGE_SWAPPING_FACES: "swapping faces",
    jobs_pb2.JOB_STAGE_SYNCING_LIPS: "syncing lips",
    jobs_pb2.JOB_STAGE_ENCODING: "encoding",
    jobs_pb2.JOB_STAGE_STORING: "storing",
    jobs_pb2.JOB_STAGE_DONE: "done",
}


def _stack() -> LocalStack:
    return LocalStack(
        Path(os.environ.get("REMIND_STACK_DIR", ".stack")),
        int(os.environ.get("REMIND_STACK_BASE_PORT", DEFAULT_BASE_PORT)),
        orchestrators=int(os.environ.get("REMIND_STACK_ORCHESTRATORS", "1")),
    )


def _address() -> str:
    if "REMIND_ADDRESS" in os.environ:
        return os.environ["REMIND_ADDRESS"]
    info = _stack().info()
    base = info.base_port if info else DEFAULT_BASE_PORT
    return f"127.0.0.1:{base + ORCHESTRATOR}"


def _api_key() -> str:
    if "REMIND_API_KEY" in os.environ:
        return os.environ["REMIND_API_KEY"]
    info = _stack().info()
    return info.api_keys.get("local", "") if info else ""


def _fail(error: grpc.RpcError) -> NoReturn:
    console.print(f"[red]{error.code().name}[/red]: {error.details()}")
    raise typer.Exit(1)


@contextmanager
def _api() -> Iterator[RemindClient]:
    """A client of the public API; an error status ends the command with its message."""
    with RemindClient(_address(), _api_key()) as client:
        try:
            yield client
        except grpc.RpcError as error:
            _fail(error)


def follow_job(client: RemindClient, created: jobs_pb2.Job, output: Path) -> Path:
    """Shows a job's progress per stage until it ends, then downloads its result."""
    job = created
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[frames]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("queued", total=1.0, frames="")
        for job in client.watch(created.name):
            frames = (
                f"{job.progress.frames_done}/{job.progress.frames_total} frames"
                if job.progress.frames_total
                else ""
            )
            progress.update(
                task,
                completed=job.progress.fraction,
                frames=frames,
                description=STAGE_LABELS.get(job.progress.stage, "working"),
            )
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        console.print(f"[red]{jobs_pb2.JobState.Name(job.state)}[/red]: {job.error.message}")
        raise typer.Exit(1)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(client.download(job.result.media))
    engines = ", ".join(f"{stage} {name}" for stage, name in sorted(job.result.engines.items()))
    console.print(
        f"{job.name}: {job.result.frames_with_face}/{job.result.frames_total} frames "
        f"had a face; engines: {engines}",
        soft_wrap=True,
    )
    return output


def run_gif(
    client: RemindClient,
    face: Path,
    template: str,
    output: Path,
    engine: str,
    consent: bool = False,
) -> Path:
    """Uploads the photo, runs a GIF job with a progress bar and downloads the result."""
    face_media = client.upload_file(face)
    created = client.create_gif_job(face_media.name, template, engine, consent=consent)
    return follow_job(client, created, output)


def run_video(
    client: RemindClient,
    face: Path,
    voice: Path,
    template: str,
    output: Path,
    engine: str,
    consent: bool = False,
) -> Path:
    """Uploads the photo and the recording, runs a video job and downloads the MP4."""
    face_media = client.upload_file(face)
    voice_media = client.upload_file(voice)
    created = client.create_video_job(
        face_media.name, voice_media.name, template, engine, consent=consent
    )
    return follow_job(client, created, output)


def add_template(
    client: RemindClient, path: Path, template_id: str, display_name: str
) -> templates_pb2.Template:
    """Uploads a GIF or MP4 with a progress bar, then makes it a template, which the server
    checks first. The upload is deleted either way: the template keeps its own copy."""
    data = path.read_bytes()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        sending = progress.add_task("uploading", total=len(data))
        upload = client.upload(
            data, path.name, progress=lambda sent: progress.update(sending, completed=sent)
        )
        progress.add_task("checking the template", total=None)
        try:
            return client.create_template(upload.name, template_id, display_name)
        finally:
            client.delete_media(upload.name)


def _template_name(template: str) -> str:
    return template if "/" in template else f"templates/{template}"


CONSENT_HELP = "Confirm: this is my face (and voice), or I have the person's consent"


@app.command()
def gif(
    face: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Face photo")],
    template: Annotated[str, typer.Option(help="GIF template name")] = "astronaut-sway",
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("out/result.gif"),
    engine: Annotated[str, typer.Option(help="Faceswap engine")] = "auto",
    consent: Annotated[bool, typer.Option(help=CONSENT_HELP)] = False,
) -> None:
    """Swap the face in FACE into a GIF template."""
    with _api() as client:
        path = run_gif(client, face, _template_name(template), output, engine, consent)
    print(path.resolve())


@app.command()
def video(
    face: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Face photo")],
    voice: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Voice recording")],
    template: Annotated[str, typer.Option(help="Video template name")] = "astronaut-talk",
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("out/result.mp4"),
    engine: Annotated[str, typer.Option(help="Faceswap and lipsync engine")] = "auto",
    consent: Annotated[bool, typer.Option(help=CONSENT_HELP)] = False,
) -> None:
    """Put the face in FACE into a video template, speaking with the voice in VOICE."""
    with _api() as client:
        path = run_video(client, face, voice, _template_name(template), output, engine, consent)
    print(path.resolve())


@app.command()
def verify(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)]) -> None:
    """Check a file for Re:Mind's two marks: its Content Credentials (C2PA) and the invisible
    watermark. Exits 0 when either says the file was made by Re:Mind."""
    # The local stack's own root, so that its results show as from a trusted signer.
    root = local_credentials(_stack().state_dir / "c2pa").root
    trust_anchors = root.read_text() if root.is_file() else ""
    try:
        verdict = verify_media(path, trust_anchors)
    except RemindError as error:
        console.print(f"[red]{path}[/red]: {error}")
        raise typer.Exit(2) from None
    credentials = verdict.credentials
    if credentials.state == ABSENT:
        print("Content Credentials: none (never signed, or re-encoded since)")
    else:
        trust = "trusted signer" if credentials.trusted else "signer not in the trust list"
        print(f"Content Credentials: {credentials.state.lower()}, signed by {credentials.signer} "
              f"({credentials.issuer}; {trust}), made with {credentials.generator}")  # fmt: skip
        print(f"  actions: {', '.join(credentials.actions) or '-'}; digital source type: "
              f"{credentials.digital_source_type.rsplit('/', 1)[-1] or '-'}")  # fmt: skip
        if credentials.problems:
            print(f"  problems: {', '.join(credentials.problems)}")
    found = "found" if verdict.watermark.watermarked else "not found"
    print(f"Watermark: {found} (score {verdict.watermark.score:.1f} over "
          f"{verdict.watermark.frames} frames)")  # fmt: skip
    if not verdict.marked:
        print(f"{path}: no Re:Mind mark found")
        raise typer.Exit(1)
    print(f"{path}: synthetic media made by Re:Mind")


@app.command()
def token(
    user: Annotated[str, typer.Option(help="The person's id (the token's subject)")],
    minutes: Annotated[int, typer.Option(help="How long the token lasts")] = 60,
) -> None:
    """Print a token of the local stack's identity provider for a person of its tenant, as an
    app would get from its own: `authorization: Bearer <token>`."""
    stack = _stack()
    if not stack.running():
        console.print("The local stack is not running: `make up` first.")
        raise typer.Exit(1)
    print(stack.token(user, minutes * 60))


templates_app = typer.Typer(help="List the templates; add or remove your own.")
app.add_typer(templates_app, name="templates")


@templates_app.callback(invoke_without_command=True)
def templates(context: typer.Context) -> None:
    """List the templates; `add` and `remove` change your own."""
    if context.invoked_subcommand is not None:
        return
    with _api() as client:
        items = client.list_templates()
    table = Table("name", "display name", "size", "seconds", "frames", "built in")
    for item in items:
        table.add_row(
            item.name,
            item.display_name,
            f"{item.width}x{item.height}",
            f"{item.duration_seconds:.1f}",
            str(item.frame_count),
            "yes" if item.builtin else "",
        )
    Console().print(table)


@templates_app.command("add")
def templates_add(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A GIF or MP4 showing a face")
    ],
    template_id: Annotated[str, typer.Option("--id", help="Lower-case letters, digits and dashes")],
    name: Annotated[str, typer.Option(help="Display name (default: the id)")] = "",
) -> None:
    """Upload FILE and make it a template: GIFs last 1-6 s, MP4s up to 60 s, at most 1080p."""
    with _api() as client:
        template = add_template(client, file, template_id, name)
    console.print(
        f"{template.name}: {template.width}x{template.height}, "
        f"{template.duration_seconds:.1f} s, {template.frame_count} frames"
    )
    print(template.name)


@templates_app.command("remove")
def templates_remove(
    name: Annotated[str, typer.Argument(help="The template, e.g. my-dance or templates/my-dance")],
) -> None:
    """Remove one of your templates (built-in ones stay)."""
    template = _template_name(name)
    with _api() as client:
        client.delete_template(template)
    console.print(f"{template} removed")


@app.command()
def jobs(limit: int = 20) -> None:
    """List recent jobs, newest first."""
    with _api() as client:
        items = client.list_jobs(limit)
    table = Table("job", "state", "stage", "template", "result / error")
    for job in items:
        table.add_row(
            job.name,
            jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_"),
            STAGE_LABELS.get(job.progress.stage, ""),
            job.template,
            job.result.media or job.error.message,
        )
    Console().print(table)


@app.command()
def up() -> None:
    """Start the local stack (S3, faceswap, orchestrator) in the background."""
    info = _stack().start()
    console.print(
        f"stack up: orchestrator {info.orchestrator_address}, "
        f"faceswap {info.faceswap_address}, S3 {info.s3_endpoint}"
    )


@app.command()
def down() -> None:
    """Stop the local stack."""
    _stack().stop()
    console.print("stack down")


@app.command()
def demo(
    output_dir: Annotated[Path, typer.Option(help="Where the inputs and results go")] = Path("out"),
) -> None:
    """Run both tracks on the bundled photo, voice and templates, starting the stack if needed.

    Prints the GIF's path, then the MP4's path last.
    """
    from services.samples import sample_face_photo, sample_voice_recording

    stack = _stack()
    started_here = not stack.running()
    stack.start()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        face = output_dir / "face.png"
        face.write_bytes(images.encode_image(sample_face_photo(), "png"))
        voice = output_dir / "voice.wav"
        voice.write_bytes(sample_voice_recording())
        with _api() as client:
            gif_template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
            console.print(f"GIF track: {face} into {gif_template}")
            gif_path = run_gif(client, face, gif_template, output_dir / "result.gif", "auto")
            print(gif_path.resolve())
            video_template = client.list_templates(templates_pb2.TEMPLATE_KIND_VIDEO)[0].name
            console.print(f"MP4 track: {face} speaking {voice} in {video_template}")
            video_path = run_video(
                client, face, voice, video_template, output_dir / "result.mp4", "auto"
            )
    finally:
        if started_here:
            stack.stop()
    print(video_path.resolve())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
