// Re:Mind web client: uploads a photo, starts a GIF job, shows live progress and the result,
// all over gRPC-web through Envoy (the same path the mobile app takes). A person signs in with
// a short-lived token of their identity provider (locally: `remind token --user NAME`), which
// every call carries as `authorization: Bearer`; no API key ever lives in an app.
import { GrpcWebFetchTransport } from "@protobuf-ts/grpcweb-transport";
import { RpcError } from "@protobuf-ts/runtime-rpc";
import { JobServiceClient } from "./gen/remind/v1/job_service.client";
import { JobStage, JobState } from "./gen/remind/v1/job_service";
import { MediaServiceClient } from "./gen/remind/v1/media_service.client";
import { TemplateServiceClient } from "./gen/remind/v1/template_service.client";
import { TemplateKind } from "./gen/remind/v1/template_service";

const params = new URLSearchParams(location.search);
const element = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

const STAGES: Record<number, string> = {
  [JobStage.QUEUED]: "Queued",
  [JobStage.PREPARING]: "Preparing",
  [JobStage.EXTRACTING_VOICE]: "Extracting the voice",
  [JobStage.SWAPPING_FACES]: "Swapping faces",
  [JobStage.SYNCING_LIPS]: "Syncing lips",
  [JobStage.ENCODING]: "Encoding",
  [JobStage.STORING]: "Storing",
  [JobStage.DONE]: "Done",
};

// The token arrives in the address (the sign-in link), then stays for this browser tab only.
const token = params.get("token") ?? sessionStorage.getItem("remind-token") ?? "";
sessionStorage.setItem("remind-token", token);

// Who the token names, for the page to say; the servers check the token, not this.
function signedInAs(jwt: string): string {
  try {
    const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub ?? "";
  } catch {
    return "";
  }
}

function clients() {
  const transport = new GrpcWebFetchTransport({
    baseUrl: params.get("api") ?? location.origin,
    meta: token ? { authorization: `Bearer ${token}` } : {},
  });
  return {
    jobs: new JobServiceClient(transport),
    media: new MediaServiceClient(transport),
    templates: new TemplateServiceClient(transport),
  };
}

function show(message: string, isError = false) {
  const status = element<HTMLParagraphElement>("status");
  status.textContent = message;
  status.className = isError ? "error" : "";
}

function explain(error: unknown): string {
  return error instanceof RpcError ? `${error.code}: ${decodeURIComponent(error.message)}` : String(error);
}

async function loadTemplates() {
  try {
    const { response } = await clients().templates.listTemplates({ kind: TemplateKind.GIF });
    const select = element<HTMLSelectElement>("template");
    select.replaceChildren(
      ...response.templates.map((template) => new Option(template.displayName, template.name)),
    );
    show(`${response.templates.length} templates`);
  } catch (error) {
    show(explain(error), true);
  }
}

// Browsers cannot client-stream over gRPC-web: upload with unary chunk calls.
async function uploadPhoto(file: File): Promise<string> {
  const { media } = clients();
  const { response: upload } = await media.createUpload({
    contentType: file.type, filename: file.name, sizeBytes: BigInt(file.size),
  });
  const bytes = new Uint8Array(await file.arrayBuffer());
  for (let offset = 0; offset < bytes.length; offset += upload.maxChunkBytes) {
    await media.appendUpload({
      upload: upload.upload, offset: BigInt(offset),
      data: bytes.subarray(offset, offset + upload.maxChunkBytes),
    });
  }
  const { response } = await media.finishUpload({ upload: upload.upload });
  return response.media!.name;
}

async function start() {
  const file = element<HTMLInputElement>("photo").files?.[0];
  if (!file) return show("Choose a photo of a face first.", true);
  const progress = element<HTMLProgressElement>("progress");
  const result = element<HTMLImageElement>("result");
  result.hidden = true;
  progress.value = 0;
  try {
    show("Uploading the photo…");
    const faceMedia = await uploadPhoto(file);
    const { jobs } = clients();
    const template = element<HTMLSelectElement>("template").value;
    const consent = element<HTMLInputElement>("consent").checked;
    const { response } = await jobs.createGifJob({
      faceMedia, template, faceswapEngine: "", consent,
    });
    const watch = jobs.watchJob({ name: response.job!.name });
    for await (const { job } of watch.responses) {
      if (!job) continue;
      progress.value = job.progress?.fraction ?? 0;
      const frames = job.progress?.framesTotal
        ? ` (${job.progress.framesDone}/${job.progress.framesTotal} frames)` : "";
      show(`${STAGES[job.progress?.stage ?? 0] ?? "Working"}${frames}`);
      if (job.state === JobState.SUCCEEDED) {
        result.src = job.result!.downloadUrl;
        result.hidden = false;
        show(`Done: ${job.result!.framesWithFace}/${job.result!.framesTotal} frames had a face.`);
      } else if (job.state === JobState.FAILED || job.state === JobState.CANCELLED) {
        show(job.error?.message || "The job was cancelled.", true);
      }
    }
  } catch (error) {
    show(explain(error), true);
  }
}

element<HTMLParagraphElement>("account").textContent = token
  ? `Signed in as ${signedInAs(token) || "someone"}.`
  : "Not signed in: open the link your app (or `remind token`) gives you.";
element<HTMLButtonElement>("start").addEventListener("click", start);
loadTemplates();
