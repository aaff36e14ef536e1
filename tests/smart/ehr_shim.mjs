// Test-only stand-in for an EHR: a real OAuth 2 server (oauth2-mock-server, pinned in package.json)
// made to behave like a SMART authorization server, plus a small FHIR front that serves
// .well-known/smart-configuration, checks bearer tokens and proxies to the real FHIR server.
//
//   node ehr_shim.mjs --fhir-upstream http://127.0.0.1:8090/fhir [--host 127.0.0.1]
//
// Prints one JSON line {"ready": true, "authPort": N, "ehrPort": M} when both servers listen.
// The tests steer it through /_control/* on the EHR port (JSON): reset, config, client, launch, log.
// It records every request it receives so tests can prove what the app sent (and what it did not).
// It is strict where oauth2-mock-server is lenient: PKCE S256 is required at /authorize and a
// code_verifier at /token; the client id, redirect URI, aud, launch and client secret are checked;
// refresh tokens work once.

import http from "node:http";
import { randomUUID } from "node:crypto";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

function argument(name, fallback) {
  const index = process.argv.indexOf(name);
  return index >= 0 ? process.argv[index + 1] : fallback;
}

const HOST = argument("--host", "127.0.0.1");
const UPSTREAM = argument("--fhir-upstream", "").replace(/\/$/, "");
if (!UPSTREAM) {
  console.error("--fhir-upstream is required");
  process.exit(2);
}

const DEFAULTS = {
  authorize_error: null, // e.g. "access_denied": /authorize redirects back with this error
  token_error: null, // e.g. "invalid_grant": /token answers 400 with this error
  omit_patient: false, // no `patient` in the token response
  omit_refresh_token: false,
  expires_in: 3600,
  granted_scope: null, // the scope granted instead of the one asked for
  fhir_status: null, // every FHIR request answers this status (e.g. 401)
  standalone_patient: null, // the patient "picked" in a standalone launch
};

const shim = {
  config: { ...DEFAULTS },
  clients: new Map(), // client_id -> {secret, redirectUris}
  launches: new Map(), // launch id -> {patient, appContext, need_patient_banner, encounter}
  codes: new Map(), // code -> {launch, scope, clientId, redirectUri}
  tokens: new Map(), // access token -> {serial, patient}
  refreshTokens: new Map(), // refresh token -> {used, scope, clientId}
  log: [],
  serial: 0,
};

let authPort = 0;
let ehrPort = 0;

function fhirBases() {
  return [`http://127.0.0.1:${ehrPort}/fhir`, `http://localhost:${ehrPort}/fhir`];
}

