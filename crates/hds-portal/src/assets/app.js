// The hds portal: a hash-routed single-page app over the ARM control plane of this origin.
//
// Rules this file keeps (the crate's tests check the first two):
// - Data never becomes markup: nodes are built with el(), and text is set as text nodes.
// - The token is kept in sessionStorage only; the client secret is never stored.
// - Every request goes to this origin (the Content-Security-Policy allows nothing else).

const API_VERSIONS = {
  subscriptions: "2022-12-01",
  resources: "2022-09-01",
  keyVault: "2022-07-01",
  managedIdentity: "2023-01-31",
  authorization: "2022-04-01",
  healthcare: "2023-06-01-preview",
  resourceHealth: "2023-07-01",
};

const TYPES = {
  vault: "microsoft.keyvault/vaults",
  key: "microsoft.keyvault/vaults/keys",
  workspace: "microsoft.healthcareapis/workspaces",
  dicom: "microsoft.healthcareapis/workspaces/dicomservices",
  identity: "microsoft.managedidentity/userassignedidentities",
};

const TYPE_LABELS = {
  [TYPES.vault]: "Key vault",
  [TYPES.workspace]: "Health Data Services workspace",
  [TYPES.dicom]: "DICOM service",
  [TYPES.identity]: "Managed Identity",
};

/** Key Vault Crypto Service Encryption User: the role the seed document assigns. */
const CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6";

const SESSION_KEY = "hds.portal.session";
const SCOPE_KEY = "hds.portal.scope";

// ---------------------------------------------------------------------------------------------
// DOM helpers

/**
 * Creates an element. `props` sets attributes (`class`, `id`, `for`, `type`, `value`, ...)
 * and event handlers (`onclick`, ...); `children` are nodes or strings, and strings become
 * text nodes, never markup.
 */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "value") {
      node.value = value;
    } else if (name === "checked" || name === "disabled" || name === "selected") {
      node[name] = Boolean(value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) {
  node.replaceChildren();
  return node;
}

/** A link to a portal view: only `#` links are ever built, so no URL comes from data. */
function link(params, ...children) {
  return el("a", { href: hashFor(params) }, ...children);
}

function field(labelText, control, help) {
  const id = control.id || `field-${Math.random().toString(36).slice(2)}`;
  control.id = id;
  return el(
    "div",
    { class: "field" },
    el("label", { for: id }, labelText),
    el("div", {}, control, help ? el("div", { class: "muted" }, help) : null),
  );
}

function notice(kind, ...children) {
  return el("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...children);
}

/** Shows an API error as the API said it: the code, then the message, verbatim. */
function errorNotice(error) {
  if (error instanceof ApiError) {
    return notice(
      "error",
      el("span", { class: "code", "data-error-code": error.code }, error.code),
      ": ",
      el("span", { class: "message" }, error.message),
    );
  }
  return notice("error", String(error && error.message ? error.message : error));
}

function table(headers, rows, emptyText) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headers.map((header) => el("th", {}, header)))),
    el(
      "tbody",
      {},
      rows.length ? rows : el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, emptyText || "None")),
    ),
  );
}

/** A radio group; `labelledBy` is the id of the element that names it. */
function radios(name, options, selected, onchange, labelledBy) {
  return el(
    "div",
    { class: "radios", role: "radiogroup", "aria-labelledby": labelledBy },
    options.map(([value, text]) =>
      el(
        "label",
        {},
        el("input", {
          type: "radio",
          name,
          value,
          checked: value === selected,
          onchange: () => onchange(value),
        }),
        text,
      ),
    ),
  );
}

function select(id, options, selected, onchange) {
  const node = el(
    "select",
    { id, onchange: (event) => onchange && onchange(event.target.value) },
    options.map(([value, text]) => el("option", { value, selected: value === selected }, text)),
  );
  return node;
}

/**
 * Tabs as ARIA describes them: a tablist of tabs with aria-selected, one in the tab order, the
 * arrow keys moving between them. `onselect(value)` runs when one is chosen.
 */
function tabs(label, idPrefix, items, active, onselect) {
  const buttons = items.map(([value, text]) =>
    el(
      "button",
      {
        type: "button",
        role: "tab",
        id: `${idPrefix}-${value}`,
        class: value === active ? "active" : null,
        "aria-selected": String(value === active),
        tabindex: value === active ? "0" : "-1",
        onclick: () => onselect(value),
      },
      text,
    ),
  );
  const list = el("div", { class: "tabs", role: "tablist", "aria-label": label }, buttons);
  list.addEventListener("keydown", (event) => {
    const index = buttons.indexOf(document.activeElement);
    if (index < 0) return;
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    const next = buttons[(index + step + buttons.length) % buttons.length];
    next.focus();
    next.click();
  });
  return list;
}

function formatTime(value) {
  if (value === undefined || value === null || value === "") return "";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

// ---------------------------------------------------------------------------------------------
// Session: the token in sessionStorage only

function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    if (session && session.accessToken && (!session.expiresAt || session.expiresAt > Date.now())) {
      return session;
    }
  } catch {
    // A damaged entry is the same as none.
  }
  sessionStorage.removeItem(SESSION_KEY);
  return null;
}

function saveSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(SCOPE_KEY);
  navigate({ view: "signin" });
}

function loadScope() {
  try {
    return JSON.parse(sessionStorage.getItem(SCOPE_KEY) || "{}") || {};
  } catch {
    return {};
  }
}

function saveScope(scope) {
  sessionStorage.setItem(SCOPE_KEY, JSON.stringify(scope));
}

/** Reads the claims of a JWT for display (tenant, expiry); the server does the verifying. */
function tokenClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "=")));
  } catch {
    return {};
  }
}

