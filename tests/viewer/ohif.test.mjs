// The OHIF viewer (the built app of the npm package @ohif/app, installed by scripts/ohif) opens
// studies stored in a real `hds up`, in Debian's Chromium driven by playwright-core.
//
//   cargo build -p hds && (cd tests/viewer && npm ci) && node --test tests/viewer/ohif.test.mjs
//
// OHIF is served from its own origin, as a hospital would deploy it; the DICOM service lists
// that origin in its corsConfiguration and the browser sends the bearer token with every
// request (OHIF's data source takes the token from its user authentication service; here the
// browser context adds the header). Stored: a native CT and a JPEG 2000 MR from pydicom's and
// pydicom-data's files, under the seed's customer-managed key. Checked: the study list shows
// both patients, and each study's viewport canvas shows the image (not a blank canvas).
//
// Environment: HDS_BIN (default target/debug/hds), CHROMIUM (default /usr/bin/chromium),
// OHIF_DIST (default: what scripts/ohif prints), HDS_PYDICOM_TESTDATA and HDS_PYDICOM_DATA
// (where pydicom's and pydicom-data's files are; scripts/test sets both), VIEWER_SCREENSHOTS
// (default target/viewer-screenshots).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createReadStream, existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, stat } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { freePort, startHds } from "../browser/hds-server.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const repository = path.resolve(here, "../..");
const hdsBinary = process.env.HDS_BIN || path.join(repository, "target/debug/hds");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const screenshots = process.env.VIEWER_SCREENSHOTS || path.join(repository, "target/viewer-screenshots");
const ohifDist =
  process.env.OHIF_DIST || execFileSync(path.join(repository, "scripts/ohif"), { encoding: "utf8" }).trim();

const CT = { file: "CT_small.dcm", from: "HDS_PYDICOM_TESTDATA", patient: "CompressedSamples^CT1" };
const J2K = { file: "MR2_J2KR.dcm", from: "HDS_PYDICOM_DATA", subdirectory: "data", patient: "CompressedSamples^MR2" };
const HEALTHCARE = "2023-06-01-preview";

let hds;
let temporary;
let base;
let viewerServer;
let viewerOrigin;
let browser;
let context;
const stored = {};