function sendJson(res, status, body, headers = {}) {
  res.writeHead(status, { "Content-Type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

function basicAuth(req) {
  const header = req.headers.authorization || "";
  if (!header.startsWith("Basic ")) {
    return null;
  }
  const decoded = Buffer.from(header.slice(6), "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  return colon < 0 ? null : { name: decoded.slice(0, colon), pass: decoded.slice(colon + 1) };
}

function record(entry, res) {
  shim.log.push(entry);
  res.on("finish", () => {
    entry.status = res.statusCode;
  });
  return entry;
}

// -- the authorization server ---------------------------------------------------------------------

const issuer = new OAuth2Issuer();
await issuer.keys.generate("RS256");
const service = new OAuth2Service(issuer);

function redirectWithError(res, redirectUri, state, error, description) {
  const url = new URL(redirectUri);
  url.searchParams.set("error", error);
  url.searchParams.set("error_description", description);
  if (state) {
    url.searchParams.set("state", state);
  }
  res.writeHead(302, { Location: url.href });
  res.end();
}

function checkAuthorize(req, res, query, entry) {
  const client = shim.clients.get(query.client_id);
  if (!client || !client.redirectUris.includes(query.redirect_uri)) {
    entry.refused = "unknown client_id or unregistered redirect_uri";
    sendJson(res, 400, { error: "invalid_request", error_description: entry.refused });
    return false;
  }
  const scopes = (query.scope || "").split(" ");
  let refusal = null;
  if (!query.code_challenge || query.code_challenge_method !== "S256") {
    refusal = "PKCE with code_challenge_method=S256 is required";
  } else if (!fhirBases().includes(query.aud)) {
    refusal = "aud is not this server's FHIR base";
  } else if (scopes.includes("launch") && !shim.launches.has(query.launch)) {
    refusal = "unknown launch";
  } else if (!scopes.includes("launch") && !scopes.includes("launch/patient")) {
    refusal = "neither launch nor launch/patient was asked for";
  }
  if (refusal) {
    entry.refused = refusal;
    redirectWithError(res, query.redirect_uri, query.state, "invalid_request", refusal);
    return false;
  }
  return true;
}

service.on("beforeAuthorizeRedirect", (authorizeRedirect, req) => {
  const url = authorizeRedirect.url;
  const code = url.searchParams.get("code");
  if (shim.config.authorize_error) {
    url.searchParams.delete("code");
    url.searchParams.set("error", shim.config.authorize_error);
    url.searchParams.set("error_description", "The user declined the request");
    return;
  }
  shim.codes.set(code, {
    launch: req.query.launch || null,
    scope: req.query.scope || "",
    clientId: req.query.client_id,
    redirectUri: req.query.redirect_uri,
  });
});

function clientProblem(req, clientId) {
  const client = shim.clients.get(clientId);
  if (!client) {
    return "unknown client";
  }
  const basic = basicAuth(req);
  if (client.secret) {
    if (!basic || basic.name !== clientId || basic.pass !== client.secret) {
      return "confidential client: HTTP Basic client_id:client_secret required";
    }
    if ("client_secret" in req.body) {
      return "client_secret must not be sent in the body";
    }
  } else if (req.body.client_id !== clientId || basic) {
    return "public client: client_id in the body and no Authorization header";
  }
  return null;
}

service.on("beforeResponse", (tokenResponse, req) => {
  const body = req.body;
  const entry = shim.log.findLast((e) => e.path === "/token");
  const fail = (status, error, description) => {
    tokenResponse.statusCode = status;
    tokenResponse.body = { error, error_description: description };
    if (entry) {
      entry.refused = description;
    }
  };
  const issued = tokenResponse.body;
  if (entry) {
    entry.form = { ...body }; // what the app sent (this is a test tool: it keeps the verifier)
  }
  if (body.grant_type === "authorization_code") {
    const context = shim.codes.get(body.code);
    shim.codes.delete(body.code);
    if (!context) {
      return fail(400, "invalid_grant", "unknown or used code");
    }
    const problem = clientProblem(req, context.clientId);
    if (problem) {
      return fail(401, "invalid_client", problem);
    }
    if (body.redirect_uri !== context.redirectUri) {
      return fail(400, "invalid_grant", "redirect_uri differs from the authorization request");
    }
    if (!body.code_verifier) {
      return fail(400, "invalid_grant", "code_verifier required");
    }
    if (shim.config.token_error) {
      return fail(400, shim.config.token_error, "configured token error");
    }
    const launch = context.launch ? shim.launches.get(context.launch) : null;
    const patient = launch ? launch.patient : shim.config.standalone_patient;
    const out = {
      access_token: issued.access_token,
      token_type: "Bearer",
      expires_in: shim.config.expires_in,
      scope: shim.config.granted_scope ?? context.scope,
    };
    if (!shim.config.omit_patient && patient) {
      out.patient = patient;
    }
    if (launch && launch.need_patient_banner !== undefined) {
      out.need_patient_banner = launch.need_patient_banner;
    }
    if (launch && launch.encounter) {
      out.encounter = launch.encounter;
    }
    if (launch && launch.appContext !== undefined) {
      out.appContext = launch.appContext;
    }
    if (!shim.config.omit_refresh_token) {
      out.refresh_token = randomUUID();
      shim.refreshTokens.set(out.refresh_token, {
        used: false,
        scope: out.scope,
        clientId: context.clientId,
      });
    }
    const serial = ++shim.serial;
    shim.tokens.set(out.access_token, { serial, patient });
    if (entry) {
      entry.access_serial = serial;
    }
    tokenResponse.body = out;
  } else if (body.grant_type === "refresh_token") {
    const grant = shim.refreshTokens.get(body.refresh_token);
    if (!grant || grant.used) {
      return fail(400, "invalid_grant", "unknown or used refresh token");
    }
    const problem = clientProblem(req, grant.clientId);
    if (problem) {
      return fail(401, "invalid_client", problem);
    }
    grant.used = true;
    const out = {
      access_token: issued.access_token,
      token_type: "Bearer",
      expires_in: shim.config.expires_in,
      scope: grant.scope,
      refresh_token: randomUUID(),
    };
    shim.refreshTokens.set(out.refresh_token, { ...grant, used: false });
    const serial = ++shim.serial;
    shim.tokens.set(out.access_token, { serial, patient: null });
    if (entry) {
      entry.access_serial = serial;
    }
    tokenResponse.body = out;
  } else {
    fail(400, "unsupported_grant_type", "only authorization_code and refresh_token");
  }
});

const authServer = http.createServer((req, res) => {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const query = Object.fromEntries(url.searchParams);
  const entry = record({ server: "auth", method: req.method, path: url.pathname, query }, res);
  if (url.pathname === "/authorize" && !checkAuthorize(req, res, query, entry)) {
    return;
  }
  if (url.pathname === "/token") {
    const basic = basicAuth(req);
    entry.basic_user = basic ? basic.name : null;
    entry.basic_ok = basic ? shim.clients.get(basic.name)?.secret === basic.pass : null;
  }
  service.requestHandler(req, res);
});

// -- the EHR's FHIR front, the EHR page, and the controls ------------------------------------------

function smartConfiguration() {
  const auth = `http://127.0.0.1:${authPort}`;
  return {
    issuer: auth,
    authorization_endpoint: `${auth}/authorize`,
    token_endpoint: `${auth}/token`,
    token_endpoint_auth_methods_supported: ["client_secret_basic", "none"],
    grant_types_supported: ["authorization_code", "refresh_token"],
    scopes_supported: [
      "launch",
      "launch/patient",
      "online_access",
      "offline_access",
      "patient/*.rs",
      "patient/*.read",
    ],
    response_types_supported: ["code"],
    capabilities: [
      "launch-ehr",
      "launch-standalone",
      "client-public",
      "client-confidential-symmetric",
      "context-ehr-patient",
      "context-standalone-patient",
      "context-banner",
      "permission-patient",
      "permission-online",
      "permission-v1",
      "permission-v2",
    ],
    code_challenge_methods_supported: ["S256"],
  };
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString();
  return text ? JSON.parse(text) : {};
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function ehrPage(req, url) {
  const launch = url.searchParams.get("launch") || "";
  const app = url.searchParams.get("app") || "";
  const iss = `http://${req.headers.host}/fhir`;
  const src = `${app}?iss=${encodeURIComponent(iss)}&launch=${encodeURIComponent(launch)}`;
  const height = url.searchParams.get("height") || "2200";
  return `<!doctype html><html><head><meta charset="utf-8"><title>Simulated EHR</title>
<style>
body{margin:0;font-family:system-ui,sans-serif;background:#dfe3e8}
.ehr-bar{background:#2b3440;color:#fff;padding:8px 16px;font-size:14px}
.ehr-tabs{background:#eef1f4;padding:6px 16px;font-size:13px;color:#333;border-bottom:1px solid #c5ccd3}
iframe{display:block;width:100%;border:0;background:#fff}
</style></head><body>
<div class="ehr-bar">Simulated EHR (test shim) &middot; launch ${escapeHtml(launch)}</div>
<div class="ehr-tabs">Summary &middot; Notes &middot; Orders &middot; <b>HFS recurrence risk (SMART app)</b></div>
<iframe id="smart-app" name="smart-app" title="SMART app" src="${escapeHtml(src)}" height="${escapeHtml(height)}"></iframe>
</body></html>`;
}

async function proxyFhir(req, res, url, entry) {
  const auth = req.headers.authorization || "";
  const token = auth.startsWith("Bearer ") ? auth.slice(7) : null;
  const known = token ? shim.tokens.get(token) : null;
  entry.token_serial = known ? known.serial : null;
  if (shim.config.fhir_status) {
    const status = shim.config.fhir_status;
    return sendJson(res, status, {
      resourceType: "OperationOutcome",
      issue: [{ severity: "error", code: "security", diagnostics: `configured ${status}` }],
    });
  }
  if (!known) {
    return sendJson(
      res,
      401,
      {
        resourceType: "OperationOutcome",
        issue: [{ severity: "error", code: "login", diagnostics: "no valid bearer token" }],
      },
      { "WWW-Authenticate": "Bearer" },
    );
  }
  const upstream = UPSTREAM + url.pathname.slice("/fhir".length) + url.search;
  const answer = await fetch(upstream, { headers: { Accept: "application/fhir+json" } });
  const text = (await answer.text()).split(UPSTREAM).join(`http://${req.headers.host}/fhir`);
  res.writeHead(answer.status, {
    "Content-Type": answer.headers.get("content-type") || "application/fhir+json",
  });
  res.end(text);
}

async function control(req, res, url) {
  const name = url.pathname.slice("/_control/".length);
  if (name === "log" && req.method === "GET") {
    return sendJson(res, 200, { requests: shim.log });
  }
  const body = req.method === "POST" ? await readJson(req) : {};
  if (name === "reset") {
    shim.config = { ...DEFAULTS };
    shim.log = [];
    return sendJson(res, 200, { ok: true });
  }
  if (name === "config") {
    Object.assign(shim.config, body);
    return sendJson(res, 200, shim.config);
  }
  if (name === "client") {
    shim.clients.set(body.client_id, {
      secret: body.client_secret || null,
      redirectUris: body.redirect_uris || [],
    });
    return sendJson(res, 200, { ok: true });
  }
  if (name === "launch") {
    const id = randomUUID();
    shim.launches.set(id, body);
    return sendJson(res, 200, { launch: id });
  }
  return sendJson(res, 404, { error: "unknown control" });
}

const ehrServer = http.createServer(async (req, res) => {
  const url = new URL(req.url, `http://${req.headers.host}`);
  try {
    if (url.pathname.startsWith("/_control/")) {
      return await control(req, res, url);
    }
    if (url.pathname === "/favicon.ico") {
      res.writeHead(204);
      return res.end();
    }
    const entry = record(
      {
        server: "ehr",
        method: req.method,
        host: req.headers.host,
        path: url.pathname,
        query: Object.fromEntries(url.searchParams),
      },
      res,
    );
    if (url.pathname.endsWith("/.well-known/smart-configuration")) {
      return sendJson(res, 200, smartConfiguration());
    }
    if (url.pathname === "/ehr") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      return res.end(ehrPage(req, url));
    }
    if (url.pathname.startsWith("/fhir/")) {
      return await proxyFhir(req, res, url, entry);
    }
    return sendJson(res, 404, { error: "not found" });
  } catch (error) {
    console.error("shim error:", error && error.message);
    if (!res.headersSent) {
      sendJson(res, 500, { error: "shim error" });
    } else {
      res.end();
    }
  }
});

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, HOST, () => resolve(server.address().port));
  });
}

authPort = await listen(authServer);
issuer.url = `http://127.0.0.1:${authPort}`;
ehrPort = await listen(ehrServer);
process.stdout.write(JSON.stringify({ ready: true, authPort, ehrPort }) + "\n");

function shutdown() {
  authServer.close();
  ehrServer.close();
  authServer.closeAllConnections();
  ehrServer.closeAllConnections();
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