// ---------------------------------------------------------------------------------------------
// The control plane

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A resource id as a request path: each segment percent-encoded. */
function idPath(id) {
  return id
    .split("/")
    .map((segment) => encodeURIComponent(segment))
    .join("/");
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function errorFrom(status, body) {
  const error = body && body.error;
  if (error && error.code) return new ApiError(status, error.code, error.message || "");
  return new ApiError(status, `HTTP${status}`, `The request failed with status ${status}.`);
}

/** One control-plane call; follows Azure-AsyncOperation until the operation ends. */
async function arm(method, path, apiVersion, body) {
  const session = loadSession();
  if (!session) {
    navigate({ view: "signin" });
    throw new ApiError(401, "NotSignedIn", "Sign in to continue.");
  }
  const url = `${path}${path.includes("?") ? "&" : "?"}api-version=${encodeURIComponent(apiVersion)}`;
  const headers = { Authorization: `Bearer ${session.accessToken}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  const result = await readJson(response);
  if (response.status === 401) {
    sessionStorage.removeItem(SESSION_KEY);
    throw errorFrom(401, result);
  }
  if (!response.ok) throw errorFrom(response.status, result);
  const operation = response.headers.get("azure-asyncoperation");
  if ((response.status === 201 || response.status === 202) && operation) {
    await waitForOperation(operation, session.accessToken);
    if (method === "PUT" || method === "PATCH") return arm("GET", path, apiVersion);
  }
  return result;
}

async function waitForOperation(operationUrl, accessToken) {
  const target = new URL(operationUrl, location.href);
  if (target.origin !== location.origin) return;
  for (let attempt = 0; attempt < 120; attempt += 1) {
    const response = await fetch(target.pathname + target.search, {
      headers: { Authorization: `Bearer ${accessToken}` },
      cache: "no-store",
      credentials: "omit",
    });
    const body = await readJson(response);
    if (!response.ok) throw errorFrom(response.status, body);
    const status = body && body.status;
    if (status === "Succeeded") return;
    if (status === "Failed" || status === "Canceled") {
      throw body.error ? errorFrom(400, body) : new ApiError(400, status, `The operation ${status.toLowerCase()}.`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  throw new ApiError(408, "OperationTimedOut", "The operation did not finish in time.");
}

async function listValue(path, apiVersion) {
  const result = await arm("GET", path, apiVersion);
  return (result && result.value) || [];
}

function parseId(id) {
  const parts = id.split("/").filter(Boolean);
  const lower = parts.map((part) => part.toLowerCase());
  const info = { subscription: parts[1], resourceGroup: null, type: null, name: parts[parts.length - 1] };
  const groupIndex = lower.indexOf("resourcegroups");
  if (groupIndex >= 0) info.resourceGroup = parts[groupIndex + 1];
  const providerIndex = lower.lastIndexOf("providers");
  if (providerIndex >= 0) {
    const rest = parts.slice(providerIndex + 1);
    const typeParts = [rest[0]];
    for (let index = 1; index < rest.length; index += 2) typeParts.push(rest[index]);
    info.type = typeParts.join("/").toLowerCase();
  }
  return info;
}

function groupId(subscription, group) {
  return `/subscriptions/${subscription}/resourceGroups/${group}`;
}

async function listGroups(subscription) {
  return listValue(`/subscriptions/${encodeURIComponent(subscription)}/resourcegroups`, API_VERSIONS.resources);
}

/** Resources of one type across the subscription's resource groups. */
async function listAcrossGroups(subscription, providerPath, apiVersion) {
  const groups = await listGroups(subscription);
  const lists = await Promise.all(
    groups.map((group) => listValue(`${idPath(group.id)}/providers/${providerPath}`, apiVersion).catch(() => [])),
  );
  return lists.flat();
}

async function listDicomServices(workspaceId) {
  return listValue(`${idPath(workspaceId)}/dicomservices`, API_VERSIONS.healthcare);
}

function newGuid() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function guidOf(id) {
  return (id || "").split("/").pop().toLowerCase();
}

// ---------------------------------------------------------------------------------------------
// DICOM service identities and encryption

/** The identities a DICOM service has, from its `identity` block. */
function identitiesOf(service) {
  const identity = service.identity || {};
  const kinds = String(identity.type || "None")
    .split(",")
    .map((kind) => kind.trim().toLowerCase());
  return {
    systemAssigned: kinds.includes("systemassigned"),
    principalId: identity.principalId || null,
    userAssigned: Object.entries(identity.userAssignedIdentities || {}).map(([id, value]) => ({
      id,
      principalId: (value && value.principalId) || "",
      clientId: (value && value.clientId) || "",
    })),
  };
}

function identityType(systemAssigned, userAssignedIds) {
  if (systemAssigned && userAssignedIds.length) return "SystemAssigned,UserAssigned";
  if (systemAssigned) return "SystemAssigned";
  if (userAssignedIds.length) return "UserAssigned";
  return "None";
}

/** The PUT body that keeps a service as it is apart from `changes`. */
function servicePutBody(service, changes) {
  const current = identitiesOf(service);
  const systemAssigned = changes.systemAssigned ?? current.systemAssigned;
  const userAssignedIds = changes.userAssignedIds ?? current.userAssigned.map((identity) => identity.id);
  const identity = { type: identityType(systemAssigned, userAssignedIds) };
  if (userAssignedIds.length) {
    identity.userAssignedIdentities = Object.fromEntries(userAssignedIds.map((id) => [id, {}]));
  }
  const properties = JSON.parse(JSON.stringify(service.properties || {}));
  for (const readOnly of [
    "provisioningState",
    "serviceUrl",
    "authenticationConfiguration",
    "eventState",
    "privateEndpointConnections",
  ]) {
    delete properties[readOnly];
  }
  if (changes.encryption !== undefined) {
    if (changes.encryption === null) delete properties.encryption;
    else properties.encryption = changes.encryption;
  }
  const body = { location: service.location, identity, properties };
  if (service.tags) body.tags = service.tags;
  return body;
}

function keyUrlOf(service) {
  const encryption = (service.properties && service.properties.encryption) || {};
  return (encryption.customerManagedKeyEncryption || {}).keyEncryptionKeyUrl || "";
}

function keyIdentityOf(service) {
  const encryption = (service.properties && service.properties.encryption) || {};
  return (encryption.customerManagedKeyEncryption || {}).keyEncryptionKeyIdentity || null;
}

// ---------------------------------------------------------------------------------------------
// Routing

function hashFor(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  return `#${search.toString()}`;
}

function currentParams() {
  return Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
}

function navigate(params) {
  const hash = hashFor(params);
  if (location.hash === hash) render();
  else location.hash = hash;
}

const MENUS = {
  [TYPES.vault]: [
    ["vault-overview", "Overview"],
    ["vault-iam", "Access control (IAM)"],
    ["vault-keys", "Keys"],
  ],
  [TYPES.dicom]: [
    ["dicom-overview", "Overview"],
    ["dicom-identity", "Identity"],
    ["dicom-encryption", "Encryption"],
    ["dicom-health", "Resource health"],
  ],
  [TYPES.workspace]: [
    ["workspace-overview", "Overview"],
    ["create-dicom", "Create DICOM service"],
  ],
  [TYPES.identity]: [["identity-overview", "Overview"]],
};

const VIEWS = {
  signin: renderSignIn,
  home: renderHome,
  "vault-overview": renderOverview,
  "vault-iam": renderVaultAccessControl,
  "vault-keys": renderVaultKeys,
  "dicom-overview": renderOverview,
  "dicom-identity": renderDicomIdentity,
  "dicom-encryption": renderDicomEncryption,
  "dicom-health": renderDicomHealth,
  "workspace-overview": renderWorkspace,
  "create-dicom": renderCreateDicom,
  "identity-overview": renderOverview,
  identities: renderIdentities,
};

let renderGeneration = 0;
/** The id of the control to focus once the next render is done (a tab that re-renders its page). */
let focusAfterRender = null;

/** Runs the view for the current hash; a later navigation makes earlier renders give up. */
async function render() {
  const generation = ++renderGeneration;
  const params = currentParams();
  const session = loadSession();
  let view = params.view || "home";
  if (!session) view = "signin";
  if (!VIEWS[view]) view = "home";
  renderAccount(session);
  renderMenu(view, params);
  renderCrumbs(view, params);
  const main = clear(document.getElementById("main"));
  const page = el("div", { class: "page", "data-view": view });
  main.append(page);
  const context = {
    params,
    session,
    page,
    stale: () => generation !== renderGeneration,
  };
  try {
    await VIEWS[view](context);
    if (!context.stale() && focusAfterRender) {
      const target = document.getElementById(focusAfterRender);
      focusAfterRender = null;
      if (target) target.focus();
    }
  } catch (error) {
    if (context.stale()) return;
    if (error instanceof ApiError && error.status === 401) {
      navigate({ view: "signin", reason: "expired" });
      return;
    }
    page.append(errorNotice(error));
  }
}

function renderAccount(session) {
  const account = clear(document.getElementById("account"));
  if (!session) return;
  append(account, [
    el("span", { class: "mono", title: "Signed in" }, session.displayName || session.clientId || "signed in"),
    el("button", { type: "button", onclick: signOut, id: "sign-out" }, "Sign out"),
  ]);
}

function renderMenu(view, params) {
  const menu = clear(document.getElementById("menu"));
  if (!params.id || view === "signin") return;
  const info = parseId(params.id);
  const items = MENUS[info.type];
  if (!items) return;
  append(menu, [
    el("div", { class: "title" }, info.name),
    el("div", { class: "kind" }, TYPE_LABELS[info.type] || info.type),
    items.map(([itemView, text]) =>
      el(
        "a",
        { href: hashFor({ view: itemView, id: params.id }), class: itemView === view ? "active" : null },
        text,
      ),
    ),
  ]);
}

function renderCrumbs(view, params) {
  const crumbs = clear(document.getElementById("crumbs"));
  if (view === "signin") return;
  const parts = [link({ view: "home" }, "Home")];
  if (params.id) {
    const info = parseId(params.id);
    if (info.resourceGroup) {
      parts.push(link({ view: "home", group: info.resourceGroup }, info.resourceGroup, el("span", { class: "crumb-kind" }, " (resource group)")));
    }
    const items = MENUS[info.type] || [];
    const kind = TYPE_LABELS[info.type] ? TYPE_LABELS[info.type].toLowerCase() : null;
    parts.push(link({ view: (items[0] || ["home"])[0], id: params.id }, info.name, kind ? el("span", { class: "crumb-kind" }, ` (${kind})`) : null));
    const current = items.find(([itemView]) => itemView === view);
    if (current && current !== items[0]) parts.push(el("span", {}, current[1]));
  } else if (view === "identities") {
    parts.push(el("span", {}, "Managed identities"));
  }
  parts.forEach((part, index) => {
    if (index) crumbs.append(el("span", { class: "sep" }, "›"));
    crumbs.append(part);
  });
}

function heading(page, title, subtitle) {
  page.append(el("h1", {}, title));
  if (subtitle) page.append(el("div", { class: "subtitle" }, subtitle));
}

// ---------------------------------------------------------------------------------------------
// Sign in

async function renderSignIn({ page, params }) {
  const scope = loadScope();
  const status = el("div", {});
  const tenant = el("input", { type: "text", id: "tenant-id", autocomplete: "off", value: scope.tenant || "" });
  const clientId = el("input", { type: "text", id: "client-id", autocomplete: "username" });
  const secret = el("input", { type: "password", id: "client-secret", autocomplete: "current-password" });
  const pasted = el("textarea", { id: "access-token", placeholder: "eyJ…", spellcheck: "false" });
  let mode = "secret";
  const secretForm = el(
    "div",
    {},
    field("Tenant ID", tenant),
    field("Client ID", clientId),
    field("Client secret", secret, "Sent once to this server's token service; not stored."),
  );
  const tokenForm = el("div", { hidden: true }, field("Access token", pasted, "For https://management.azure.com."));

  const submit = async (event) => {
    event.preventDefault();
    clear(status);
    button.disabled = true;
    try {
      const session = mode === "secret" ? await tokenFromSecret(tenant.value.trim(), clientId.value.trim(), secret.value) : sessionFromToken(pasted.value.trim());
      secret.value = "";
      saveSession(session);
      saveScope({ ...loadScope(), tenant: session.tenant });
      navigate({ view: "home" });
    } catch (error) {
      status.append(errorNotice(error));
    } finally {
      button.disabled = false;
    }
  };
  const button = el("button", { type: "submit", class: "primary", id: "sign-in" }, "Sign in");
  const form = el(
    "form",
    { class: "card", onsubmit: submit, autocomplete: "off" },
    el("h1", {}, "Sign in"),
    el("div", { class: "subtitle" }, "Use a service principal's client credentials, or paste a management token."),
    params.reason === "expired" ? notice("info", "Your session ended. Sign in again.") : null,
    el("span", { id: "signin-mode-label", class: "muted" }, "Sign in with"),
    radios("signin-mode", [["secret", "Client secret"], ["token", "Access token"]], mode, (value) => {
      mode = value;
      secretForm.hidden = value !== "secret";
      tokenForm.hidden = value !== "token";
    }, "signin-mode-label"),
    secretForm,
    tokenForm,
    el("div", { class: "toolbar" }, button),
    status,
  );
  page.classList.add("signin");
  page.append(form);
}

async function tokenFromSecret(tenant, clientId, clientSecret) {
  if (!/^[A-Za-z0-9.-]+$/.test(tenant)) throw new ApiError(400, "InvalidTenant", "Enter the tenant ID.");
  if (!clientId || !clientSecret) throw new ApiError(400, "MissingCredentials", "Enter the client ID and secret.");
  const form = new URLSearchParams({
    grant_type: "client_credentials",
    client_id: clientId,
    client_secret: clientSecret,
    scope: "https://management.azure.com/.default",
  });
  const response = await fetch(`/${encodeURIComponent(tenant)}/oauth2/v2.0/token`, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: form.toString(),
    cache: "no-store",
    credentials: "omit",
  });
  const body = await readJson(response);
  if (!response.ok || !body || !body.access_token) {
    if (body && body.error) {
      throw new ApiError(response.status, String(body.error), String(body.error_description || ""));
    }
    throw errorFrom(response.status, body);
  }
  return {
    accessToken: body.access_token,
    expiresAt: Date.now() + (Number(body.expires_in) || 3600) * 1000 - 60000,
    tenant,
    clientId,
    displayName: clientId,
  };
}

function sessionFromToken(token) {
  if (!/^[A-Za-z0-9._-]+$/.test(token)) throw new ApiError(400, "InvalidToken", "Paste a bearer token (a JWT).");
  const claims = tokenClaims(token);
  return {
    accessToken: token,
    expiresAt: claims.exp ? claims.exp * 1000 : null,
    tenant: claims.tid || "",
    clientId: claims.appid || claims.azp || claims.sub || "",
    displayName: claims.appid || claims.azp || claims.sub || "token",
  };
}

// ---------------------------------------------------------------------------------------------
// Home: the resources of a resource group

async function renderHome(context) {
  const { page, params } = context;
  heading(page, "Resources", "Key vaults, DICOM services and managed identities.");
  page.append(el("div", { class: "toolbar" }, link({ view: "identities" }, "Managed identities: create, list, delete")));
  const scope = loadScope();
  const subscriptions = await listValue("/subscriptions", API_VERSIONS.subscriptions);
  if (context.stale()) return;
  if (!subscriptions.length) {
    page.append(notice("info", "No subscription is visible to this identity."));
    return;
  }
  const subscription =
    subscriptions.find((item) => item.subscriptionId === (params.subscription || scope.subscription)) || subscriptions[0];
  const groups = await listGroups(subscription.subscriptionId);
  if (context.stale()) return;
  const groupName = params.group || scope.group;
  const group = groups.find((item) => item.name.toLowerCase() === (groupName || "").toLowerCase()) || groups[0];
  saveScope({ ...scope, subscription: subscription.subscriptionId, group: group && group.name });

  page.append(
    field(
      "Subscription",
      select(
        "subscription",
        subscriptions.map((item) => [item.subscriptionId, `${item.displayName} (${item.subscriptionId})`]),
        subscription.subscriptionId,
        (value) => navigate({ view: "home", subscription: value }),
      ),
    ),
  );
  if (!group) {
    page.append(notice("info", "This subscription has no resource group."));
    return;
  }
  page.append(
    field(
      "Resource group",
      select(
        "resource-group",
        groups.map((item) => [item.name, item.name]),
        group.name,
        (value) => navigate({ view: "home", subscription: subscription.subscriptionId, group: value }),
      ),
    ),
  );

  const base = idPath(group.id);
  const [resources, identities] = await Promise.all([
    listValue(`${base}/resources`, API_VERSIONS.resources),
    listValue(`${base}/providers/Microsoft.ManagedIdentity/userAssignedIdentities`, API_VERSIONS.managedIdentity),
  ]);
  const workspaces = resources.filter((resource) => resource.type.toLowerCase() === TYPES.workspace);
  const services = (await Promise.all(workspaces.map((workspace) => listDicomServices(workspace.id)))).flat();
  if (context.stale()) return;
  const seen = new Set();
  const all = [...resources, ...services, ...identities].filter((resource) => {
    const key = resource.id.toLowerCase();
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  all.sort((left, right) => left.type.localeCompare(right.type) || left.name.localeCompare(right.name));
  const rows = all.map((resource) => {
    const type = resource.type.toLowerCase();
    const menu = MENUS[type];
    const name = menu ? link({ view: menu[0][0], id: resource.id }, resource.name) : resource.name;
    const parent = type === TYPES.dicom ? parseId(resource.id) : null;
    return el(
      "tr",
      { "data-resource-id": resource.id },
      el("td", {}, name, parent ? el("span", { class: "muted" }, ` (${resource.id.split("/")[8]})`) : null),
      el("td", {}, TYPE_LABELS[type] || resource.type),
      el("td", {}, resource.location || ""),
      el(
        "td",
        {},
        type === TYPES.workspace ? link({ view: "create-dicom", id: resource.id }, "+ Create DICOM service") : null,
      ),
    );
  });
  page.append(el("h2", {}, `${all.length} resources`), table(["Name", "Type", "Location", ""], rows, "No resources"));
}

// ---------------------------------------------------------------------------------------------
// Overview (any resource)

async function renderOverview(context) {
  const { page, params } = context;
  const info = parseId(params.id);
  const resource = await arm("GET", idPath(params.id), apiVersionFor(info.type));
  if (context.stale()) return;
  heading(page, resource.name, TYPE_LABELS[info.type] || resource.type);
  const rows = [
    ["Resource group", info.resourceGroup],
    ["Location", resource.location],
    ["Subscription ID", info.subscription],
    ["Resource ID", resource.id],
  ];
  const properties = resource.properties || {};
  if (info.type === TYPES.vault) {
    rows.push(["Vault URI", properties.vaultUri]);
    rows.push(["Soft delete", properties.enableSoftDelete === false ? "Disabled" : "Enabled"]);
    rows.push(["Purge protection", properties.enablePurgeProtection ? "Enabled" : "Disabled"]);
    rows.push(["Permission model", properties.enableRbacAuthorization ? "Azure role-based access control" : "Vault access policy"]);
  } else if (info.type === TYPES.dicom) {
    rows.push(["Service URL", properties.serviceUrl]);
    rows.push(["Provisioning state", properties.provisioningState]);
    rows.push(["Encryption", keyUrlOf(resource) ? "Customer-managed key" : "Service-managed key"]);
    rows.push(["Identity type", (resource.identity && resource.identity.type) || "None"]);
  } else if (info.type === TYPES.identity) {
    rows.push(["Principal ID", properties.principalId, copyButton(properties.principalId, "principal ID")]);
    rows.push(["Client ID", properties.clientId, copyButton(properties.clientId, "client ID")]);
    rows.push(["Tenant ID", properties.tenantId]);
  }
  page.append(
    el(
      "dl",
      { class: "kv card" },
      rows.filter(([, value]) => value !== undefined && value !== null).map(([name, value, action]) => [el("dt", {}, name), el("dd", { class: name.endsWith("ID") || name.endsWith("URL") || name.endsWith("URI") ? "mono" : null, "data-field": name }, value, action ? [" ", action] : null)]),
    ),
  );
}

function apiVersionFor(type) {
  if (type === TYPES.vault || type === TYPES.key) return API_VERSIONS.keyVault;
  if (type === TYPES.identity) return API_VERSIONS.managedIdentity;
  if (type === TYPES.workspace || type === TYPES.dicom) return API_VERSIONS.healthcare;
  return API_VERSIONS.resources;
}

async function renderWorkspace(context) {
  const { page, params } = context;
  const workspace = await arm("GET", idPath(params.id), API_VERSIONS.healthcare);
  const services = await listDicomServices(params.id);
  if (context.stale()) return;
  heading(page, workspace.name, "Health Data Services workspace");
  page.append(
    el("div", { class: "toolbar" }, el("button", { type: "button", class: "primary", onclick: () => navigate({ view: "create-dicom", id: params.id }) }, "+ Create DICOM service")),
    el("h2", {}, "DICOM services"),
    table(
      ["Name", "Encryption", "Service URL"],
      services.map((service) =>
        el(
          "tr",
          {},
          el("td", {}, link({ view: "dicom-overview", id: service.id }, service.name)),
          el("td", {}, keyUrlOf(service) ? "Customer-managed key" : "Service-managed key"),
          el("td", { class: "mono" }, (service.properties || {}).serviceUrl || ""),
        ),
      ),
      "No DICOM services",
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Key vault: Access control (IAM)

/** Names for principals this portal can see: DICOM services' and user-assigned identities. */
async function principalDirectory(subscription) {
  const directory = new Map();
  const groups = await listGroups(subscription);
  await Promise.all(
    groups.map(async (group) => {
      const base = idPath(group.id);
      const [identities, workspaces] = await Promise.all([
        listValue(`${base}/providers/Microsoft.ManagedIdentity/userAssignedIdentities`, API_VERSIONS.managedIdentity).catch(() => []),
        listValue(`${base}/providers/Microsoft.HealthcareApis/workspaces`, API_VERSIONS.healthcare).catch(() => []),
      ]);
      for (const identity of identities) {
        const principalId = (identity.properties || {}).principalId;
        if (principalId) {
          directory.set(principalId, { name: identity.name, kind: "User-assigned managed identity", id: identity.id });
        }
      }
      const services = (await Promise.all(workspaces.map((workspace) => listDicomServices(workspace.id).catch(() => [])))).flat();
      for (const service of services) {
        const principalId = service.identity && service.identity.principalId;
        if (principalId) directory.set(principalId, { name: service.name, kind: "DICOM service (system-assigned)", id: service.id });
      }
    }),
  );
  return directory;
}

async function renderVaultAccessControl(context) {
  const { page, params } = context;
  const info = parseId(params.id);
  const scopePath = idPath(params.id);
  const [vault, assignments, definitions, directory] = await Promise.all([
    arm("GET", scopePath, API_VERSIONS.keyVault),
    listValue(`${scopePath}/providers/Microsoft.Authorization/roleAssignments`, API_VERSIONS.authorization),
    listValue(`${scopePath}/providers/Microsoft.Authorization/roleDefinitions`, API_VERSIONS.authorization),
    principalDirectory(info.subscription),
  ]);
  if (context.stale()) return;
  const roleNames = new Map(definitions.map((definition) => [definition.name.toLowerCase(), definition.properties.roleName]));
  const signedIn = tokenClaims(context.session.accessToken).oid;
  if (signedIn && !directory.has(signedIn)) {
    directory.set(signedIn, { name: `${context.session.displayName || "You"} (you)`, kind: "Service principal" });
  }
  heading(page, "Access control (IAM)", vault.name);
  const wizardHost = el("div", {});
  const statusHost = el("div", {});
  page.append(
    el(
      "div",
      { class: "toolbar" },
      el("button", { type: "button", class: "primary", id: "add-role-assignment", onclick: () => openWizard() }, "+ Add role assignment"),
      el("button", { type: "button", onclick: () => render() }, "Refresh"),
    ),
    statusHost,
    wizardHost,
  );
  if (params.assigned) statusHost.append(notice("success", "Role assignment added."));
  if (params.removed) statusHost.append(notice("success", "Role assignment removed."));

  const vaultScope = params.id.toLowerCase();
  const rows = assignments.map((assignment) => {
    const properties = assignment.properties || {};
    const known = directory.get(properties.principalId);
    const scope = (properties.scope || "").toLowerCase();
    const here = scope === vaultScope;
    const roleName = roleNames.get(guidOf(properties.roleDefinitionId)) || guidOf(properties.roleDefinitionId);
    const name = known ? known.name : "Unknown principal";
    return el(
      "tr",
      { "data-principal-id": properties.principalId, "data-role-definition": guidOf(properties.roleDefinitionId) },
      el("td", { class: "principal-name" }, name),
      el("td", {}, known ? known.kind : properties.principalType || ""),
      el("td", { class: "mono" }, properties.principalId),
      el("td", { class: "role" }, roleName),
      el("td", { class: "scope", title: properties.scope || "" }, scopeLabel(scope, vaultScope)),
      el("td", {}, here ? removeAssignmentButton(assignment, `${roleName} for ${name}`, params.id, statusHost) : el("span", { class: "muted" }, "Managed at its scope")),
    );
  });
  const activeTab = params.tab === "check" ? "check" : "assignments";
  const panel = el("div", { role: "tabpanel", id: "iam-panel", "aria-labelledby": `iam-tab-${activeTab}`, tabindex: "0" });
  page.append(
    tabs("Access control", "iam-tab", [["check", "Check access"], ["assignments", "Role assignments"]], activeTab, (value) => {
      focusAfterRender = `iam-tab-${value}`;
      navigate({ view: "vault-iam", id: params.id, tab: value === "check" ? "check" : null });
    }),
    panel,
  );
  if (activeTab === "check") {
    panel.append(checkAccessPanel(params.id, assignments, directory, roleNames, definitions));
  } else {
    panel.append(
      el("h2", {}, "Role assignments"),
      table(["Name", "Type", "Principal ID", "Role", "Scope", ""], rows, "No role assignments"),
    );
  }

  function openWizard() {
    clear(wizardHost);
    wizardHost.append(roleAssignmentWizard(params.id, definitions, info.subscription, statusHost));
  }
}

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Check access: find a principal by name or object id (the managed identities and services
 * hds names, you, and every principal with an assignment here), then list the role assignments
 * that apply to it at this scope, each with where it comes from. The list is the control
 * plane's own answer (`$filter=atScope() and principalId eq '{id}'`), not a local guess.
 */
function checkAccessPanel(scopeId, assignments, directory, roleNames, definitions) {
  const scopeLower = scopeId.toLowerCase();
  const descriptions = new Map(definitions.map((definition) => [definition.name.toLowerCase(), definition.properties.description || ""]));
  const known = new Map();
  for (const [principalId, entry] of directory) known.set(principalId.toLowerCase(), { principalId, name: entry.name, kind: entry.kind });
  for (const assignment of assignments) {
    const principalId = (assignment.properties || {}).principalId;
    if (principalId && !known.has(principalId.toLowerCase())) {
      known.set(principalId.toLowerCase(), { principalId, name: "Unknown principal", kind: (assignment.properties || {}).principalType || "Principal" });
    }
  }
  const candidates = Array.from(known.values()).sort((left, right) => left.name.localeCompare(right.name));
  const search = el("input", { type: "search", id: "check-access-search", autocomplete: "off", "aria-controls": "check-access-candidates", "aria-describedby": "check-access-help" });
  const list = el("tbody", {});
  const result = el("div", { id: "check-access-result", "aria-live": "polite" });
  let picked = null;

  function fill() {
    clear(list);
    const needle = search.value.trim().toLowerCase();
    const shown = candidates.filter((candidate) => !needle || candidate.name.toLowerCase().includes(needle) || candidate.principalId.toLowerCase().includes(needle)).slice(0, 50);
    if (GUID.test(needle) && !known.has(needle)) {
      shown.push({ principalId: needle, name: "Principal not named by hds", kind: "Object ID" });
    }
    shown.forEach((candidate, index) => {
      const radio = el("input", { type: "radio", name: "check-access-principal", id: `check-access-option-${index}`, value: candidate.principalId, checked: Boolean(picked && picked.principalId === candidate.principalId) });
      radio.addEventListener("change", () => {
        picked = candidate;
        markSelected(list, radio);
        show(candidate);
      });
      list.append(
        el(
          "tr",
          { class: `selectable${picked && picked.principalId === candidate.principalId ? " selected" : ""}`, "data-principal-id": candidate.principalId, onclick: (event) => event.target !== radio && radio.click() },
          el("td", {}, radio),
          el("td", {}, el("label", { for: radio.id }, candidate.name)),
          el("td", {}, candidate.kind),
          el("td", { class: "mono" }, candidate.principalId),
        ),
      );
    });
    if (!list.childElementCount) list.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No principal matches. Type a name, or paste an object ID.")));
  }

  async function show(candidate) {
    clear(result).append(el("p", { class: "muted" }, "Loading…"));
    try {
      const filter = `atScope() and principalId eq '${candidate.principalId}'`;
      const found = await listValue(`${idPath(scopeId)}/providers/Microsoft.Authorization/roleAssignments?$filter=${encodeURIComponent(filter)}`, API_VERSIONS.authorization);
      if (!picked || picked.principalId !== candidate.principalId) return;
      const rows = found.map((assignment) => {
        const properties = assignment.properties || {};
        const role = guidOf(properties.roleDefinitionId);
        const scope = (properties.scope || "").toLowerCase();
        return el(
          "tr",
          { "data-role-definition": role },
          el("td", { class: "role" }, roleNames.get(role) || role),
          el("td", { class: "muted" }, descriptions.get(role) || ""),
          el("td", { class: "scope" }, scopeLabel(scope, scopeLower)),
          el("td", { class: "mono" }, properties.scope || ""),
        );
      });
      clear(result).append(
        el("h2", { id: "check-access-heading" }, `Current role assignments of ${candidate.name}`),
        el("p", { class: "muted" }, `${candidate.kind} · `, el("span", { class: "mono" }, candidate.principalId)),
        rows.length
          ? el("table", { "aria-labelledby": "check-access-heading" }, el("thead", {}, el("tr", {}, el("th", {}, "Role"), el("th", {}, "Description"), el("th", {}, "Scope"), el("th", {}, "Assigned at"))), el("tbody", {}, rows))
          : notice("info", `${candidate.name} has no role assignments at this scope or above it, so it has no access here.`),
      );
    } catch (error) {
      clear(result).append(errorNotice(error));
    }
  }

  search.addEventListener("input", fill);
  fill();
  return el(
    "section",
    { id: "check-access", "aria-labelledby": "check-access-title" },
    el("h2", { id: "check-access-title" }, "Check access"),
    el("p", { class: "muted", id: "check-access-help" }, "Review the access a user, app or managed identity has to this resource: the role assignments at this scope and those inherited from above it."),
    field("Find a principal by name or object ID", search),
    el("table", { "aria-label": "Principals", id: "check-access-candidates" }, el("thead", {}, el("tr", {}, el("th", {}, "Select"), el("th", {}, "Name"), el("th", {}, "Type"), el("th", {}, "Object ID"))), list),
    result,
  );
}

/** A role assignment's scope as Azure shows it from `resourceScope`: "Subscription (Inherited)"... */
function scopeLabel(scope, resourceScope) {
  if (scope === resourceScope) return "This resource";
  if (resourceScope.startsWith(`${scope}/`) || scope === "/") {
    const parts = scope.split("/").filter(Boolean);
    if (!parts.length) return "Root (Inherited)";
    if (parts.length === 2 && parts[0] === "subscriptions") return "Subscription (Inherited)";
    if (parts.length === 4 && parts[2] === "resourcegroups") return `Resource group (Inherited)`;
    return "Parent resource (Inherited)";
  }
  return "Child resource";
}

/** Remove, asked twice (Remove, then Confirm / Cancel): deletes the assignment. */
function removeAssignmentButton(assignment, what, resourceId, status) {
  const host = el("span", {});
  const draw = () => clear(host).append(el("button", { type: "button", class: "remove-assignment", "aria-label": `Remove ${what}`, onclick: ask }, "Remove"));
  function ask() {
    const yes = el("button", { type: "button", class: "primary confirm-remove", "aria-label": `Confirm removing ${what}` }, "Confirm remove");
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      clear(status);
      try {
        await arm("DELETE", idPath(assignment.id), API_VERSIONS.authorization);
        navigate({ view: "vault-iam", id: resourceId, removed: Date.now() });
      } catch (error) {
        status.append(errorNotice(error));
        draw();
      }
    });
    clear(host).append(yes, " ", el("button", { type: "button", onclick: draw }, "Cancel"));
    yes.focus();
  }
  draw();
  return host;
}

function roleAssignmentWizard(scopeId, definitions, subscription, statusHost) {
  const state = { step: "role", role: null, member: null, memberKind: "dicom", filter: "" };
  const root = el("div", { class: "card", id: "role-assignment-wizard" });
  const steps = [
    ["role", "Role"],
    ["members", "Members"],
    ["review", "Review + assign"],
  ];

  function draw() {
    clear(root);
    root.append(
      el("h2", {}, "Add role assignment"),
      el("div", { class: "steps" }, steps.map(([step, text]) => el("span", { class: step === state.step ? "active" : null }, text))),
    );
    if (state.step === "role") drawRole();
    else if (state.step === "members") drawMembers();
    else drawReview();
  }

  function drawRole() {
    const search = el("input", { type: "search", id: "role-search", placeholder: "Search by role name", value: state.filter });
    const body = el("tbody", {});
    const fill = () => {
      clear(body);
      const needle = state.filter.toLowerCase();
      const shown = definitions
        .filter((definition) => definition.properties.roleName.toLowerCase().includes(needle))
        .sort((left, right) => left.properties.roleName.localeCompare(right.properties.roleName));
      shown.forEach((definition, index) => {
        const selected = Boolean(state.role && state.role.name === definition.name);
        const radio = el("input", { type: "radio", name: "role", id: `role-option-${index}`, value: definition.name, checked: selected });
        radio.addEventListener("change", () => {
          state.role = definition;
          markSelected(body, radio);
          next.disabled = false;
        });
        body.append(
          el(
            "tr",
            { class: `selectable${selected ? " selected" : ""}`, "data-role-name": definition.properties.roleName, onclick: (event) => event.target !== radio && radio.click() },
            el("td", {}, radio),
            el("td", {}, el("label", { for: radio.id }, definition.properties.roleName)),
            el("td", { class: "muted" }, definition.properties.description || ""),
          ),
        );
      });
    };
    search.addEventListener("input", () => {
      state.filter = search.value;
      fill();
    });
    const next = el("button", { type: "button", class: "primary", id: "wizard-next", disabled: !state.role, onclick: () => { state.step = "members"; draw(); } }, "Next");
    fill();
    root.append(
      field("Search roles", search),
      el("table", { "aria-label": "Roles" }, el("thead", {}, el("tr", {}, el("th", {}, "Select"), el("th", {}, "Name"), el("th", {}, "Description"))), body),
      el("div", { class: "toolbar" }, next),
    );
  }

  function drawMembers() {
    const paneHost = el("div", {});
    const chosen = state.member
      ? el("div", { class: "notice info", id: "selected-member" }, `${state.member.name} — ${state.member.kind} — `, el("span", { class: "mono" }, state.member.principalId))
      : el("div", { class: "muted" }, "No members selected.");
    root.append(
      el("div", { class: "field" }, el("span", { class: "label" }, "Selected role"), el("span", {}, state.role.properties.roleName)),
      el("div", { class: "field" }, el("span", { class: "label", id: "assign-to-label" }, "Assign access to"), radios("assign-to", [["managed", "Managed identity"]], "managed", () => {}, "assign-to-label")),
      el("div", { class: "field" }, el("span", { class: "label" }, "Members"), el("div", {}, el("button", { type: "button", id: "select-members", onclick: () => openPane(paneHost) }, "+ Select members"), chosen)),
      paneHost,
      el(
        "div",
        { class: "toolbar" },
        el("button", { type: "button", onclick: () => { state.step = "role"; draw(); } }, "Previous"),
        el("button", { type: "button", class: "primary", id: "wizard-review", disabled: !state.member, onclick: () => { state.step = "review"; draw(); } }, "Review + assign"),
      ),
    );
  }

  async function openPane(paneHost) {
    clear(paneHost);
    const pane = el("div", { class: "pane", id: "select-managed-identities" }, el("h2", {}, "Select managed identities"), el("p", { class: "muted" }, "Loading…"));
    paneHost.append(pane);
    try {
      const candidates = await memberCandidates(subscription);
      let kind = state.memberKind;
      let picked = null;
      const list = el("tbody", {});
      // Each identity is a radio button (Tab reaches the group, the arrow keys choose), its
      // name the radio's label; a click anywhere on the row chooses it too.
      const fill = () => {
        clear(list);
        candidates
          .filter((item) => item.group === kind)
          .forEach((candidate, index) => {
            const radio = el("input", { type: "radio", name: "member", id: `member-option-${index}`, value: candidate.principalId, checked: picked === candidate });
            radio.addEventListener("change", () => {
              picked = candidate;
              markSelected(list, radio);
              choose.disabled = false;
            });
            list.append(
              el(
                "tr",
                { class: `selectable${picked === candidate ? " selected" : ""}`, "data-member-name": candidate.name, onclick: (event) => event.target !== radio && radio.click() },
                el("td", {}, radio),
                el("td", {}, el("label", { for: radio.id }, candidate.name)),
                el("td", { class: "mono" }, candidate.principalId),
              ),
            );
          });
        if (!list.childElementCount) list.append(el("tr", {}, el("td", { colspan: 3, class: "muted" }, "No managed identities of this kind.")));
      };
      const choose = el("button", { type: "button", class: "primary", id: "select-member-confirm", disabled: true, onclick: () => { state.member = picked; state.memberKind = kind; draw(); } }, "Select");
      clear(pane);
      append(pane, [
        el("h2", {}, "Select managed identities"),
        field(
          "Managed identity",
          select(
            "managed-identity-kind",
            [
              ["dicom", "DICOM service"],
              ["user", "User-assigned managed identity"],
            ],
            kind,
            (value) => {
              kind = value;
              picked = null;
              choose.disabled = true;
              fill();
            },
          ),
        ),
        el("table", { "aria-label": "Managed identities" }, el("thead", {}, el("tr", {}, el("th", {}, "Select"), el("th", {}, "Name"), el("th", {}, "Principal ID"))), list),
        el("div", { class: "toolbar" }, choose, el("button", { type: "button", onclick: () => clear(paneHost) }, "Close")),
      ]);
      fill();
    } catch (error) {
      clear(pane).append(errorNotice(error));
    }
  }

  function drawReview() {
    const status = el("div", {});
    const assign = el("button", { type: "button", class: "primary", id: "review-assign", onclick: submit }, "Review + assign");
    root.append(
      el(
        "dl",
        { class: "kv" },
        el("dt", {}, "Role"),
        el("dd", {}, state.role.properties.roleName),
        el("dt", {}, "Scope"),
        el("dd", { class: "mono" }, scopeId),
        el("dt", {}, "Members"),
        el("dd", {}, `${state.member.name} (${state.member.kind})`),
        el("dt", {}, "Object ID"),
        el("dd", { class: "mono" }, state.member.principalId),
      ),
      status,
      el("div", { class: "toolbar" }, el("button", { type: "button", onclick: () => { state.step = "members"; draw(); } }, "Previous"), assign),
    );

    async function submit() {
      assign.disabled = true;
      clear(status);
      try {
        await arm("PUT", `${idPath(scopeId)}/providers/Microsoft.Authorization/roleAssignments/${newGuid()}`, API_VERSIONS.authorization, {
          properties: {
            roleDefinitionId: state.role.id,
            principalId: state.member.principalId,
            principalType: "ServicePrincipal",
          },
        });
        navigate({ view: "vault-iam", id: scopeId, assigned: Date.now() });
      } catch (error) {
        status.append(errorNotice(error));
        assign.disabled = false;
      }
    }
  }

  draw();
  return root;
}

/** Marks the row of the checked radio as selected, and only that row. */
function markSelected(body, radio) {
  for (const row of body.querySelectorAll("tr")) row.classList.toggle("selected", row.contains(radio));
}

async function memberCandidates(subscription) {
  const directory = await principalDirectory(subscription);
  return Array.from(directory.entries())
    .map(([principalId, entry]) => ({
      principalId,
      name: entry.name,
      kind: entry.kind,
      group: entry.kind.startsWith("DICOM") ? "dicom" : "user",
    }))
    .sort((left, right) => left.name.localeCompare(right.name));
}

// ---------------------------------------------------------------------------------------------
// Key vault: Keys (through the control plane's key and key-version endpoints, this origin)

/** What a DICOM service accepts as its key (the control plane refuses anything else). */
const CMK_KEY_TYPES = ["RSA", "RSA-HSM"];
const CMK_KEY_SIZES = [2048, 3072];
const CMK_KEY_OPS = ["wrapKey", "unwrapKey"];

/** Why a key (version) cannot be a DICOM service's key, as the service would say; or null. */
function cmkKeyProblem(properties) {
  const props = properties || {};
  const size = Number(props.keySize);
  if (props.kty && !CMK_KEY_TYPES.includes(props.kty)) {
    return ["KeyTypeNotSupported", `The key is ${props.kty}; a DICOM service needs an RSA or RSA-HSM key.`];
  }
  if (size && !CMK_KEY_SIZES.includes(size)) {
    return ["KeySizeNotSupported", `The key is ${size} bits; a DICOM service needs a 2048-bit or 3072-bit RSA key.`];
  }
  const ops = props.keyOps || [];
  if (props.keyOps && !CMK_KEY_OPS.every((operation) => ops.includes(operation))) {
    return ["KeyOperationsNotAllowed", "The key must permit wrapKey and unwrapKey."];
  }
  if (props.attributes && props.attributes.enabled === false) {
    return ["KeyDisabled", "The key version is disabled; enable it or choose another."];
  }
  return null;
}

function keyPath(vaultId, name) {
  return `${idPath(vaultId)}/keys/${encodeURIComponent(name)}`;
}

function versionOf(properties) {
  return ((properties || {}).keyUriWithVersion || "").split("/").pop();
}

/** The versions of a key, newest first (the control plane lists them oldest first). */
async function listKeyVersions(vaultId, name) {
  return (await listValue(`${keyPath(vaultId, name)}/versions`, API_VERSIONS.keyVault)).reverse();
}

function enabledText(properties) {
  return ((properties || {}).attributes || {}).enabled === false ? "Disabled" : "Enabled";
}

async function renderVaultKeys(context) {
  const { page, params } = context;
  if (!params.key) return renderKeyList(context);
  if (!params.version) return renderKeyVersions(context);
  return renderKeyVersion(context);
}

async function renderKeyList(context) {
  const { page, params } = context;
  const keys = await listValue(`${idPath(params.id)}/keys`, API_VERSIONS.keyVault);
  if (context.stale()) return;
  heading(page, "Keys", parseId(params.id).name);
  const formHost = el("div", {});
  page.append(
    el(
      "div",
      { class: "toolbar" },
      el("button", { type: "button", class: "primary", id: "generate-key", onclick: () => clear(formHost).append(generateKeyForm(params.id, keys)) }, "+ Generate"),
      el("button", { type: "button", onclick: () => render() }, "Refresh"),
    ),
    formHost,
    table(
      ["Name", "Type", "Size", "Status", "Updated"],
      keys.map((item) => {
        const properties = item.properties || {};
        return el(
          "tr",
          { "data-key-name": item.name },
          el("td", {}, link({ view: "vault-keys", id: params.id, key: item.name }, item.name)),
          el("td", {}, properties.kty || ""),
          el("td", {}, properties.keySize ? String(properties.keySize) : ""),
          el("td", {}, enabledText(properties)),
          el("td", {}, formatTime((properties.attributes || {}).updated)),
        );
      }),
      "No keys",
    ),
  );
}

/** Generate: RSA or RSA-HSM, 2048 or 3072 bits, wrapKey and unwrapKey (a DICOM service's key). */
function generateKeyForm(vaultId, existing) {
  const status = el("div", { id: "generate-status" });
  const name = el("input", { type: "text", id: "new-key-name", autocomplete: "off", required: true });
  const type = select("new-key-type", CMK_KEY_TYPES.map((kty) => [kty, kty === "RSA-HSM" ? "RSA-HSM (in the vault's HSM token)" : "RSA"]), "RSA");
  let size = "3072";
  const create = el("button", { type: "button", class: "primary", id: "create-key" }, "Create");
  const form = el(
    "div",
    { class: "card", id: "generate-key-form", role: "group", "aria-labelledby": "generate-key-title" },
    el("h2", { id: "generate-key-title" }, "Create a key"),
    field("Name", name, "1-127 letters, digits and hyphens."),
    field("Key type", type),
    el(
      "div",
      { class: "field" },
      el("span", { class: "label", id: "new-key-size-label" }, "RSA key size"),
      el(
        "div",
        {},
        radios("new-key-size", CMK_KEY_SIZES.map((bits) => [String(bits), String(bits)]), size, (value) => { size = value; }, "new-key-size-label"),
        el("div", { class: "muted", id: "key-size-note" }, "Only 2048 and 3072 bits are offered: they are the sizes a DICOM service accepts for its customer-managed key (4096-bit keys are refused with KeySizeNotSupported)."),
      ),
    ),
    el("div", { class: "field" }, el("span", { class: "label" }, "Permitted operations"), el("span", {}, CMK_KEY_OPS.join(", "))),
    status,
    el("div", { class: "toolbar" }, create),
  );
  create.addEventListener("click", async () => {
    clear(status);
    const keyName = name.value.trim();
    if (!/^[A-Za-z0-9-]{1,127}$/.test(keyName)) {
      status.append(errorNotice(new ApiError(400, "KeyNameNotValid", "A key name is 1-127 letters, digits and hyphens.")));
      return;
    }
    if (existing.some((key) => key.name.toLowerCase() === keyName.toLowerCase())) {
      status.append(errorNotice(new ApiError(409, "KeyAlreadyExists", `The vault already has a key named ${keyName}: open it and add a new version instead.`)));
      return;
    }
    create.disabled = true;
    try {
      await arm("PUT", keyPath(vaultId, keyName), API_VERSIONS.keyVault, {
        properties: { kty: type.value, keySize: Number(size), keyOps: CMK_KEY_OPS, attributes: { enabled: true } },
      });
      navigate({ view: "vault-keys", id: vaultId, key: keyName });
    } catch (error) {
      status.append(errorNotice(error));
      create.disabled = false;
    }
  });
  return form;
}

/** Enables or disables one version; refreshes the page when done. */
function enableButton(vaultId, keyName, properties, id, status) {
  const version = versionOf(properties);
  const enabled = enabledText(properties) === "Enabled";
  const button = el("button", { type: "button", id, "aria-label": `${enabled ? "Disable" : "Enable"} version ${version}` }, enabled ? "Disable" : "Enable");
  button.addEventListener("click", async () => {
    button.disabled = true;
    clear(status);
    try {
      await arm("PATCH", `${keyPath(vaultId, keyName)}/versions/${encodeURIComponent(version)}`, API_VERSIONS.keyVault, {
        properties: { attributes: { enabled: !enabled } },
      });
      render();
    } catch (error) {
      status.append(errorNotice(error));
      button.disabled = false;
    }
  });
  return button;
}

async function renderKeyVersions(context) {
  const { page, params } = context;
  const [versions, key] = await Promise.all([
    listKeyVersions(params.id, params.key),
    arm("GET", keyPath(params.id, params.key), API_VERSIONS.keyVault),
  ]);
  if (context.stale()) return;
  heading(page, params.key, "Versions");
  const status = el("div", { id: "key-status" });
  const newVersion = el("button", { type: "button", class: "primary", id: "new-key-version" }, "+ New version");
  newVersion.addEventListener("click", async () => {
    newVersion.disabled = true;
    clear(status);
    try {
      await arm("POST", `${keyPath(params.id, params.key)}/rotate`, API_VERSIONS.keyVault, {});
      navigate({ view: "vault-keys", id: params.id, key: params.key, rotated: Date.now() });
    } catch (error) {
      status.append(errorNotice(error));
      newVersion.disabled = false;
    }
  });
  if (params.rotated) status.append(notice("success", "New version created. Services that use the key without a version move to it."));
  const latest = versions[0];
  page.append(
    el("div", { class: "toolbar" }, newVersion, el("button", { type: "button", onclick: () => render() }, "Refresh")),
    status,
    el("p", { class: "muted" }, "Disabling the version a DICOM service uses makes the service's data unavailable (its requests fail with 500) until the version is enabled again."),
    table(
      ["Version", "Key identifier", "Status", "Created", ""],
      versions.map((item) => {
        const properties = item.properties || {};
        const version = versionOf(properties);
        return el(
          "tr",
          { "data-key-version": version, "data-enabled": String(enabledText(properties) === "Enabled") },
          el(
            "td",
            { class: "mono" },
            item === latest ? el("span", { class: "muted" }, "CURRENT VERSION ") : null,
            link({ view: "vault-keys", id: params.id, key: params.key, version }, version),
          ),
          el("td", { class: "mono" }, properties.keyUriWithVersion || ""),
          el("td", { class: "enabled" }, enabledText(properties)),
          el("td", {}, formatTime((properties.attributes || {}).created)),
          el("td", {}, enableButton(params.id, params.key, properties, `toggle-${version}`, status)),
        );
      }),
      "No versions",
    ),
    rotationPolicyCard(params.id, params.key, (key.properties || {}).rotationPolicy, params.policySaved),
  );
}

// ---------------------------------------------------------------------------------------------
// Key vault: a key's rotation policy (`properties.rotationPolicy` of the key, through the
// control plane; a change needs the vault's data-plane permission, as on the vault itself)

/** ISO 8601 durations as the vault takes them: P[nY][nM][nW][nD][T[nH][nM][nS]]. */
const ISO_DURATION = /^P(?=\d|T\d)(\d{1,6}Y)?(\d{1,6}M)?(\d{1,6}W)?(\d{1,6}D)?(T(?=\d)(\d{1,6}H)?(\d{1,6}M)?(\d{1,6}S)?)?$/i;

/** The rotate and notify actions and the expiry of a policy as ARM shows it. */
function policyParts(policy) {
  const actions = (policy && policy.lifetimeActions) || [];
  const of = (kind) => actions.find((action) => String((action.action || {}).type || "").toLowerCase() === kind);
  const rotate = of("rotate");
  const notify = of("notify");
  const trigger = (rotate && rotate.trigger) || {};
  return {
    rotate: Boolean(rotate),
    rotateTrigger: trigger.timeBeforeExpiry ? "beforeExpiry" : "afterCreate",
    rotateDuration: trigger.timeBeforeExpiry || trigger.timeAfterCreate || "",
    notify: Boolean(notify),
    notifyDuration: (notify && (notify.trigger || {}).timeBeforeExpiry) || "",
    expiry: ((policy && policy.attributes) || {}).expiryTime || "",
  };
}

/** The policy in words, as the page summarizes it. */
function describePolicy(parts) {
  const rotation = parts.rotate
    ? `Rotates automatically ${parts.rotateDuration} ${parts.rotateTrigger === "afterCreate" ? "after each version's creation" : "before each version's expiry"}.`
    : "No automatic rotation.";
  const notify = parts.notify ? ` Notifies ${parts.notifyDuration} before expiry.` : "";
  const expiry = parts.expiry ? ` New versions expire ${parts.expiry} after creation.` : " New versions do not expire.";
  return rotation + notify + expiry;
}

function rotationPolicyCard(vaultId, keyName, policy, saved) {
  const initial = policyParts(policy);
  const status = el("div", { id: "policy-status" });
  if (saved) status.append(notice("success", "Rotation policy saved."));
  const state = { ...initial };
  const text = (id, value, onchange) =>
    el("input", { type: "text", id, value, autocomplete: "off", spellcheck: "false", class: "mono", oninput: (event) => onchange(event.target.value.trim()) });
  const rotateTime = text("policy-rotate-time", initial.rotateDuration, (value) => { state.rotateDuration = value; changed(); });
  const rotateTrigger = select("policy-rotate-trigger", [["afterCreate", "After creation (timeAfterCreate)"], ["beforeExpiry", "Before expiry (timeBeforeExpiry)"]], initial.rotateTrigger, (value) => { state.rotateTrigger = value; changed(); });
  const notifyTime = text("policy-notify-time", initial.notifyDuration, (value) => { state.notifyDuration = value; changed(); });
  const expiry = text("policy-expiry", initial.expiry, (value) => { state.expiry = value; changed(); });
  const rotateFields = el("div", {}, field("Rotation option", rotateTrigger), field("Rotation time", rotateTime, "An ISO 8601 duration, at least 7 days: P90D, P3M, P1Y."));
  const notifyFields = el("div", {}, field("Notification time", notifyTime, "How long before expiry (ISO 8601, at least 7 days: P30D)."));
  const save = el("button", { type: "button", class: "primary", id: "save-rotation-policy", disabled: true }, "Save");
  const summary = el("p", { id: "policy-summary" }, describePolicy(initial));
  const rotateNow = el("button", { type: "button", id: "rotate-now" }, "Rotate now");

  function changed() {
    rotateFields.hidden = !state.rotate;
    notifyFields.hidden = !state.notify;
    save.disabled = JSON.stringify(state) === JSON.stringify(initial);
  }

  /** The policy body, or an [field, message] the vault would refuse anyway. */
  function body() {
    const check = (value, label) => (ISO_DURATION.test(value) ? null : [label, `${label} must be an ISO 8601 duration such as P90D, P18M or P2Y (got "${value}").`]);
    const actions = [];
    if (state.rotate) {
      const problem = check(state.rotateDuration, "Rotation time");
      if (problem) return { problem };
      const trigger = state.rotateTrigger === "afterCreate" ? { timeAfterCreate: state.rotateDuration.toUpperCase() } : { timeBeforeExpiry: state.rotateDuration.toUpperCase() };
      actions.push({ trigger, action: { type: "rotate" } });
    }
    if (state.notify) {
      const problem = check(state.notifyDuration, "Notification time");
      if (problem) return { problem };
      actions.push({ trigger: { timeBeforeExpiry: state.notifyDuration.toUpperCase() }, action: { type: "notify" } });
    }
    if (state.expiry) {
      const problem = check(state.expiry, "Expiry time");
      if (problem) return { problem };
    }
    return { policy: { lifetimeActions: actions, attributes: { expiryTime: state.expiry ? state.expiry.toUpperCase() : null } } };
  }

  save.addEventListener("click", async () => {
    clear(status);
    const { policy: next, problem } = body();
    if (problem) {
      status.append(errorNotice(new ApiError(400, "InvalidRotationPolicy", problem[1])));
      return;
    }
    save.disabled = true;
    try {
      await arm("PATCH", keyPath(vaultId, keyName), API_VERSIONS.keyVault, { properties: { rotationPolicy: next } });
      navigate({ view: "vault-keys", id: vaultId, key: keyName, policySaved: Date.now() });
    } catch (error) {
      status.append(errorNotice(error));
      save.disabled = false;
    }
  });
  rotateNow.addEventListener("click", async () => {
    rotateNow.disabled = true;
    clear(status);
    try {
      await arm("POST", `${keyPath(vaultId, keyName)}/rotate`, API_VERSIONS.keyVault, {});
      navigate({ view: "vault-keys", id: vaultId, key: keyName, rotated: Date.now() });
    } catch (error) {
      status.append(errorNotice(error));
      rotateNow.disabled = false;
    }
  });

  const card = el(
    "section",
    { class: "card", id: "rotation-policy", "aria-labelledby": "rotation-policy-title" },
    el("h2", { id: "rotation-policy-title" }, "Rotation policy"),
    summary,
    el("div", { class: "field" }, el("span", { class: "label", id: "policy-rotate-label" }, "Enable auto rotation"), radios("policy-rotate", [["on", "Enabled"], ["off", "Disabled"]], initial.rotate ? "on" : "off", (value) => { state.rotate = value === "on"; changed(); }, "policy-rotate-label")),
    rotateFields,
    el("div", { class: "field" }, el("span", { class: "label", id: "policy-notify-label" }, "Notify before expiry"), radios("policy-notify", [["on", "Enabled"], ["off", "Disabled"]], initial.notify ? "on" : "off", (value) => { state.notify = value === "on"; changed(); }, "policy-notify-label")),
    notifyFields,
    field("Expiry time", expiry, "The lifetime each new version gets (ISO 8601, at least 28 days: P2Y); empty for none."),
    el("p", { class: "muted" }, "A DICOM service that uses the key without a version moves to each new version by itself; one pinned to a version keeps it until it is updated."),
    status,
    el("div", { class: "toolbar" }, save, rotateNow),
  );
  changed();
  return card;
}

async function renderKeyVersion(context) {
  const { page, params } = context;
  const item = await arm("GET", `${keyPath(params.id, params.key)}/versions/${encodeURIComponent(params.version)}`, API_VERSIONS.keyVault);
  if (context.stale()) return;
  const properties = item.properties || {};
  const attributes = properties.attributes || {};
  heading(page, `${params.key} / ${params.version}`, "Key version");
  const status = el("div", { id: "key-status" });
  page.append(
    el("div", { class: "toolbar" }, enableButton(params.id, params.key, properties, "toggle-key-version", status)),
    status,
    el(
      "div",
      { class: "card" },
      copyField("Key Identifier", properties.keyUriWithVersion || "", "key-identifier"),
      el(
        "dl",
        { class: "kv" },
        el("dt", {}, "Key type"),
        el("dd", {}, properties.kty || ""),
        el("dt", {}, "Key size"),
        el("dd", {}, String(properties.keySize || "")),
        el("dt", {}, "Permitted operations"),
        el("dd", {}, (properties.keyOps || []).join(", ")),
        el("dt", {}, "Enabled"),
        el("dd", { id: "key-enabled" }, attributes.enabled === false ? "No" : "Yes"),
        el("dt", {}, "Created"),
        el("dd", {}, formatTime(attributes.created)),
      ),
    ),
  );
}

/** A read-only value with a Copy button; the button says where the value went. */
function copyField(labelText, value, id) {
  const input = el("input", { type: "text", id, readonly: true, value, class: "mono" });
  const copied = el("span", { class: "muted", id: `copy-status-${id}`, role: "status" });
  const copy = el("button", { type: "button", id: `copy-${id}`, "aria-label": `Copy ${labelText}`, onclick: () => copyText(input, copied) }, "Copy");
  return el("div", { class: "field" }, el("label", { for: id }, labelText), el("div", {}, el("div", { class: "copy-row" }, input, copy), copied));
}

async function copyText(input, status) {
  input.select();
  try {
    await navigator.clipboard.writeText(input.value);
    status.textContent = "Copied to clipboard.";
  } catch {
    status.textContent = "Selected: press Ctrl+C to copy.";
  }
}

// ---------------------------------------------------------------------------------------------
// Managed identities: the user-assigned identities of the subscription

async function renderIdentities(context) {
  const { page, params } = context;
  const scope = loadScope();
  const subscriptions = await listValue("/subscriptions", API_VERSIONS.subscriptions);
  if (context.stale()) return;
  const subscription = subscriptions.find((item) => item.subscriptionId === scope.subscription) || subscriptions[0];
  heading(page, "Managed identities", "User-assigned managed identities: resources of their own that services use to reach a key vault.");
  if (!subscription) {
    page.append(notice("info", "No subscription is visible to this identity."));
    return;
  }
  const groups = await listGroups(subscription.subscriptionId);
  const identities = await listAcrossGroups(subscription.subscriptionId, "Microsoft.ManagedIdentity/userAssignedIdentities", API_VERSIONS.managedIdentity);
  if (context.stale()) return;
  identities.sort((left, right) => left.name.localeCompare(right.name));
  const status = el("div", { id: "identities-status" });
  if (params.created) status.append(notice("success", `Created ${params.created}.`));
  if (params.deleted) status.append(notice("success", `Deleted ${params.deleted}.`));
  const formHost = el("div", {});
  page.append(
    el(
      "div",
      { class: "toolbar" },
      el("button", { type: "button", class: "primary", id: "create-identity-open", onclick: () => clear(formHost).append(createIdentityForm(groups, scope.group, status)) }, "+ Create"),
      el("button", { type: "button", onclick: () => render() }, "Refresh"),
    ),
    status,
    formHost,
    table(
      ["Name", "Resource group", "Location", "Principal ID", "Client ID", ""],
      identities.map((identity) => {
        const properties = identity.properties || {};
        const info = parseId(identity.id);
        return el(
          "tr",
          { "data-identity-id": identity.id, "data-identity-name": identity.name },
          el("td", {}, link({ view: "identity-overview", id: identity.id }, identity.name)),
          el("td", {}, info.resourceGroup || ""),
          el("td", {}, identity.location || ""),
          el("td", { class: "mono principal-id" }, properties.principalId || "", " ", copyButton(properties.principalId, `principal ID of ${identity.name}`)),
          el("td", { class: "mono client-id" }, properties.clientId || "", " ", copyButton(properties.clientId, `client ID of ${identity.name}`)),
          el("td", {}, deleteButton(identity, status)),
        );
      }),
      "No user-assigned managed identities",
    ),
  );
}

/** A small Copy button for a value shown beside it, and where it says that it copied. */
function copyButton(value, what) {
  const said = el("span", { class: "muted copy-status", role: "status" });
  const button = el("button", { type: "button", class: "copy", "aria-label": `Copy ${what}`, title: `Copy ${what}` }, "Copy");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value || "");
      said.textContent = " Copied";
    } catch {
      said.textContent = " Copy failed: select the value and press Ctrl+C";
    }
  });
  return el("span", {}, button, said);
}