async function token(admin, resource) {
  const response = await fetch(`${base}/${admin.tenantId}/oauth2/v2.0/token`, {
    method: "POST",
    body: new URLSearchParams({
      grant_type: "client_credentials",
      client_id: admin.clientId,
      client_secret: admin.clientSecret,
      scope: `${resource}/.default`,
    }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return (await response.json()).access_token;
}

/// The seed's DICOM service, written again with `corsConfiguration` listing the viewer's origin
/// (a PUT carries the whole resource: identity and key as they are).
async function allowViewerOrigin(admin, origin) {
  const management = await token(admin, "https://management.azure.com");
  const id = `/subscriptions/${admin.subscriptionId}/resourceGroups/default/providers/Microsoft.HealthcareApis/workspaces/default/dicomservices/dicom`;
  const url = `${base}${id}?api-version=${HEALTHCARE}`;
  const headers = { Authorization: `Bearer ${management}`, "Content-Type": "application/json" };
  const current = await (await fetch(url, { headers })).json();
  const identity = { type: current.identity.type };
  if (current.identity.userAssignedIdentities) {
    identity.userAssignedIdentities = Object.fromEntries(
      Object.keys(current.identity.userAssignedIdentities).map((key) => [key, {}]),
    );
  }
  const body = {
    location: current.location,
    identity,
    properties: {
      encryption: current.properties.encryption,
      corsConfiguration: {
        origins: [origin],
        headers: ["Authorization", "Accept", "Content-Type"],
        methods: ["GET", "OPTIONS"],
        maxAge: 600,
        allowCredentials: false,
      },
    },
  };
  const response = await fetch(url, { method: "PUT", headers, body: JSON.stringify(body) });
  assert.equal(response.status, 200, await response.text());
}

async function store(dicomToken, file) {
  const directory = process.env[file.from];
  assert.ok(directory, `${file.from} is not set (scripts/test sets it)`);
  const bytes = await readFile(path.join(directory, file.subdirectory || "", file.file));
  const boundary = "viewer-test-boundary";
  const body = Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
    bytes,
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  const response = await fetch(`${base}/dicom/default/dicom/v2/studies`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${dicomToken}`,
      "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
      Accept: "application/dicom+json",
    },
    body,
  });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  // The response's RetrieveURL (0008,1190) names the study.
  const retrieveUrl = JSON.parse(text)["00081190"].Value[0];
  return retrieveUrl.split("/studies/")[1];
}

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".svg": "image/svg+xml",
  ".ico": "image/x-icon",
  ".png": "image/png",
  ".woff2": "font/woff2",
  ".woff": "font/woff",
  ".txt": "text/plain",
};

/// OHIF's data source pointed at the seed's DICOM service: QIDO and WADO-RS, frames fetched in
/// whatever syntax they are stored (OHIF decodes JPEG 2000 itself), thumbnails rendered by hds.
function appConfig(serviceUrl) {
  return `window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'hds',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'hds',
    configuration: {
      friendlyName: 'hds',
      name: 'hds',
      wadoUriRoot: '${serviceUrl}',
      qidoRoot: '${serviceUrl}',
      wadoRoot: '${serviceUrl}',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      staticWado: false,
      singlepart: false,
      bulkDataURI: { enabled: false },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
`;
}

/// OHIF's files, with its configuration replaced and every other path answered with the app's
/// index.html (its router owns the paths).
function serveViewer(port, config) {
  const root = path.resolve(ohifDist);
  const server = http.createServer(async (request, response) => {
    const pathname = decodeURIComponent(new URL(request.url, "http://viewer").pathname);
    if (pathname === "/app-config.js") {
      response.writeHead(200, { "Content-Type": MIME[".js"] });
      response.end(config);
      return;
    }
    let file = path.resolve(root, `.${pathname}`);
    if (!file.startsWith(root + path.sep)) file = path.join(root, "index.html");
    const found = await stat(file).catch(() => null);
    if (!found || !found.isFile()) file = path.join(root, "index.html");
    response.writeHead(200, { "Content-Type": MIME[path.extname(file)] || "application/octet-stream" });
    createReadStream(file).pipe(response);
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

/// How much of the viewport's canvas shows an image: the share of pixels that are not black
/// and the number of distinct grey levels among them (a blank or single-colour canvas fails).
async function canvasContent(page) {
  return page.evaluate(() => {
    const canvases = [...document.querySelectorAll("canvas")].filter((canvas) => canvas.width > 64 && canvas.height > 64);
    let best = { lit: 0, levels: 0, width: 0, height: 0 };
    for (const canvas of canvases) {
      const context2d = canvas.getContext("2d", { willReadFrequently: true });
      if (!context2d) continue;
      const { data } = context2d.getImageData(0, 0, canvas.width, canvas.height);
      let lit = 0;
      const levels = new Set();
      for (let index = 0; index < data.length; index += 4) {
        const value = data[index] + data[index + 1] + data[index + 2];
        if (value > 30) {
          lit += 1;
          levels.add(data[index]);
        }
      }
      const share = lit / (canvas.width * canvas.height);
      if (share > best.lit) best = { lit: share, levels: levels.size, width: canvas.width, height: canvas.height };
    }
    return best;
  });
}

async function waitFor(condition, what, timeoutMs = 90_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await condition();
    if (last.ok) return last;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last)}`);
}

before(async () => {
  assert.ok(existsSync(path.join(ohifDist, "index.html")), `no OHIF build at ${ohifDist}`);
  temporary = await mkdtemp(path.join(os.tmpdir(), "hds-viewer-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  hds = startHds(hdsBinary, path.join(temporary, "data"), port);
  await hds.ready;
  const admin = JSON.parse(await readFile(path.join(temporary, "data", "admin.json"), "utf8"));
  const viewerPort = await freePort();
  viewerOrigin = `http://127.0.0.1:${viewerPort}`;
  await allowViewerOrigin(admin, viewerOrigin);
  const dicomToken = await token(admin, "https://dicom.healthcareapis.azure.com");
  stored.ct = await store(dicomToken, CT);
  stored.j2k = await store(dicomToken, J2K);
  viewerServer = await serveViewer(viewerPort, appConfig(`${base}/dicom/default/dicom/v2`));
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
  });
  context = await browser.newContext({
    viewport: { width: 1400, height: 900 },
    extraHTTPHeaders: { Authorization: `Bearer ${dicomToken}` },
  });
  await mkdir(screenshots, { recursive: true });
});

after(async () => {
  await browser?.close();
  viewerServer?.close();
  if (hds) {
    hds.child.kill("SIGTERM");
    await new Promise((resolve) => hds.child.once("exit", resolve));
  }
  if (temporary) await rm(temporary, { recursive: true, force: true });
});

test("the study list shows the studies stored in hds", async () => {
  const page = await context.newPage();
  await page.goto(`${viewerOrigin}/`);
  for (const patient of ["CT1", "MR2"]) {
    await page.getByText(new RegExp(`CompressedSamples.{1,3}${patient}`)).first().waitFor({ timeout: 90_000 });
  }
  await page.screenshot({ path: path.join(screenshots, "ohif-study-list.png") });
  await page.close();
});

for (const [name, studyKey] of [["native CT", "ct"], ["JPEG 2000 MR", "j2k"]]) {
  test(`the ${name} renders in the viewport`, async () => {
    const page = await context.newPage();
    const problems = [];
    page.on("response", (response) => {
      if (response.url().startsWith(base) && response.status() >= 400) {
        problems.push(`${response.status()} ${response.url()}`);
      }
    });
    await page.goto(`${viewerOrigin}/viewer?StudyInstanceUIDs=${stored[studyKey]}`);
    const content = await waitFor(async () => {
      const found = await canvasContent(page);
      return { ok: found.lit > 0.05 && found.levels > 16, ...found };
    }, `the ${name} on the viewport canvas`);
    await page.screenshot({ path: path.join(screenshots, `ohif-${studyKey}.png`) });
    assert.deepEqual(problems, [], "hds refused none of the viewer's requests");
    assert.ok(content.levels > 16, JSON.stringify(content));
    await page.close();
  });
}
