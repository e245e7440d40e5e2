// Builds dist/: generated protobuf-ts stubs are made by `make web` before this runs.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/app.ts"],
  bundle: true,
  format: "iife",
  target: "es2020",
  minify: true,
  outfile: "dist/app.js",
});
copyFileSync("index.html", "dist/index.html");