/** Delete, asked twice: the first press turns into Confirm / Cancel (no browser dialogs). */
function deleteButton(identity, status) {
  const host = el("span", { class: "confirm-host" });
  const draw = () => {
    clear(host).append(
      el("button", { type: "button", class: "delete", "aria-label": `Delete ${identity.name}`, onclick: () => confirm() }, "Delete"),
    );
  };
  const confirm = () => {
    const yes = el("button", { type: "button", class: "primary confirm-delete", "aria-label": `Confirm deleting ${identity.name}` }, "Confirm delete");
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      clear(status);
      try {
        await arm("DELETE", idPath(identity.id), API_VERSIONS.managedIdentity);
        navigate({ view: "identities", deleted: identity.name });
      } catch (error) {
        status.append(errorNotice(error));
        draw();
      }
    });
    clear(host).append(yes, " ", el("button", { type: "button", onclick: draw }, "Cancel"));
    yes.focus();
  };
  draw();
  return host;
}

function createIdentityForm(groups, preferredGroup, status) {
  const group = groups.find((item) => item.name === preferredGroup) || groups[0];
  const groupSelect = select("new-identity-group", groups.map((item) => [item.id, item.name]), group && group.id);
  const name = el("input", { type: "text", id: "new-identity-name", autocomplete: "off", required: true });
  const location = el("input", { type: "text", id: "new-identity-location", autocomplete: "off", value: (group && group.location) || "local" });
  groupSelect.addEventListener("change", () => {
    const chosen = groups.find((item) => item.id === groupSelect.value);
    if (chosen && chosen.location) location.value = chosen.location;
  });
  const formStatus = el("div", {});
  const create = el("button", { type: "button", class: "primary", id: "create-identity" }, "Create");
  create.addEventListener("click", async () => {
    clear(formStatus);
    const identityName = name.value.trim();
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$/.test(identityName)) {
      formStatus.append(errorNotice(new ApiError(400, "InvalidResourceName", "A name is 3-128 letters, digits, hyphens and underscores, starting with a letter or digit.")));
      return;
    }
    create.disabled = true;
    try {
      await arm("PUT", `${idPath(groupSelect.value)}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/${encodeURIComponent(identityName)}`, API_VERSIONS.managedIdentity, {
        location: location.value.trim(),
      });
      clear(status);
      navigate({ view: "identities", created: identityName });
    } catch (error) {
      formStatus.append(errorNotice(error));
      create.disabled = false;
    }
  });
  return el(
    "div",
    { class: "card", id: "create-identity-form", role: "group", "aria-labelledby": "create-identity-title" },
    el("h2", { id: "create-identity-title" }, "Create a user-assigned managed identity"),
    field("Resource group", groupSelect),
    field("Region", location),
    field("Name", name),
    formStatus,
    el("div", { class: "toolbar" }, create),
  );
}

