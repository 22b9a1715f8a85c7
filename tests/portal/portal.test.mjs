// Browser test of the hds portal: Debian's Chromium, driven by playwright-core, against a real
// `hds up --http` on a fresh data dir (whose first start runs the seed's flow).
//
//   cargo build -p hds && (cd tests/portal && npm ci) && node --test tests/portal/portal.test.mjs
//
// Environment: HDS_BIN (default target/debug/hds), CHROMIUM (default /usr/bin/chromium),
// PORTAL_SCREENSHOTS (default /tmp: where portal-*.png go). For a binary that does not serve
// /portal/: HDS_PORTAL_ORIGIN=http://host:port takes the page from `cargo run -p hds-portal
// --example serve`, and HDS_PORTAL_FROM_SOURCE=1 serves crates/hds-portal/src/assets directly.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repository = path.resolve(here, "../..");
const hdsBinary = process.env.HDS_BIN || path.join(repository, "target/debug/hds");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const screenshots = process.env.PORTAL_SCREENSHOTS || "/tmp";
const assetsDir = path.join(repository, "crates/hds-portal/src/assets");

const CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
const HEALTHCARE = "2023-06-01-preview";

let server;
let temporary;
let base;
let admin;
let adminToken;
let browser;
let page;
const pageProblems = [];

// ---------------------------------------------------------------------------------------------
// The server

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

function startHds(dataDir, port) {
  const child = spawn(hdsBinary, ["up", "--http", "--data-dir", dataDir, "--listen", `127.0.0.1:${port}`], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
  });
  let output = "";
  const ready = new Promise((resolve, reject) => {
    const onData = (chunk) => {
      output += chunk;
      if (output.includes("hds is ready")) resolve();
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (chunk) => {
      output += chunk;
    });
    child.once("exit", (code) => reject(new Error(`hds exited (${code}) before it was ready:\n${output}`)));
  });
  return { child, ready, output: () => output };
}

async function stopHds() {
  if (!server || server.child.exitCode !== null) return;
  const exited = new Promise((resolve) => server.child.once("exit", resolve));
  server.child.kill("SIGTERM");
  await exited;
}

async function adminTokenFor(credentials) {
  const response = await fetch(`${base}/${credentials.tenantId}/oauth2/v2.0/token`, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "client_credentials",
      client_id: credentials.clientId,
      client_secret: credentials.clientSecret,
      scope: "https://management.azure.com/.default",
    }),
  });
  assert.equal(response.status, 200, "the admin gets a management token");
  return (await response.json()).access_token;
}

