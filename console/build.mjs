// Copies the vendored front-end files from node_modules into the console's static directory.
// Run after `npm ci`: node build.mjs
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, "node_modules", "uplot", "dist");
const target = join(here, "..", "src", "eyenet", "serving", "console", "static", "vendor");
const files = ["uPlot.iife.min.js", "uPlot.min.css"];

const version = JSON.parse(readFileSync(join(here, "node_modules", "uplot", "package.json"), "utf8")).version;
mkdirSync(target, { recursive: true });
for (const name of files) {
  copyFileSync(join(source, name), join(target, name));
  console.log(`uplot ${version}: ${name} -> src/eyenet/serving/console/static/vendor/${name}`);
}
