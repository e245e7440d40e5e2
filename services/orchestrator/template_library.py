"""Templates: the bundled ones (rendered at start-up if the store lacks them) and uploads.

Layout: templates bucket `builtin/{id}.gif` and `{scope}/{id}.{ext}`;
records bucket `builtin/templates/{id}.json` and `{scope}/templates/{id}.json`, where the scope
is the owner's (a tenant, or a person of it). A person sees their own templates, their
tenant's and the built-in ones; a tenant its own and the built-in ones. Each removes only its
own; the built-in ones are never removed.
"""

import hashlib
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from services.orchestrator import builtin_templates
from services.orchestrator.auth import Owner
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.media_library import MediaLibrary
from services.shared import errors, faces, video
from services.shared.storage import ObjectStore

log = logging.getLogger(__name__)

TEMPLATE_PREFIX = "templates/"
BUILTIN = "builtin"
_TEMPLATE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
GIF, VIDEO = "gif", "video"
EXTENSIONS = {GIF: (".gif", "image/gif"), VIDEO: (".mp4", "video/mp4")}
KIND_TITLES = {GIF: "GIF", VIDEO: "video"}
# Frames sampled to check that an uploaded template shows a face.
FACE_CHECK_SAMPLES = 5


@dataclass(frozen=True)
class TemplateRecord:
    name: str
    display_name: str
    kind: str
    bucket: str
    key: str
    duration_seconds: float
    width: int
    height: int
    frame_count: int
    fps: float
    builtin: bool


@dataclass(frozen=True)
class LocalTemplate:
    """A job's own copy of its template."""

    record: TemplateRecord
    path: Path
    info: video.MediaInfo

    def sha256(self) -> str:
        with open(self.path, "rb") as template:
            return hashlib.file_digest(template, "sha256").hexdigest()

    def content_type(self) -> str:
        return EXTENSIONS[self.record.kind][1]


def _visible_scopes(owner: Owner) -> list[str]:
    """Where an owner's templates are looked up, nearest first."""
    tenant_wide = [owner.tenant] if owner.is_person else []
    return [owner.scope, *tenant_wide, BUILTIN]


def _record_key(scope: str, template_id: str) -> str:
    return f"{scope}/templates/{template_id}.json"


def template_id_of(name: str) -> str:
    template_id = name[len(TEMPLATE_PREFIX) :] if name.startswith(TEMPLATE_PREFIX) else ""
    if not _TEMPLATE_ID.match(template_id):
        raise errors.InvalidInput(
            f"Template {errors.shown(name)} is not a valid name; expected templates/<id> with "
            "lower-case letters, digits and dashes."
        )
    return template_id