// ---------------------------------------------------------------------------------------------
// DICOM service: Identity

async function renderDicomIdentity(context) {
  const { page, params } = context;
  const service = await arm("GET", idPath(params.id), API_VERSIONS.healthcare);
  if (context.stale()) return;
  const current = identitiesOf(service);
  const tab = params.tab === "user" ? "user" : "system";
  heading(page, "Identity", service.name);
  page.append(
    tabs("Identity kinds", "tab", [["system", "System assigned"], ["user", "User assigned"]], tab, (value) =>
      navigate({ view: "dicom-identity", id: params.id, tab: value === "user" ? "user" : undefined })),
  );
  const status = el("div", {});
  if (params.saved) status.append(notice("success", "Saved."));

  if (tab === "system") {
    let on = current.systemAssigned;
    const save = el("button", { type: "button", class: "primary", id: "save-identity", disabled: true }, "Save");
    const toggle = el("div", { class: "toggle", role: "group", "aria-label": "Status" });
    const drawToggle = () => {
      clear(toggle).append(
        el("button", { type: "button", id: "status-off", class: on ? null : "active", "aria-pressed": String(!on), onclick: () => { on = false; drawToggle(); } }, "Off"),
        el("button", { type: "button", id: "status-on", class: on ? "active" : null, "aria-pressed": String(on), onclick: () => { on = true; drawToggle(); } }, "On"),
      );
      save.disabled = on === current.systemAssigned;
    };
    drawToggle();
    save.addEventListener("click", async () => {
      save.disabled = true;
      clear(status);
      try {
        await arm("PUT", idPath(params.id), API_VERSIONS.healthcare, servicePutBody(service, { systemAssigned: on }));
        navigate({ view: "dicom-identity", id: params.id, saved: Date.now() });
      } catch (error) {
        status.append(errorNotice(error));
        save.disabled = false;
      }
    });
    page.append(
      el("p", { class: "muted" }, "A system-assigned managed identity is tied to this DICOM service and deleted with it. Grant it a role on the key vault so the service can reach its key."),
      el("div", { class: "toolbar" }, save, el("button", { type: "button", onclick: () => render() }, "Refresh")),
      status,
      el("div", { class: "field" }, el("span", { class: "label" }, "Status"), toggle),
      current.systemAssigned
        ? el("div", { class: "field" }, el("span", { class: "label" }, "Object (principal) ID"), el("span", { class: "mono", id: "principal-id" }, current.principalId || ""))
        : null,
      current.systemAssigned && current.principalId
        ? el("div", { class: "field" }, el("span", { class: "label" }, "Permissions"), keyVaultIamLink(service))
        : null,
    );
    return;
  }

  const identities = await listAcrossGroups(parseId(params.id).subscription, "Microsoft.ManagedIdentity/userAssignedIdentities", API_VERSIONS.managedIdentity);
  if (context.stale()) return;
  const attachedIds = new Set(current.userAssigned.map((identity) => identity.id.toLowerCase()));
  const available = identities.filter((identity) => !attachedIds.has(identity.id.toLowerCase()));
  const saveWith = async (userAssignedIds) => {
    clear(status);
    try {
      await arm("PUT", idPath(params.id), API_VERSIONS.healthcare, servicePutBody(service, { userAssignedIds }));
      navigate({ view: "dicom-identity", id: params.id, tab: "user", saved: Date.now() });
    } catch (error) {
      status.append(errorNotice(error));
    }
  };
  const picker = select("add-user-identity", [["", "Select an identity…"], ...available.map((identity) => [identity.id, identity.name])], "", null);
  picker.setAttribute("aria-label", "User-assigned identity to add");
  page.append(
    el("p", { class: "muted" }, "User-assigned managed identities are resources of their own that several services can share."),
    status,
    el(
      "div",
      { class: "toolbar" },
      picker,
      el("button", { type: "button", class: "primary", id: "add-user-identity-button", onclick: () => picker.value && saveWith([...current.userAssigned.map((identity) => identity.id), picker.value]) }, "+ Add"),
    ),
    table(
      ["Name", "Resource group", "Principal ID", "Client ID", ""],
      current.userAssigned.map((identity) =>
        el(
          "tr",
          { "data-identity-id": identity.id },
          el("td", {}, link({ view: "identity-overview", id: identity.id }, parseId(identity.id).name)),
          el("td", {}, parseId(identity.id).resourceGroup || ""),
          el("td", { class: "mono" }, identity.principalId),
          el("td", { class: "mono" }, identity.clientId),
          el("td", {}, el("button", { type: "button", onclick: () => saveWith(current.userAssigned.filter((other) => other.id !== identity.id).map((other) => other.id)) }, "Remove")),
        ),
      ),
      "No user-assigned managed identities are attached.",
    ),
  );
}