/** The truth, from the control plane directly. */
async function api(method, resourcePath, apiVersion, body) {
  const response = await fetch(`${base}${resourcePath}?api-version=${apiVersion}`, {
    method,
    headers: { Authorization: `Bearer ${adminToken}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

// ---------------------------------------------------------------------------------------------
// Resource ids of the seed's flow

const ids = {};

function computeIds() {
  const group = `/subscriptions/${admin.subscriptionId}/resourceGroups/default`;
  ids.group = group;
  ids.vault = `${group}/providers/Microsoft.KeyVault/vaults/default`;
  ids.workspace = `${group}/providers/Microsoft.HealthcareApis/workspaces/default`;
  ids.service = `${ids.workspace}/dicomservices/dicom`;
  ids.identity = `${group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/portal-uami`;
  ids.createdService = `${ids.workspace}/dicomservices/portal-cmk`;
}

function portalUrl(params) {
  return `${base}/portal/#${new URLSearchParams(params).toString()}`;
}

async function shot(name) {
  const file = path.join(screenshots, `portal-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Takes the page from a server that serves only the portal (the crate's `serve` example). */
async function serveFromOrigin(route) {
  const url = new URL(route.request().url());
  const response = await route.fetch({ url: `${process.env.HDS_PORTAL_ORIGIN}${url.pathname}` });
  return route.fulfill({ response });
}

async function serveFromSource(route) {
  const name = new URL(route.request().url()).pathname.replace(/^\/portal\/?/, "") || "index.html";
  const types = { "index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml" };
  if (!types[name]) return route.fulfill({ status: 404, body: "Not found" });
  return route.fulfill({
    status: 200,
    contentType: types[name],
    headers: { "Content-Security-Policy": (await readFile(path.join(assetsDir, "content-security-policy.txt"), "utf8")).trim() },
    body: await readFile(path.join(assetsDir, name)),
  });
}

// ---------------------------------------------------------------------------------------------

before(async () => {
  assert.ok(existsSync(hdsBinary), `no hds binary at ${hdsBinary}: run cargo build -p hds`);
  assert.ok(existsSync(chromiumPath), `no Chromium at ${chromiumPath}: apt-get install -y chromium`);
  temporary = await mkdtemp(path.join(os.tmpdir(), "hds-portal-test-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = startHds(path.join(temporary, "data"), port);
  await server.ready;
  admin = JSON.parse(await readFile(path.join(temporary, "data", "admin.json"), "utf8"));
  adminToken = await adminTokenFor(admin);
  computeIds();

  // A user-assigned identity for the wizard and the create flow.
  const identity = await api("PUT", ids.identity, "2023-01-31", { location: "local" });
  assert.ok(identity.status === 200 || identity.status === 201, JSON.stringify(identity.body));

  const fromSource = process.env.HDS_PORTAL_FROM_SOURCE === "1";
  const fromOrigin = Boolean(process.env.HDS_PORTAL_ORIGIN);
  if (!fromSource && !fromOrigin) {
    const response = await fetch(`${base}/portal/`);
    assert.equal(response.status, 200, "hds serves the portal at /portal/ (or set HDS_PORTAL_FROM_SOURCE=1)");
    const policy = (await readFile(path.join(assetsDir, "content-security-policy.txt"), "utf8")).trim();
    assert.equal(response.headers.get("content-security-policy"), policy);
  }

  // A persistent context on a fresh profile directory: nothing from another run leaks in.
  browser = await chromium.launchPersistentContext(path.join(temporary, "chromium-profile"), {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const context = browser;
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  page = context.pages()[0] || (await context.newPage());
  if (fromOrigin) await page.route("**/portal/**", serveFromOrigin);
  else if (fromSource) await page.route("**/portal/**", serveFromSource);
  page.on("pageerror", (error) => pageProblems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !/Failed to load resource/.test(message.text())) {
      pageProblems.push(`console: ${message.text()}`);
    }
  });
  page.on("response", (response) => {
    if (response.url().startsWith(base) && response.status() >= 500) {
      pageProblems.push(`${response.status()} from ${response.url()}`);
    }
  });
});

after(async () => {
  await browser?.close();
  await stopHds();
  if (temporary) await rm(temporary, { recursive: true, force: true });
});

test("sign in with the admin's client credentials", async () => {
  await page.goto(`${base}/portal/`);
  await page.locator("#tenant-id").fill(admin.tenantId);
  await page.locator("#client-id").fill(admin.clientId);
  await page.locator("#client-secret").fill(admin.clientSecret);
  await shot("signin");
  await page.locator("#sign-in").click();
  const vaultRow = page.locator(`tr[data-resource-id="${ids.vault}"]`);
  await vaultRow.waitFor();
  assert.equal(await vaultRow.locator("td").nth(1).textContent(), "Key vault");
  await page.locator(`tr[data-resource-id="${ids.service}"]`).waitFor();
  await page.locator(`tr[data-resource-id="${ids.identity}"]`).waitFor();

  const storage = await page.evaluate(() => ({
    session: JSON.stringify(sessionStorage),
    local: localStorage.length,
    cookies: document.cookie,
  }));
  assert.match(storage.session, /accessToken/, "the token is in sessionStorage");
  assert.ok(!storage.session.includes(admin.clientSecret), "the client secret is not kept");
  assert.equal(storage.local, 0, "nothing in localStorage");
  assert.equal(storage.cookies, "", "no cookies");
  await shot("resources");
});

test("Encryption shows the key URL the seed's flow set", async () => {
  const service = await api("GET", ids.service, HEALTHCARE);
  const keyUrl = service.body.properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl;
  await page.goto(portalUrl({ view: "dicom-encryption", id: ids.service }));
  const keyInput = page.locator("#key-uri");
  await keyInput.waitFor();
  assert.equal(await keyInput.inputValue(), keyUrl);
  assert.ok(await page.locator('input[name="encryption-type"][value="cmk"]').isChecked());
  assert.ok(await page.locator('input[name="identity-type"][value="system"]').isChecked());
  await shot("encryption");
});

test("Encryption shows the API's validation error verbatim and changes nothing", async () => {
  const before = await api("GET", ids.service, HEALTHCARE);
  const badKey = "https://127.0.0.1:9/keys/no-such-key/0123456789abcdef0123456789abcdef";
  await page.goto(portalUrl({ view: "dicom-encryption", id: ids.service }));
  await page.locator("#key-uri").fill(badKey);
  await page.locator("#save-encryption").click();
  const code = page.locator("#encryption-status [data-error-code]");
  await code.waitFor();
  const shownCode = await code.textContent();
  const shownMessage = await page.locator("#encryption-status .message").textContent();

  const direct = await api("PUT", ids.service, HEALTHCARE, {
    location: before.body.location,
    identity: { type: "SystemAssigned" },
    properties: {
      encryption: {
        customerManagedKeyEncryption: { keyEncryptionKeyUrl: badKey, keyEncryptionKeyIdentity: { identityType: "SystemAssigned" } },
      },
    },
  });
  assert.equal(direct.status, 400);
  assert.equal(shownCode, direct.body.error.code);
  assert.equal(shownMessage, direct.body.error.message);
  await shot("encryption-error");

  const afterwards = await api("GET", ids.service, HEALTHCARE);
  assert.deepEqual(afterwards.body.properties.encryption, before.body.properties.encryption);
});

test("Identity shows the system-assigned identity On with its principal", async () => {
  const service = await api("GET", ids.service, HEALTHCARE);
  await page.goto(portalUrl({ view: "dicom-identity", id: ids.service }));
  await page.locator("#principal-id").waitFor();
  assert.equal(await page.locator("#principal-id").textContent(), service.body.identity.principalId);
  assert.equal(await page.locator("#status-on").getAttribute("aria-pressed"), "true");
  assert.ok(await page.locator("#save-identity").isDisabled(), "nothing to save until the status changes");
  await shot("identity");
});

test("Access control (IAM) shows the role assignment for the service's principal", async () => {
  const service = await api("GET", ids.service, HEALTHCARE);
  const principalId = service.body.identity.principalId;
  await page.goto(portalUrl({ view: "vault-iam", id: ids.vault }));
  const row = page.locator(`tr[data-principal-id="${principalId}"][data-role-definition="${CRYPTO_SERVICE_ENCRYPTION_USER}"]`);
  await row.waitFor();
  assert.equal(await row.locator("td.role").textContent(), "Key Vault Crypto Service Encryption User");
  assert.equal(await row.locator("td").first().textContent(), "dicom");
  assert.equal(await row.locator("td").last().textContent(), "This resource");
  await shot("iam");
});

test("Add role assignment grants a user-assigned identity the crypto role on the vault", async () => {
  const identity = await api("GET", ids.identity, "2023-01-31");
  const principalId = identity.body.properties.principalId;
  await page.goto(portalUrl({ view: "vault-iam", id: ids.vault }));
  await page.locator("#add-role-assignment").click();
  await page.locator("#role-search").fill("Crypto Service");
  await page.locator('tr[data-role-name="Key Vault Crypto Service Encryption User"]').click();
  await shot("iam-role");
  await page.locator("#wizard-next").click();
  await page.locator("#select-members").click();
  await page.locator("#managed-identity-kind").selectOption("user");
  await page.locator('tr[data-member-name="portal-uami"]').click();
  await page.locator("#select-member-confirm").click();
  assert.match(await page.locator("#selected-member").textContent(), new RegExp(principalId));
  await page.locator("#wizard-review").click();
  await shot("iam-review");
  await page.locator("#review-assign").click();
  await page.locator(`tr[data-principal-id="${principalId}"][data-role-definition="${CRYPTO_SERVICE_ENCRYPTION_USER}"]`).waitFor();

  const assignments = await api("GET", `${ids.vault}/providers/Microsoft.Authorization/roleAssignments`, "2022-04-01");
  const granted = assignments.body.value.filter(
    (assignment) =>
      assignment.properties.principalId === principalId &&
      assignment.properties.roleDefinitionId.endsWith(CRYPTO_SERVICE_ENCRYPTION_USER) &&
      assignment.properties.scope.toLowerCase() === ids.vault.toLowerCase(),
  );
  assert.equal(granted.length, 1, "one assignment at the vault's scope");
});

test("Keys: select the key and its version, read and copy the Key Identifier", async () => {
  const key = await api("GET", `${ids.vault}/keys/dicom-cmk`, "2022-07-01");
  const identifier = key.body.properties.keyUriWithVersion;
  await page.goto(portalUrl({ view: "vault-keys", id: ids.vault }));
  await shot("keys");
  await page.locator('tr[data-key-name="dicom-cmk"] a').click();
  const version = identifier.split("/").pop();
  await page.locator(`tr[data-key-version="${version}"] a`).click();
  const field = page.locator("#key-identifier");
  await field.waitFor();
  assert.equal(await field.inputValue(), identifier);
  await page.locator("#copy-key-identifier").click();
  await page.locator("#copy-status", { hasText: /Copied|Ctrl\+C/ }).waitFor();
  if ((await page.locator("#copy-status").textContent()).startsWith("Copied")) {
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), identifier);
  }
  await shot("key-identifier");
});

test("Create DICOM service with a customer-managed key and a user-assigned identity", async () => {
  const key = await api("GET", `${ids.vault}/keys/dicom-cmk`, "2022-07-01");
  await page.goto(portalUrl({ view: "create-dicom", id: ids.workspace }));
  await page.locator("#dicom-name").fill("portal-cmk");
  await page.locator("#next-security").click();
  await page.locator('input[name="create-encryption"][value="cmk"]').check();
  await page.locator("#create-select-from-vault").click();
  await page.locator("#picker-vault").selectOption(ids.vault);
  await page.locator('#picker-key option[value="dicom-cmk"]').waitFor({ state: "attached" });
  await page.locator("#picker-key").selectOption("dicom-cmk");
  assert.equal(await page.locator("#create-key-uri").inputValue(), key.body.properties.keyUriWithVersion);
  await page.locator("#create-identity").selectOption(ids.identity);
  await shot("create-security");
  await page.locator("#review-create").click();
  await page.locator(".notice.success", { hasText: "Validation passed" }).waitFor();
  await shot("create-review");
  await page.locator("#create-dicom").click();
  await page.waitForURL((url) => url.hash.includes("view=dicom-overview"));
  await page.locator("h1", { hasText: "portal-cmk" }).waitFor();

  const created = await api("GET", ids.createdService, HEALTHCARE);
  assert.equal(created.status, 200);
  assert.equal(created.body.identity.type, "UserAssigned");
  assert.deepEqual(Object.keys(created.body.identity.userAssignedIdentities).map((id) => id.toLowerCase()), [ids.identity.toLowerCase()]);
  assert.equal(
    created.body.properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl,
    key.body.properties.keyUriWithVersion,
  );
});

test("Identity of the new service: its user-assigned identity, and turning the system-assigned one On", async () => {
  const service = await api("GET", ids.createdService, HEALTHCARE);
  const attached = Object.keys(service.body.identity.userAssignedIdentities)[0];
  await page.goto(portalUrl({ view: "dicom-identity", id: ids.createdService, tab: "user" }));
  const row = page.locator(`tr[data-identity-id="${attached}"]`);
  await row.waitFor();
  assert.equal(await row.locator("td").first().textContent(), "portal-uami");
  await shot("identity-user");

  await page.goto(portalUrl({ view: "dicom-identity", id: ids.createdService }));
  await page.locator("#status-on").click();
  await page.locator("#save-identity").click();
  await page.locator("#principal-id").waitFor();
  const updated = await api("GET", ids.createdService, HEALTHCARE);
  assert.equal(updated.body.identity.type, "SystemAssigned,UserAssigned");
  assert.equal(await page.locator("#principal-id").textContent(), updated.body.identity.principalId);
  assert.equal(
    updated.body.properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl,
    service.body.properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl,
    "saving the identity keeps the key",
  );
});

test("Resource health says Available", async () => {
  await page.goto(portalUrl({ view: "dicom-health", id: ids.service }));
  const state = page.locator("#availability-state");
  await state.waitFor();
  // The monitor may not have probed yet on a fresh start: refresh until it reports.
  for (let attempt = 0; attempt < 30 && (await state.textContent()) === "Unknown"; attempt += 1) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await page.getByRole("button", { name: "Refresh" }).click();
    await state.waitFor();
  }
  assert.equal(await state.textContent(), "Available");
  assert.match(await page.locator("#health-summary").textContent(), /aren't any known problems/);
  await shot("health");
});

test("Sign out forgets the token", async () => {
  await page.locator("#sign-out").click();
  await page.locator("#sign-in").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
});

test("the browser enforces the policy: an injected inline script does not run", async () => {
  await page.goto(`${base}/portal/`);
  await page.locator("#sign-in").waitFor();
  const violation = page.waitForEvent("console", (message) => /Content Security Policy/.test(message.text()));
  const ran = await page.evaluate(async () => {
    const script = document.createElement("script");
    script.textContent = "window.inlineScriptRan = true;";
    document.body.append(script);
    await new Promise((resolve) => setTimeout(resolve, 50));
    return window.inlineScriptRan === true;
  });
  assert.equal(ran, false);
  await violation;
  // This violation was provoked on purpose; the next test checks that nothing else happened.
  const provoked = pageProblems.findIndex((problem) => /Content Security Policy/.test(problem));
  if (provoked >= 0) pageProblems.splice(provoked, 1);
});

test("no script errors, Content-Security-Policy violations or server errors", () => {
  assert.deepEqual(pageProblems, []);
});