class TemplateLibrary:
    def __init__(
        self, store: ObjectStore, media_library: MediaLibrary, settings: OrchestratorSettings
    ) -> None:
        self.store = store
        self.media_library = media_library
        self.settings = settings

    def install_builtins(self) -> None:
        """Renders and stores the bundled templates the store does not have yet."""
        for kind, templates, render in (
            (GIF, builtin_templates.BUILTIN_GIF_TEMPLATES, builtin_templates.render_builtin_gif),
            (
                VIDEO,
                builtin_templates.BUILTIN_VIDEO_TEMPLATES,
                builtin_templates.render_builtin_video,
            ),
        ):
            for template in templates:
                self._install_builtin(kind, template, render)

    def _install_builtin(
        self,
        kind: str,
        template: builtin_templates.BuiltinTemplate,
        render: Callable[[str, Path], None],
    ) -> None:
        record_key = _record_key(BUILTIN, template.template_id)
        if self.store.exists(self.settings.records_bucket, record_key):
            return
        extension, content_type = EXTENSIONS[kind]
        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / f"{template.template_id}{extension}"
            render(template.template_id, path)
            key = f"{BUILTIN}/{template.template_id}{extension}"
            if not self.store.exists(self.settings.templates_bucket, key):
                self.store.put_new_file(self.settings.templates_bucket, key, path, content_type)
            record = self._record(
                template.template_id,
                template.display_name,
                kind,
                key,
                video.probe(path),
                builtin=True,
            )
        self.store.put_record(self.settings.records_bucket, record_key, asdict(record))
        log.info("installed built-in template %s", template.template_id)

    def list(self, owner: Owner, kind: str | None = None) -> list[TemplateRecord]:
        records = []
        for scope in reversed(_visible_scopes(owner)):
            for key in self.store.list_keys(self.settings.records_bucket, f"{scope}/templates/"):
                record = TemplateRecord(**self.store.get_record(self.settings.records_bucket, key))
                if kind is None or record.kind == kind:
                    records.append(record)
        return sorted(records, key=lambda record: (not record.builtin, record.name))

    def get(self, owner: Owner, name: str, kind: str | None = None) -> TemplateRecord:
        """The nearest template of that name the owner can see; InvalidInput if it is not of
        `kind`."""
        template_id = template_id_of(name)
        for scope in _visible_scopes(owner):
            key = _record_key(scope, template_id)
            if self.store.exists(self.settings.records_bucket, key):
                record = TemplateRecord(**self.store.get_record(self.settings.records_bucket, key))
                if kind is not None and record.kind != kind:
                    raise errors.InvalidInput(f"{name} is not a {KIND_TITLES[kind]} template.")
                return record
        raise errors.NotFound(f"Template {name} does not exist; list templates to see the names.")

    def local_copy(self, template: TemplateRecord, directory: Path) -> LocalTemplate:
        """The template's file in `directory`, probed, for a job to read."""
        extension, _ = EXTENSIONS[template.kind]
        path = directory / f"template{extension}"
        try:
            self.store.download(template.bucket, template.key, path)
        except errors.NotFound:
            raise errors.NotFound(
                f"Template {template.name} was removed after this job was created; create the "
                "job again with another template."
            ) from None
        return LocalTemplate(template, path, video.probe(path, self.settings.max_template_frames))

    def create(
        self, owner: Owner, media_name: str, template_id: str, display_name: str
    ) -> TemplateRecord:
        """Checks an uploaded GIF or MP4 and makes it a template of this owner."""
        template_id_of(TEMPLATE_PREFIX + template_id)
        try:
            self.get(owner, TEMPLATE_PREFIX + template_id)
            raise errors.AlreadyExists(f"Template templates/{template_id} already exists.")
        except errors.NotFound:
            pass
        upload = self.media_library.get(owner.scope, media_name)
        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "template"
            self.media_library.download(upload, path)
            info = video.probe(path, self.settings.max_template_frames)
            kind = self._check_template(info)
            self._check_has_face(path, info)
            extension, content_type = EXTENSIONS[kind]
            key = f"{owner.scope}/{template_id}{extension}"
            self.store.put_new_file(self.settings.templates_bucket, key, path, content_type)
        record = self._record(
            template_id, display_name or template_id, kind, key, info, builtin=False
        )
        self.store.put_record(
            self.settings.records_bucket, _record_key(owner.scope, template_id), asdict(record)
        )
        return record

    def delete(self, owner: Owner, name: str) -> None:
        """Removes one of the owner's own templates: its file, then its record, so a removal
        cut short is finished by asking again. Built-in ones stay; so do a tenant's when a
        person of it asks."""
        record = self.get(owner, name)
        if record.builtin:
            raise errors.FailedPrecondition(
                f"{name} is a built-in template: built-in templates cannot be removed."
            )
        record_key = _record_key(owner.scope, template_id_of(name))
        if not self.store.exists(self.settings.records_bucket, record_key):
            raise errors.PermissionDenied(
                f"{name} is shared by your tenant: only the tenant, with its API key, can "
                "remove it."
            )
        self.store.delete(record.bucket, record.key)
        self.store.delete(self.settings.records_bucket, record_key)

    def _check_template(self, info: video.MediaInfo) -> str:
        if not info.has_video or info.frame_count < 1:
            raise errors.InvalidInput("The template has no frames: upload a GIF or an MP4.")
        if info.width < 1 or info.height < 1:
            raise errors.InvalidInput(
                "The template's picture size cannot be read: its header is damaged or forged."
            )
        kind = GIF if info.format_name == "gif" else VIDEO
        self._check_frames(info)
        long_side, short_side = max(info.width, info.height), min(info.width, info.height)
        if (
            long_side > self.settings.max_template_long_side
            or short_side > self.settings.max_template_short_side
        ):
            raise errors.TooLarge(
                f"The template is {info.width}x{info.height}; templates are at most 1080p."
            )
        shortest, longest = {
            GIF: (self.settings.gif_template_min_seconds, self.settings.gif_template_max_seconds),
            VIDEO: (
                self.settings.video_template_min_seconds,
                self.settings.video_template_max_seconds,
            ),
        }[kind]
        if not shortest <= info.duration_seconds <= longest:
            raise errors.InvalidInput(
                f"The {KIND_TITLES[kind]} lasts {info.duration_seconds:.1f} s; "
                f"{KIND_TITLES[kind]} templates last {shortest:g} to {longest:g} s."
            )
        return kind

    def _check_frames(self, info: video.MediaInfo) -> None:
        """Frame count, frame rate and total pixels, as measured (not as the headers say)."""
        settings = self.settings
        if info.frame_count > settings.max_template_frames:
            raise errors.InvalidInput(
                f"The template has more than {settings.max_template_frames:,} frames (whatever "
                f"its header says); templates have at most {settings.max_template_frames:,}: "
                "shorten it or lower its frame rate."
            )
        if info.fps > settings.max_template_fps:
            raise errors.InvalidInput(
                f"The template plays at {info.fps:,.0f} frames per second ({info.frame_count:,} "
                f"frames in {info.duration_seconds:.2f} s); templates play at most "
                f"{settings.max_template_fps:g}: re-encode it at 30 fps or less."
            )
        pixel_frames = info.width * info.height * info.frame_count
        if pixel_frames > settings.max_template_pixel_frames:
            raise errors.InvalidInput(
                f"The template is {info.width}x{info.height} with {info.frame_count:,} frames, "
                f"{pixel_frames / 1e9:.1f} billion pixels in all; templates hold at most "
                f"{settings.max_template_pixel_frames / 1e9:.1f} billion: shorten it, or lower "
                "its frame rate or resolution."
            )

    def _check_has_face(self, path: Path, info: video.MediaInfo) -> None:
        step = max(1, info.frame_count // FACE_CHECK_SAMPLES)
        analyzer = faces.default_analyzer()
        for index, frame in enumerate(video.iter_frames(path)):
            if index % step == 0 and analyzer.primary_face(frame) is not None:
                return
        raise errors.FailedPrecondition(
            "No face was found in the template; templates must show a face."
        )

    def _record(
        self,
        template_id: str,
        display_name: str,
        kind: str,
        key: str,
        info: video.MediaInfo,
        builtin: bool,
    ) -> TemplateRecord:
        return TemplateRecord(
            name=TEMPLATE_PREFIX + template_id,
            display_name=display_name,
            kind=kind,
            bucket=self.settings.templates_bucket,
            key=key,
            duration_seconds=info.duration_seconds,
            width=info.width,
            height=info.height,
            frame_count=info.frame_count,
            fps=info.fps,
            builtin=builtin,
        )