/**
 * Links to the Access control (IAM) page of the vault that holds the service's key; without a
 * key, to each vault of the subscription.
 */
function keyVaultIamLink(service) {
  const host = el("span", { id: "vault-iam-links" }, el("span", { class: "muted" }, "Finding the key vault…"));
  const subscription = parseId(service.id).subscription;
  (async () => {
    const vaults = await listAcrossGroups(subscription, "Microsoft.KeyVault/vaults", API_VERSIONS.keyVault);
    const holding = await vaultForKeyUrl(subscription, keyUrlOf(service), vaults);
    const shown = holding ? [holding] : vaults;
    append(clear(host), [
      shown.length
        ? shown.map((vault, index) => [index ? " · " : null, link({ view: "vault-iam", id: vault.id }, `Assign a role on key vault ${vault.name} from its Access control (IAM) page`)])
        : el("span", { class: "muted" }, "This subscription has no key vault."),
    ]);
  })().catch((error) => clear(host).append(errorNotice(error)));
  return host;
}

// ---------------------------------------------------------------------------------------------
// Key pickers shared by Encryption and Create

/** A key URL's parts: the vault's base URL, the key name, and the version ("" = versionless). */
function parseKeyUrl(url) {
  const match = /^(https:\/\/[^/?#\s]+\/)keys\/([A-Za-z0-9-]{1,127})(?:\/([0-9a-fA-F]{32})?)?\/?$/.exec((url || "").trim());
  return match ? { vaultUri: match[1].toLowerCase(), name: match[2], version: (match[3] || "").toLowerCase() } : null;
}

/** What a key URL makes the service use, in words. */
function describeKeyUrl(url) {
  const parsed = parseKeyUrl(url);
  if (!parsed) return "";
  return parsed.version
    ? `Version ${parsed.version} of key ${parsed.name}, pinned: a new version of the key is not used until the URL changes.`
    : `The current version of key ${parsed.name}, following rotation: a new version of the key is used without changing the service.`;
}

function sameVaultUri(left, right) {
  return (left || "").toLowerCase().replace(/\/+$/, "") === (right || "").toLowerCase().replace(/\/+$/, "");
}

/** The vault of this subscription that `url` names, if any. */
async function vaultForKeyUrl(subscription, url, vaults) {
  const parsed = parseKeyUrl(url);
  if (!parsed) return null;
  const candidates = vaults || (await listAcrossGroups(subscription, "Microsoft.KeyVault/vaults", API_VERSIONS.keyVault));
  return candidates.find((vault) => sameVaultUri((vault.properties || {}).vaultUri, parsed.vaultUri)) || null;
}

/**
 * Why the key `url` names cannot be a DICOM service's key, as an ApiError; null when it can or
 * when this portal cannot tell (a vault it does not see: the control plane validates anyway).
 */
async function keyUrlProblem(subscription, url) {
  const parsed = parseKeyUrl(url);
  if (!parsed) return null;
  const vault = await vaultForKeyUrl(subscription, url);
  if (!vault) return null;
  const path = parsed.version ? `${keyPath(vault.id, parsed.name)}/versions/${parsed.version}` : keyPath(vault.id, parsed.name);
  let key;
  try {
    key = await arm("GET", path, API_VERSIONS.keyVault);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
  const problem = cmkKeyProblem(key.properties);
  return problem ? new ApiError(400, problem[0], `${problem[1]} Nothing was saved.`) : null;
}

/**
 * "Select from key vault": a vault, one of its keys (keys a DICOM service refuses are shown but
 * cannot be chosen), and which version: the current one, following rotation (a versionless
 * URL), or a specific one. Calls `onpick(url)`; `follow(url)` moves the choice to a URL typed
 * by hand.
 */
function keyVaultPicker(subscription, initialUrl, onpick) {
  const root = el("div", { class: "pane", id: "key-vault-picker", role: "group", "aria-label": "Select a key from a key vault" }, el("p", { class: "muted" }, "Loading key vaults…"));
  const vaultSelect = select("picker-vault", [["", "Select a key vault…"]], "");
  const keySelect = select("picker-key", [["", "Select a key…"]], "");
  const versionSelect = select("picker-version", [["", "Select a version…"]], "");
  const status = el("div", { id: "picker-status", role: "status" });
  let vaults = [];
  let keys = [];
  let versions = [];
  let mode = "current";
  let generation = 0;
  const modeRadios = radios(
    "picker-version-mode",
    [
      ["current", "Current version (follows rotation)"],
      ["pinned", "A specific version"],
    ],
    mode,
    (value) => {
      mode = value;
      versionRow.hidden = mode !== "pinned";
      pick();
    },
    "picker-version-mode-label",
  );
  const versionRow = field("Key version", versionSelect);
  versionRow.hidden = true;

  const setMode = (value) => {
    mode = value;
    for (const input of modeRadios.querySelectorAll("input")) input.checked = input.value === value;
    versionRow.hidden = mode !== "pinned";
  };

  const loadKeys = async (vaultId) => {
    keys = vaultId ? await listValue(`${idPath(vaultId)}/keys`, API_VERSIONS.keyVault) : [];
    append(clear(keySelect), [
      el("option", { value: "" }, "Select a key…"),
      keys.map((key) => {
        const problem = cmkKeyProblem({ ...key.properties, attributes: undefined });
        return el("option", { value: key.name, disabled: Boolean(problem) }, problem ? `${key.name} (${key.properties.keySize}-bit ${key.properties.kty}: not supported)` : key.name);
      }),
    ]);
  };

  const loadVersions = async (vaultId, name) => {
    versions = vaultId && name ? await listKeyVersions(vaultId, name) : [];
    append(clear(versionSelect), [
      el("option", { value: "" }, "Select a version…"),
      versions.map((item, index) => {
        const version = versionOf(item.properties);
        const disabled = enabledText(item.properties) === "Disabled";
        return el("option", { value: version }, `${version}${index === 0 ? " (current)" : ""}${disabled ? " (disabled)" : ""}`);
      }),
    ]);
  };

  /** The URL of the choice, given to onpick; or the reason there is none. */
  const pick = () => {
    clear(status);
    const key = keys.find((item) => item.name === keySelect.value);
    if (!key) return;
    if (mode === "current") {
      onpick(key.properties.keyUri);
      status.append(el("span", { class: "muted" }, describeKeyUrl(key.properties.keyUri)));
      return;
    }
    const version = versions.find((item) => versionOf(item.properties) === versionSelect.value);
    if (!version) return;
    const problem = cmkKeyProblem(version.properties);
    if (problem) status.append(errorNotice(new ApiError(400, problem[0], problem[1])));
    onpick(version.properties.keyUriWithVersion);
    status.append(el("span", { class: "muted" }, describeKeyUrl(version.properties.keyUriWithVersion)));
  };

  vaultSelect.addEventListener("change", () => {
    generation += 1;
    clear(status);
    Promise.all([loadKeys(vaultSelect.value), loadVersions(null, null)]).catch((error) => status.append(errorNotice(error)));
  });
  keySelect.addEventListener("change", async () => {
    generation += 1;
    try {
      await loadVersions(vaultSelect.value, keySelect.value);
      pick();
    } catch (error) {
      status.append(errorNotice(error));
    }
  });
  versionSelect.addEventListener("change", pick);

  /** Moves the choice to the key `url` names, without calling onpick (the URL is the truth). */
  const follow = async (url) => {
    const mine = ++generation;
    const parsed = parseKeyUrl(url);
    const vault = parsed ? await vaultForKeyUrl(subscription, url, vaults) : null;
    if (mine !== generation) return;
    clear(status);
    if (!vault) {
      vaultSelect.value = "";
      await loadKeys(null);
      await loadVersions(null, null);
      if ((url || "").trim()) status.append(el("span", { class: "muted" }, parsed ? "The URL names a vault this portal does not list." : "Not a key URL: https://{vault}/keys/{name}[/{version}]."));
      return;
    }
    if (vaultSelect.value !== vault.id) {
      vaultSelect.value = vault.id;
      await loadKeys(vault.id);
    }
    if (mine !== generation) return;
    const key = keys.find((item) => item.name.toLowerCase() === parsed.name.toLowerCase());
    const problem = key ? cmkKeyProblem({ ...key.properties, attributes: undefined }) : null;
    const usable = key && !problem;
    keySelect.value = usable ? key.name : "";
    await loadVersions(vault.id, usable ? key.name : null);
    if (mine !== generation) return;
    setMode(parsed.version ? "pinned" : "current");
    versionSelect.value = parsed.version && versions.some((item) => versionOf(item.properties) === parsed.version) ? parsed.version : "";
    if (problem) status.append(errorNotice(new ApiError(400, problem[0], problem[1])));
    else status.append(el("span", { class: "muted" }, key ? describeKeyUrl(url) : `Vault ${vault.name} has no key named ${parsed.name}.`));
  };

  const ready = (async () => {
    try {
      vaults = await listAcrossGroups(subscription, "Microsoft.KeyVault/vaults", API_VERSIONS.keyVault);
      append(clear(vaultSelect), [el("option", { value: "" }, "Select a key vault…"), vaults.map((vault) => el("option", { value: vault.id }, vault.name))]);
      clear(root).append(
        field("Key vault", vaultSelect),
        field("Key", keySelect, "Keys a DICOM service cannot use (not RSA, or not 2048 or 3072 bits) are listed but cannot be chosen."),
        el("div", { class: "field" }, el("span", { class: "label", id: "picker-version-mode-label" }, "Version"), modeRadios),
        versionRow,
        status,
      );
      if (initialUrl) await follow(initialUrl);
    } catch (error) {
      clear(root).append(errorNotice(error));
    }
  })();
  return { root, follow: (url) => ready.then(() => follow(url)).catch((error) => status.append(errorNotice(error))) };
}

// ---------------------------------------------------------------------------------------------
// DICOM service: Encryption

async function renderDicomEncryption(context) {
  const { page, params } = context;
  const info = parseId(params.id);
  const [service, identities] = await Promise.all([
    arm("GET", idPath(params.id), API_VERSIONS.healthcare),
    listAcrossGroups(info.subscription, "Microsoft.ManagedIdentity/userAssignedIdentities", API_VERSIONS.managedIdentity),
  ]);
  if (context.stale()) return;
  const current = identitiesOf(service);
  const keyUrl = keyUrlOf(service);
  const keyIdentity = keyIdentityOf(service);
  const state = {
    type: keyUrl ? "cmk" : "smk",
    keyUrl,
    identityType: keyIdentity ? (String(keyIdentity.identityType).toLowerCase() === "userassigned" ? "user" : "system") : current.userAssigned.length === 1 ? "user" : "system",
    userIdentity: keyIdentity && keyIdentity.userAssignedIdentityResourceId ? keyIdentity.userAssignedIdentityResourceId : (current.userAssigned[0] || {}).id || "",
  };
  const initial = { ...state };
  heading(page, "Encryption", service.name);
  const status = el("div", { id: "encryption-status" });
  if (params.saved) status.append(notice("success", "Saved. The DICOM service uses the key."));
  const save = el("button", { type: "button", class: "primary", id: "save-encryption", disabled: true }, "Save");
  const revalidate = el("button", { type: "button", id: "revalidate-key", hidden: !keyUrl, title: "Sends the service's settings again: the key is checked and, if it can be used, the service uses it at once." }, "Re-check key");
  const changed = () => ["type", "keyUrl", "identityType", "userIdentity"].some((name) => state[name] !== initial[name]);
  const refreshSave = () => {
    save.disabled = !changed();
  };
  const details = el("div", {});
  const keyInput = el("input", { type: "text", id: "key-uri", class: "mono", value: state.keyUrl, placeholder: "https://{vault}/keys/{name}[/{version}]", "aria-describedby": "key-uri-meaning" });
  const meaning = el("div", { class: "muted", id: "key-uri-meaning" }, describeKeyUrl(state.keyUrl));
  let picker = null;
  keyInput.addEventListener("input", () => {
    state.keyUrl = keyInput.value.trim();
    meaning.textContent = describeKeyUrl(state.keyUrl);
    if (picker) picker.follow(state.keyUrl);
    refreshSave();
  });
  const pickerHost = el("div", {});
  const userSelect = select(
    "user-identity",
    [["", "Select an identity…"], ...identities.map((identity) => [identity.id, `${identity.name} (${parseId(identity.id).resourceGroup})`])],
    identities.find((identity) => identity.id.toLowerCase() === state.userIdentity.toLowerCase())?.id || "",
    (value) => {
      state.userIdentity = value;
      refreshSave();
    },
  );
  const userRow = field("User-assigned identity", userSelect);

  const drawDetails = () => {
    clear(details);
    if (state.type !== "cmk") {
      details.append(el("p", { class: "muted" }, "Data is encrypted with keys the platform manages."));
      return;
    }
    userRow.hidden = state.identityType !== "user";
    const openPicker = () => {
      picker = keyVaultPicker(info.subscription, state.keyUrl, (url) => {
        keyInput.value = url;
        state.keyUrl = url;
        meaning.textContent = describeKeyUrl(url);
        refreshSave();
      });
      clear(pickerHost).append(picker.root);
    };
    details.append(
      keyUrl
        ? el("div", { class: "field" }, el("span", { class: "label" }, "In use by the service"), el("span", { id: "key-in-use" }, describeKeyUrl(keyUrl) || keyUrl))
        : null,
      el(
        "div",
        { class: "field" },
        el("label", { for: "key-uri" }, "Key URI"),
        el("div", {}, keyInput, meaning, el("div", { class: "toolbar" }, el("button", { type: "button", id: "select-from-vault", onclick: openPicker }, "Select a key vault and key"))),
      ),
      pickerHost,
      el(
        "div",
        { class: "field" },
        el("span", { class: "label", id: "identity-type-label" }, "Identity type"),
        radios("identity-type", [["system", "System-assigned"], ["user", "User-assigned"]], state.identityType, (value) => {
          state.identityType = value;
          userRow.hidden = value !== "user";
          refreshSave();
        }, "identity-type-label"),
      ),
      userRow,
      current.systemAssigned
        ? el("div", { class: "field" }, el("span", { class: "label" }, "System-assigned principal"), el("span", { class: "mono" }, current.principalId || ""))
        : el("div", { class: "field" }, el("span", { class: "label" }, ""), el("span", { class: "muted" }, "The system-assigned identity is off; Save turns it on when chosen.")),
    );
  };

  const submit = async (button) => {
    clear(status);
    button.disabled = true;
    try {
      const changes = {};
      if (state.type === "cmk") {
        const problem = await keyUrlProblem(info.subscription, state.keyUrl);
        if (problem) throw problem;
        const encryption = { customerManagedKeyEncryption: { keyEncryptionKeyUrl: state.keyUrl } };
        const userIds = current.userAssigned.map((identity) => identity.id);
        if (state.identityType === "system") {
          changes.systemAssigned = true;
          encryption.customerManagedKeyEncryption.keyEncryptionKeyIdentity = { identityType: "SystemAssigned" };
        } else {
          if (!state.userIdentity) throw new ApiError(400, "UserAssignedIdentityRequired", "Select a user-assigned identity.");
          if (!userIds.some((id) => id.toLowerCase() === state.userIdentity.toLowerCase())) userIds.push(state.userIdentity);
          changes.userAssignedIds = userIds;
          encryption.customerManagedKeyEncryption.keyEncryptionKeyIdentity = {
            identityType: "UserAssigned",
            userAssignedIdentityResourceId: state.userIdentity,
          };
        }
        changes.encryption = encryption;
      } else {
        changes.encryption = null;
      }
      await arm("PUT", idPath(params.id), API_VERSIONS.healthcare, servicePutBody(service, changes));
      navigate({ view: "dicom-encryption", id: params.id, saved: Date.now() });
    } catch (error) {
      status.append(errorNotice(error));
      button.disabled = button === save ? !changed() : false;
    }
  };
  save.addEventListener("click", () => submit(save));
  revalidate.addEventListener("click", () => submit(revalidate));

  page.append(
    el("div", { class: "toolbar" }, save, el("button", { type: "button", onclick: () => navigate({ view: "dicom-encryption", id: params.id }) }, "Discard"), revalidate),
    status,
    el(
      "div",
      { class: "card" },
      el(
        "div",
        { class: "field" },
        el("span", { class: "label", id: "encryption-type-label" }, "Encryption type"),
        radios("encryption-type", [["smk", "Service-managed key"], ["cmk", "Customer-managed key"]], state.type, (value) => {
          state.type = value;
          drawDetails();
          refreshSave();
        }, "encryption-type-label"),
      ),
      details,
    ),
  );
  drawDetails();
}

// ---------------------------------------------------------------------------------------------
// Create DICOM service

async function renderCreateDicom(context) {
  const { page, params } = context;
  const info = parseId(params.id);
  const workspace = await arm("GET", idPath(params.id), API_VERSIONS.healthcare);
  const identities = await listAcrossGroups(info.subscription, "Microsoft.ManagedIdentity/userAssignedIdentities", API_VERSIONS.managedIdentity);
  if (context.stale()) return;
  heading(page, "Create DICOM service", `In workspace ${workspace.name}`);
  const state = { tab: "basics", name: "", encryption: "smk", keyUrl: "", identity: "" };
  const steps = [
    ["basics", "Basics"],
    ["security", "Security"],
    ["review", "Review + create"],
  ];
  const body = el("div", {});
  page.append(body);
  draw();

  function nameProblem() {
    if (!/^[A-Za-z0-9-]{3,24}$/.test(state.name)) return "The DICOM service name must be 3-24 letters, digits or hyphens.";
    return null;
  }

  function securityProblem() {
    if (state.encryption !== "cmk") return null;
    if (!state.keyUrl) return "Enter a key URI or select a key.";
    if (!state.identity) return "Select a user-assigned identity.";
    return null;
  }

  function draw() {
    clear(body).append(
      tabs("Create steps", "create-tab", steps, state.tab, (tab) => {
        state.tab = tab;
        draw();
      }),
    );
    if (state.tab === "basics") drawBasics();
    else if (state.tab === "security") drawSecurity();
    else drawReview();
  }

  function drawBasics() {
    const name = el("input", { type: "text", id: "dicom-name", value: state.name, autocomplete: "off" });
    name.addEventListener("input", () => {
      state.name = name.value.trim();
    });
    append(body, [
      el("div", { class: "field" }, el("span", { class: "label" }, "Workspace"), el("span", {}, workspace.name)),
      el("div", { class: "field" }, el("span", { class: "label" }, "Location"), el("span", {}, workspace.location || "")),
      field("DICOM service name", name),
      el("div", { class: "toolbar" }, el("button", { type: "button", class: "primary", id: "next-security", onclick: () => { state.tab = "security"; draw(); } }, "Next: Security")),
    ]);
  }

  function drawSecurity() {
    const details = el("div", {});
    const drawDetails = () => {
      clear(details);
      if (state.encryption !== "cmk") return;
      const keyInput = el("input", { type: "text", id: "create-key-uri", class: "mono", value: state.keyUrl, placeholder: "https://{vault}/keys/{name}[/{version}]", "aria-describedby": "create-key-uri-meaning" });
      const meaning = el("div", { class: "muted", id: "create-key-uri-meaning" }, describeKeyUrl(state.keyUrl));
      let picker = null;
      keyInput.addEventListener("input", () => {
        state.keyUrl = keyInput.value.trim();
        meaning.textContent = describeKeyUrl(state.keyUrl);
        if (picker) picker.follow(state.keyUrl);
      });
      const pickerHost = el("div", {});
      const openPicker = () => {
        picker = keyVaultPicker(info.subscription, state.keyUrl, (url) => {
          keyInput.value = url;
          state.keyUrl = url;
          meaning.textContent = describeKeyUrl(url);
        });
        clear(pickerHost).append(picker.root);
      };
      append(details, [
        el(
          "div",
          { class: "field" },
          el("label", { for: "create-key-uri" }, "Key URI"),
          el("div", {}, keyInput, meaning, el("div", { class: "toolbar" }, el("button", { type: "button", id: "create-select-from-vault", onclick: openPicker }, "Select from key vault"))),
        ),
        pickerHost,
        field(
          "User-assigned identity",
          select("create-identity", [["", "Select an identity…"], ...identities.map((identity) => [identity.id, `${identity.name} (${parseId(identity.id).resourceGroup})`])], state.identity, (value) => {
            state.identity = value;
          }),
          "The identity needs a crypto role on the key's vault (for example Key Vault Crypto Service Encryption User).",
        ),
      ]);
    };
    append(body, [
      el("h2", {}, "Encryption"),
      el(
        "div",
        { class: "field" },
        el("span", { class: "label", id: "create-encryption-label" }, "Encryption type"),
        radios("create-encryption", [["smk", "Service-managed key"], ["cmk", "Customer-managed key"]], state.encryption, (value) => {
          state.encryption = value;
          drawDetails();
        }, "create-encryption-label"),
      ),
      details,
      el(
        "div",
        { class: "toolbar" },
        el("button", { type: "button", onclick: () => { state.tab = "basics"; draw(); } }, "Previous"),
        el("button", { type: "button", class: "primary", id: "review-create", onclick: () => { state.tab = "review"; draw(); } }, "Review + create"),
      ),
    ]);
    drawDetails();
  }

  function drawReview() {
    const problems = [nameProblem(), securityProblem()].filter(Boolean);
    const status = el("div", { id: "create-status" });
    const create = el("button", { type: "button", class: "primary", id: "create-dicom", disabled: problems.length > 0 }, "Create");
    create.addEventListener("click", async () => {
      create.disabled = true;
      clear(status).append(notice("info", "Deploying…"));
      const serviceId = `${params.id}/dicomservices/${state.name}`;
      const requestBody = { location: workspace.location, properties: {} };
      if (state.encryption === "cmk") {
        requestBody.identity = { type: "UserAssigned", userAssignedIdentities: { [state.identity]: {} } };
        requestBody.properties.encryption = { customerManagedKeyEncryption: { keyEncryptionKeyUrl: state.keyUrl } };
      }
      try {
        if (state.encryption === "cmk") {
          const problem = await keyUrlProblem(info.subscription, state.keyUrl);
          if (problem) throw problem;
        }
        await arm("PUT", idPath(serviceId), API_VERSIONS.healthcare, requestBody);
        navigate({ view: "dicom-overview", id: serviceId });
      } catch (error) {
        clear(status).append(errorNotice(error));
        create.disabled = false;
      }
    });
    append(body, [
      problems.length ? notice("error", "Validation failed: ", problems.join(" ")) : notice("success", "Validation passed."),
      el(
        "dl",
        { class: "kv card" },
        el("dt", {}, "Workspace"),
        el("dd", {}, workspace.name),
        el("dt", {}, "DICOM service name"),
        el("dd", {}, state.name),
        el("dt", {}, "Location"),
        el("dd", {}, workspace.location || ""),
        el("dt", {}, "Encryption"),
        el("dd", {}, state.encryption === "cmk" ? "Customer-managed key" : "Service-managed key"),
        state.encryption === "cmk" ? [el("dt", {}, "Key URI"), el("dd", { class: "mono" }, state.keyUrl), el("dt", {}, "Identity"), el("dd", {}, state.identity ? parseId(state.identity).name : "")] : null,
      ),
      status,
      el("div", { class: "toolbar" }, el("button", { type: "button", onclick: () => { state.tab = "security"; draw(); } }, "Previous"), create),
    ]);
  }
}

// ---------------------------------------------------------------------------------------------
// DICOM service: Resource health

async function renderDicomHealth(context) {
  const { page, params } = context;
  const health = await arm("GET", `${idPath(params.id)}/providers/Microsoft.ResourceHealth/availabilityStatuses/current`, API_VERSIONS.resourceHealth);
  if (context.stale()) return;
  const properties = (health && health.properties) || {};
  const state = ["Available", "Unavailable", "Unknown"].includes(properties.availabilityState) ? properties.availabilityState : "Unknown";
  heading(page, "Resource health", parseId(params.id).name);
  const actions = (properties.recommendedActions || []).map((action) => el("li", {}, action.action || ""));
  page.append(
    el("div", { class: "toolbar" }, el("button", { type: "button", onclick: () => render() }, "Refresh")),
    el(
      "div",
      { class: "card" },
      el("div", { class: `status ${state}`, id: "availability-state" }, properties.availabilityState || "Unknown"),
      properties.title && properties.title !== properties.availabilityState ? el("h2", {}, properties.title) : null,
      el("p", { id: "health-summary" }, properties.summary || ""),
      properties.detailedStatus ? el("p", { class: "muted", id: "health-detail" }, properties.detailedStatus) : null,
      el(
        "dl",
        { class: "kv" },
        el("dt", {}, "Since"),
        el("dd", {}, formatTime(properties.occuredTime) || "—"),
        el("dt", {}, "Last checked"),
        el("dd", {}, formatTime(properties.reportedTime) || "—"),
        properties.reasonChronicity ? [el("dt", {}, "Chronicity"), el("dd", {}, properties.reasonChronicity)] : null,
      ),
      el("h2", {}, "What you can do"),
      actions.length ? el("ul", { class: "actions", id: "health-actions" }, actions) : el("p", { class: "muted" }, "Nothing: the service is working."),
    ),
  );
}

// ---------------------------------------------------------------------------------------------

window.addEventListener("hashchange", () => render());
render();
