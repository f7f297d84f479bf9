// kiroku console (docs/console.md): one ES module, no framework, no build step.
//
// Vendored: hls.js 1.7.4 (npm hls.js@1.7.4, dist/hls.min.js, Apache-2.0,
// hls.js-LICENSE.txt), loaded on first HLS playback.
//
// What the page talks to (all on this box; the CSP allows nothing else):
//   POST|DELETE /v1/console/session   sign in / out (bearer token → HttpOnly cookie)
//   GET /v1/console/info, /v1/rooms, /v1/tasks, /v1/status, /v1/files/…  (cookie)
//   POST /v1/console/usersig, DELETE /v1/sessions/<id>                  (bearer)
//   POST / with X-TC-Action: the REST API itself, as the operator       (bearer)
//   POST /whip/<app>/<room>/<user>[/aux], DELETE <Location>            (WHIP)
// The operator token lives in sessionStorage (this tab only); every change
// sends it as a bearer token, reads ride on the cookie.

const HLS_VERSION = "1.7.4";
const TOKEN_KEY = "kiroku.console.token";
const API_VERSION = "2019-07-22";

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  signedIn: false,
  info: null,
  rooms: [],
  roomsAt: 0,
  lastBytes: new Map(), // track key → {bytes, t}
  bitrates: new Map(), // track key → bit/s
  tasks: [],
  status: null,
  timers: {},
  publications: [],
  confirmStop: null, // {taskId, until}
  modifyTask: null,
  tab: "rooms",
};

// ---------------------------------------------------------------- DOM helpers

/** `h("tr", {class: "x", "data-key": k}, child, "text", [more])`. */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  appendKids(el, kids);
  return el;
}

function appendKids(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    el.append(k instanceof Node ? k : String(k));
  }
}

/** Replaces `parent`'s children by `kids`, reusing the nodes already there
 *  (so buttons under the pointer survive a refresh). Nodes with different
 *  `data-key`s are replaced, not patched. */
function morph(parent, kids) {
  const next = [];
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    next.push(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  const old = [...parent.childNodes];
  next.forEach((n, i) => (i < old.length ? morphNode(old[i], n) : parent.append(n)));
  for (let i = next.length; i < old.length; i++) old[i].remove();
}

function morphNode(a, b) {
  if (a.nodeType !== b.nodeType || a.nodeName !== b.nodeName ||
      (a.nodeType === Node.ELEMENT_NODE && a.getAttribute("data-key") !== b.getAttribute("data-key"))) {
    a.replaceWith(b);
    return;
  }
  if (a.nodeType !== Node.ELEMENT_NODE) {
    if (a.nodeValue !== b.nodeValue) a.nodeValue = b.nodeValue;
    return;
  }
  for (const { name } of [...a.attributes]) if (!b.hasAttribute(name)) a.removeAttribute(name);
  for (const { name, value } of [...b.attributes]) if (a.getAttribute(name) !== value) a.setAttribute(name, value);
  morph(a, [...b.childNodes]);
}

function show(el, on = true) { el.hidden = !on; }

function showError(el, err) {
  if (!err) { el.hidden = true; el.replaceChildren(); return; }
  el.hidden = false;
  el.replaceChildren(...errorNodes(err));
}

/** An error as the page shows it: Tencent's Code and Message for API errors. */
function errorNodes(err) {
  if (err instanceof ApiError) {
    return [h("span", { class: "code" }, err.code), " ", h("span", { class: "message" }, err.message),
      err.requestId ? h("small", { class: "muted request-id" }, ` RequestId ${err.requestId}`) : null];
  }
  if (err instanceof HttpError) {
    return [h("span", { class: "code" }, `HTTP ${err.status}`), " ", h("span", { class: "message" }, err.message)];
  }
  return [h("span", { class: "message" }, err && err.message ? err.message : String(err))];
}

// ---------------------------------------------------------------- formatting

const pad2 = (n) => String(n).padStart(2, "0");
function clock(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}
function dateTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock(ms)}`;
}
function duration(s) {
  s = Math.max(0, Math.round(s));
  const m = Math.floor(s / 60), hh = Math.floor(m / 60);
  return hh ? `${hh} h ${pad2(m % 60)} min` : m ? `${m} min ${pad2(s % 60)} s` : `${s} s`;
}
function bytes(n) {
  if (n === null || n === undefined) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}
function bitrate(bps) {
  if (bps === undefined || bps === null || !isFinite(bps)) return "—";
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  return `${Math.round(bps / 1000)} kbit/s`;
}
const CALLBACKS = {
  301: "recorder started", 302: "recorder stopped", 303: "upload started", 304: "file info",
  305: "upload stopped", 306: "failover (resumed)", 307: "file slice", 308: "upload error",
  309: "image download error", 310: "MP4/AAC done", 311: "VOD commit", 312: "VOD stopped",
};

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {
  constructor(code, message, requestId) { super(`${code}: ${message}`); this.code = code; this.message = message; this.requestId = requestId; }
}
class HttpError extends Error {
  constructor(status, message) { super(`HTTP ${status}: ${message}`); this.status = status; this.message = message; }
}

async function errorText(r) {
  const t = await r.text();
  try { const j = JSON.parse(t); return j.error || t; } catch { return t || r.statusText; }
}

/** A read, authorized by the session cookie; a lost session is reopened
 *  once with the token this tab holds. */
async function getJson(path, retried = false) {
  const r = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (r.status === 401 && !retried && state.token) {
    if (await openSession(state.token).then(() => true, () => false)) return getJson(path, true);
  }
  if (r.status === 401) {
    const why = await errorText(r);
    if (state.signedIn) signedOut("Your session has ended: sign in again.");
    throw new HttpError(401, why);
  }
  if (!r.ok) throw new HttpError(r.status, await errorText(r));
  return r.json();
}

/** A change: the operator's bearer token. */
async function operatorFetch(path, { method = "POST", body } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!r.ok) throw new HttpError(r.status, await errorText(r));
  return r.status === 204 ? null : r.json().catch(() => null);
}

/** One action of the REST API (Tencent's request body and envelope). */
async function tc(action, body) {
  const r = await fetch("/", {
    method: "POST",
    headers: {
      Authorization: `Bearer ${state.token}`, "X-TC-Action": action, "X-TC-Version": API_VERSION,
      "Content-Type": "application/json",
    },
    body: JSON.stringify(body),
  });
  let envelope;
  try { envelope = await r.json(); } catch { throw new HttpError(r.status, "the API answered no JSON"); }
  const resp = envelope && envelope.Response;
  if (!resp) throw new HttpError(r.status, "the API answered no Response envelope");
  if (resp.Error) throw new ApiError(resp.Error.Code, resp.Error.Message, resp.RequestId);
  return resp;
}

// ---------------------------------------------------------------- sign in / out

async function openSession(token) {
  const r = await fetch("/v1/console/session", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw new HttpError(r.status, await errorText(r));
}

async function signIn(token) {
  await openSession(token);
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  await enter();
}

async function signOut() {
  try { await fetch("/v1/console/session", { method: "DELETE", headers: { Authorization: `Bearer ${state.token}` } }); } catch { /* gone anyway */ }
  for (const p of [...state.publications]) await stopPublication(p);
  signedOut("");
}

function signedOut(message) {
  state.signedIn = false;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const t of Object.values(state.timers)) clearTimeout(t);
  state.timers = {};
  stopPlayer();
  document.body.classList.remove("signed-in");
  for (const id of ["tabs", "sign-out", "load"]) show($(id), false);
  for (const v of document.querySelectorAll(".view")) show(v, false);
  show($("signin"));
  $("signin-token").value = "";
  showError($("signin-error"), message ? new Error(message) : null);
  $("signin-token").focus();
}

async function enter() {
  state.info = await getJson("/v1/console/info");
  state.signedIn = true;
  document.body.classList.add("signed-in");
  show($("signin"), false);
  for (const id of ["tabs", "sign-out", "load"]) show($(id));
  const i = state.info;
  $("node-info").textContent = `${i.node_id || ""} · v${i.version}${i.dev_mode ? " · dev mode" : ""}`;
  $("node-info").title = `public_url ${i.public_url}`;
  fillAppSelects();
  syncBotAndSig();
  renderCreate();
  selectTab((location.hash || "#rooms").slice(1));
  poll("rooms", 1000, pollRooms);
  poll("status", 2000, pollStatus);
  poll("tasks", 1500, pollTasks);
}

/** Runs `fn` now and every `ms` after it finishes; calling it again for the
 *  same name restarts the loop (a run still in flight then ends it). */
const pollGeneration = {};
function poll(name, ms, fn) {
  clearTimeout(state.timers[name]);
  const gen = (pollGeneration[name] = (pollGeneration[name] || 0) + 1);
  const run = async () => {
    if (!state.signedIn || gen !== pollGeneration[name]) return;
    try { await fn(); } catch (e) { if (state.signedIn) console.warn(name, e); }
    if (state.signedIn && gen === pollGeneration[name]) state.timers[name] = setTimeout(run, ms);
  };
  run();
}
const pollNow = (name) => ({ rooms: () => poll("rooms", 1000, pollRooms), tasks: () => poll("tasks", 1500, pollTasks) })[name]();

// ---------------------------------------------------------------- tabs

function selectTab(tab) {
  if (!["rooms", "publish", "record", "tasks"].includes(tab)) tab = "rooms";
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs [data-tab]")) {
    b.classList.toggle("active", b.dataset.tab === tab);
    b.setAttribute("aria-selected", b.dataset.tab === tab ? "true" : "false");
  }
  for (const v of document.querySelectorAll(".view")) show(v, v.id === `view-${tab}`);
  if (location.hash !== `#${tab}`) history.replaceState(null, "", `#${tab}`);
  if (tab === "record") drawPreviews();
}

// ---------------------------------------------------------------- status (load, alerts)

async function pollStatus() {
  state.status = await getJson("/v1/status");
  renderStatus();
}

function figure(label, value, extra) {
  return h("div", { class: "figure" }, h("div", { class: "figure-label" }, label), h("div", { class: "figure-value" }, value), extra || null);
}

function renderStatus() {
  const s = state.status;
  if (!s) return;
  const healthy = s.health === "ok";
  morph($("load-figures"), [
    figure("Tasks", `${s.tasks} / ${s.max_tasks}`,
      h("meter", { min: 0, max: Math.max(1, s.max_tasks), value: s.tasks, low: s.max_tasks * 0.7, high: s.max_tasks * 0.9, optimum: 0 })),
    figure("Capacity (cost units)", `${(s.capacity_used_units ?? 0).toFixed(1)} / ${(s.capacity_admit_units ?? 0).toFixed(0)}`,
      h("meter", { min: 0, max: Math.max(1, s.capacity_admit_units), value: s.capacity_used_units,
        low: s.capacity_admit_units * 0.7, high: s.capacity_admit_units * 0.9, optimum: 0 })),
    figure("Publishing tracks", s.publishing_tracks),
    figure("WHIP sessions", s.sessions),
    figure("Upload spool", `${bytes(s.spool_used_bytes)} / ${bytes(s.spool_capacity_bytes)}`,
      h("meter", { min: 0, max: Math.max(1, s.spool_capacity_bytes), value: s.spool_used_bytes,
        low: s.spool_capacity_bytes * 0.5, high: s.spool_capacity_bytes * 0.8, optimum: 0 })),
    figure("Callbacks pending", s.callbacks_pending),
    figure("Stranded uploads", s.upload_stranded_files),
    h("div", { class: `figure health ${healthy ? "ok" : "bad"}`, id: "health" },
      h("div", { class: "figure-label" }, "Health"), h("div", { class: "figure-value" }, s.health)),
  ]);
  morph($("alerts"), (s.alerts || []).map((a) =>
    h("div", { class: `alert ${a.severity}`, "data-key": a.name, role: "alert" },
      h("strong", null, a.name), h("span", { class: "badge" }, a.severity), " ", a.summary)));
}

// ---------------------------------------------------------------- rooms

const roomKey = (r) => `${r.sdk_app_id}/${r.room_id_type === "string" ? "s" : "i"}/${r.room_id}`;
const isStringRoom = (r) => r.room_id_type === "string";

async function pollRooms() {
  const body = await getJson("/v1/rooms");
  const now = performance.now();
  const next = new Map();
  const oldRates = state.bitrates;
  state.bitrates = new Map();
  for (const r of body.rooms || []) {
    for (const u of r.users || []) {
      for (const t of u.tracks || []) {
        const key = `${roomKey(r)}/${u.user_id}/${t.session_id || ""}/${t.kind}`;
        const prev = state.lastBytes.get(key);
        if (prev && now - prev.t < 500) {
          // An extra poll right after the last one: too short to measure.
          next.set(key, prev);
          if (oldRates.has(key)) state.bitrates.set(key, oldRates.get(key));
          continue;
        }
        next.set(key, { bytes: t.bytes, t: now });
        if (prev && t.bytes >= prev.bytes) {
          state.bitrates.set(key, ((t.bytes - prev.bytes) * 8 * 1000) / (now - prev.t));
        }
      }
    }
  }
  state.lastBytes = next;
  state.rooms = body.rooms || [];
  state.roomsAt = Date.now();
  renderRooms(body);
  if (state.tab === "record" || !$("modify-panel").hidden) drawPreviews();
}

function renderRooms(body) {
  const rooms = state.rooms;
  const users = rooms.reduce((n, r) => n + (r.users || []).length, 0);
  $("rooms-summary").textContent = `${rooms.length} room(s), ${users} user(s), ${body.sessions ?? 0} session(s) · updated ${clock(Date.now())}`;
  if (!rooms.length) {
    morph($("rooms"), [h("p", { class: "empty", "data-key": "empty" }, "No one is publishing. Publish from this browser (Publish tab) or point a WHIP client at ",
      h("code", null, `${location.origin}/whip/<SdkAppId>/<RoomId>/<UserId>`), ".")]);
    return;
  }
  morph($("rooms"), rooms.map((r) => {
    const rk = roomKey(r);
    return h("article", { class: "card room", "data-key": rk, "data-room": String(r.room_id), "data-app": r.sdk_app_id },
      h("div", { class: "room-head" },
        h("h2", null, `Room ${r.room_id}`),
        h("span", { class: "muted" }, `SdkAppId ${r.sdk_app_id} · ${isStringRoom(r) ? "string" : "integer"} room · ${(r.users || []).length} user(s)`),
        h("button", { type: "button", "data-action": "record-room", "data-app": r.sdk_app_id, "data-room": String(r.room_id),
          "data-type": isStringRoom(r) ? "0" : "1" }, "Record this room…")),
      h("table", { class: "tracks" },
        h("thead", null, h("tr", null, ["#", "User", "Track", "Codec", "State", "Resolution", "Frame rate", "Bitrate", "Frames", "Session"].map((c) => h("th", null, c)))),
        h("tbody", null, (r.users || []).flatMap((u, ui) => userRows(rk, u, ui)))));
  }));
}

function userRows(rk, u, ui) {
  const sessions = new Map((u.sessions || []).map((s) => [s.session_id, s]));
  const streamOf = (t) => ((sessions.get(t.session_id) || {}).stream === "aux" ? 1 : 0);
  const tracks = [...(u.tracks || [])].sort((a, b) => streamOf(a) - streamOf(b) || trackOrder(a.kind) - trackOrder(b.kind));
  const rows = tracks.length ? tracks : [null];
  const span = rows.length;
  return rows.map((t, i) => {
    const first = i === 0;
    const key = t ? `${rk}/${u.user_id}/${t.session_id || ""}/${t.kind}` : null;
    // A session's figures once, on its first track's row.
    const s = t && (i === 0 || rows[i - 1].session_id !== t.session_id) ? sessions.get(t.session_id) : null;
    const res = t && t.width && t.height ? `${t.width}×${t.height}` : "—";
    const fps = t && typeof t.frame_rate === "number" ? t.frame_rate.toFixed(1) : "—";
    const br = key ? state.bitrates.get(key) : undefined;
    return h("tr", { "data-key": `${u.user_id}/${t ? t.session_id + "/" + t.kind : "none"}`, "data-user": u.user_id,
      "data-kind": t ? t.kind : null, class: first ? "user-first" : null },
      first ? h("td", { rowspan: span, class: "num" }, ui + 1) : null,
      first ? h("td", { rowspan: span, class: "user" }, h("strong", null, u.user_id),
        h("div", { class: "muted small" }, `joined ${clock(u.joined_at_ms)}`)) : null,
      h("td", { class: "kind" }, t ? trackLabel(t.kind) : h("span", { class: "muted" }, "no tracks")),
      h("td", { class: "codec" }, t ? t.codec : ""),
      h("td", { class: "state" }, t ? h("span", { class: `badge state-${t.state}` }, t.state) : ""),
      h("td", { class: "res" }, t && t.kind !== "audio" ? res : t ? "" : ""),
      h("td", { class: "fps", "data-value": t ? t.frame_rate : null }, t ? `${fps} fps` : ""),
      h("td", { class: "bitrate", "data-value": br === undefined ? null : Math.round(br) }, t ? bitrate(br) : ""),
      h("td", { class: "frames num" }, t ? t.frames : ""),
      h("td", { class: "session small" }, s ? [
        h("span", { class: "badge" }, s.stream), " ",
        h("span", { class: "muted" }, `rtt ${s.rtt_ms === null || s.rtt_ms === undefined ? "—" : Math.round(s.rtt_ms) + " ms"} · loss ${Math.round((s.loss_fraction || 0) * 100)}%`), " ",
        h("button", { type: "button", class: "link danger", "data-action": "end-session", "data-session": s.session_id, title: `DELETE /v1/sessions/${s.session_id}` }, "end"),
      ] : ""));
  });
}

const trackOrder = (k) => ({ main_video: 0, aux_video: 1, audio: 2 })[k] ?? 3;
const trackLabel = (k) => ({ main_video: "camera (main)", aux_video: "screen (aux)", audio: "audio" })[k] || k;

/** The users of a room in join order (for previews and pickers);
 *  `stringRoom` null: the integer room of that id, else the string room. */
function roomUsers(app, room, stringRoom) {
  const same = (x) => String(x.sdk_app_id) === String(app) && String(x.room_id) === String(room);
  const r = stringRoom === null
    ? state.rooms.find((x) => same(x) && !isStringRoom(x)) || state.rooms.find((x) => same(x))
    : state.rooms.find((x) => same(x) && isStringRoom(x) === stringRoom);
  return r ? (r.users || []).map((u) => ({
    id: u.user_id,
    main: (u.tracks || []).some((t) => t.kind === "main_video"),
    aux: (u.tracks || []).some((t) => t.kind === "aux_video"),
  })) : [];
}

// ---------------------------------------------------------------- apps and UserSigs

/** The SdkAppId pickers: the configured apps; a box without apps (dev mode)
 *  takes any SdkAppId, so the pickers become number fields. */
function fillAppSelects() {
  const apps = (state.info && state.info.apps) || [];
  for (const sel of document.querySelectorAll(".app-select")) {
    const keep = sel.value;
    if (!apps.length) {
      if (sel.tagName === "INPUT") continue;
      sel.replaceWith(h("input", { id: sel.id, class: "app-select", type: "number", value: keep || "1400000001", required: true }));
      continue;
    }
    sel.replaceChildren(...apps.map((a) => h("option", { value: a.sdk_app_id }, `${a.sdk_app_id}${a.user_sig ? " (UserSig)" : ""}`)));
    if (keep && [...sel.options].some((o) => o.value === keep)) sel.value = keep;
  }
}

const appNeedsSig = (app) => !!((state.info && state.info.apps) || []).find((a) => String(a.sdk_app_id) === String(app) && a.user_sig);

/** A UserSig for `user` in `app`, or null when the app checks none. */
async function userSig(app, user) {
  const r = await fetch("/v1/console/usersig", {
    method: "POST",
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ sdk_app_id: Number(app), user_id: user }),
  });
  if (r.status === 404) return null;
  if (!r.ok) throw new HttpError(r.status, await errorText(r));
  return (await r.json()).user_sig;
}

// ---------------------------------------------------------------- publishing (WHIP)

let pubSeq = 0;

async function startPublication(form) {
  const { app, room, stringRoom, user, source, size } = form;
  const aux = source === "screen";
  if (state.publications.some((p) => p.app === app && p.room === room && p.user === user && p.aux === aux && !p.ended)) {
    throw new Error(`${user} already publishes its ${aux ? "aux" : "main"} stream into this room from this page`);
  }
  const p = { id: ++pubSeq, app, room, stringRoom, user, aux, state: "starting", pc: null, stream: null, location: null,
    ended: false, sent: null, stats: "" };
  state.publications.push(p);
  renderPublications();
  try {
    if (aux) {
      p.stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
    } else {
      const [w, hh] = size.split("x").map(Number);
      p.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: w, height: hh, frameRate: 15 } });
    }
    for (const t of p.stream.getTracks()) t.addEventListener("ended", () => stopPublication(p));
    const pc = new RTCPeerConnection();
    p.pc = pc;
    for (const track of p.stream.getTracks()) {
      const tr = pc.addTransceiver(track, { direction: "sendonly", streams: [p.stream] });
      if (track.kind === "video") {
        const h264 = RTCRtpSender.getCapabilities("video").codecs.filter(
          (c) => c.mimeType === "video/H264" && /packetization-mode=1/.test(c.sdpFmtpLine || ""));
        if (!h264.length) throw new Error("this browser cannot send H.264 (packetization-mode=1): kiroku records H.264 and Opus");
        tr.setCodecPreferences(h264);
      }
    }
    pc.addEventListener("connectionstatechange", () => {
      if (p.ended) return;
      p.state = pc.connectionState;
      if (["failed", "closed"].includes(pc.connectionState)) stopPublication(p, `connection ${pc.connectionState}`);
      renderPublications();
    });
    p.state = "offering";
    renderPublications();
    await pc.setLocalDescription(await pc.createOffer());
    // Non-trickle WHIP: wait briefly for the candidates to be in the offer.
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
      setTimeout(resolve, 2000);
    });
    const headers = { "Content-Type": "application/sdp" };
    const sig = appNeedsSig(app) ? await userSig(app, user) : null;
    if (sig) headers.Authorization = `Bearer ${sig}`;
    const path = `/whip/${encodeURIComponent(app)}/${encodeURIComponent(room)}/${encodeURIComponent(user)}${aux ? "/aux" : ""}` +
      (stringRoom ? "?roomType=string" : "");
    const resp = await fetch(path, { method: "POST", headers, body: pc.localDescription.sdp });
    if (resp.status !== 201) throw new HttpError(resp.status, (await resp.text()).trim() || "WHIP offer refused");
    p.location = new URL(resp.headers.get("Location"), resp.url).href;
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    if (p.ended) return p; // stopped while connecting
    p.state = pc.connectionState === "new" ? "connecting" : pc.connectionState;
    p.statsTimer = setInterval(() => publicationStats(p), 1000);
    renderPublications();
    pollNow("rooms");
    return p;
  } catch (e) {
    await stopPublication(p, e.message);
    throw e;
  }
}

async function publicationStats(p) {
  if (!p.pc || p.ended) return;
  const stats = await p.pc.getStats();
  let sent = 0, frames = 0, w = 0, hh = 0, fps = 0;
  stats.forEach((s) => {
    if (s.type === "outbound-rtp") {
      sent += s.bytesSent || 0;
      if (s.kind === "video") { frames = s.framesEncoded || 0; w = s.frameWidth || 0; hh = s.frameHeight || 0; fps = s.framesPerSecond || 0; }
    }
  });
  const now = performance.now();
  const br = p.sent ? ((sent - p.sent.bytes) * 8 * 1000) / (now - p.sent.t) : undefined;
  p.sent = { bytes: sent, t: now };
  p.stats = `sending ${bitrate(br)}${w ? ` · ${w}×${hh} @ ${fps || 0} fps · ${frames} frames` : ""}`;
  renderPublications();
}

async function stopPublication(p, why) {
  if (p.ended) return;
  p.ended = true;
  clearInterval(p.statsTimer);
  p.state = why ? `stopped: ${why}` : "stopped";
  if (p.location) {
    try { await fetch(p.location, { method: "DELETE" }); } catch { /* the box drops it after the ICE timeout */ }
  }
  if (p.pc) p.pc.close();
  if (p.stream) for (const t of p.stream.getTracks()) t.stop();
  state.publications = state.publications.filter((x) => x !== p);
  renderPublications();
  if (state.signedIn) pollNow("rooms");
}

function renderPublications() {
  const box = $("publications");
  const live = new Set(state.publications.map((p) => String(p.id)));
  for (const el of [...box.children]) if (!live.has(el.dataset.pub)) el.remove();
  for (const p of state.publications) {
    let card = box.querySelector(`[data-pub="${p.id}"]`);
    if (!card) {
      const video = h("video", { autoplay: true, muted: true, playsinline: true, class: "local-preview" });
      card = h("article", { class: "card publication", "data-pub": p.id, "data-user": p.user, "data-stream": p.aux ? "aux" : "main" },
        video,
        h("div", { class: "pub-body" },
          h("h2", null, `${p.user} `, h("span", { class: "badge" }, p.aux ? "aux · screen" : "main · camera + mic")),
          h("div", { class: "muted" }, `SdkAppId ${p.app} · room ${p.room}${p.stringRoom ? " (string)" : ""}`),
          h("div", null, "State: ", h("strong", { class: "pub-state" }, "")),
          h("div", { class: "muted pub-stats" }, ""),
          h("div", { class: "muted small pub-location" }, ""),
          h("button", { type: "button", class: "danger", "data-action": "stop-publication", "data-pub": p.id }, "Stop publishing")));
      video.muted = true;
      box.append(card);
    }
    const video = card.querySelector("video");
    if (p.stream && video.srcObject !== p.stream) video.srcObject = p.stream;
    card.querySelector(".pub-state").textContent = p.state;
    card.dataset.state = p.state;
    card.querySelector(".pub-stats").textContent = p.stats;
    card.querySelector(".pub-location").textContent = p.location ? "WHIP session open (stopping sends DELETE to its resource)" : "";
  }
}

// ---------------------------------------------------------------- layouts (the live preview)

/** Nearest even integer, halves upward (docs/mixing.md, "Pixels"). */
const even = (x) => 2 * Math.floor(x / 2 + 0.5);
function rectOf(x0, y0, x1, y1) {
  const X0 = even(x0), Y0 = even(y0);
  return { x: X0, y: Y0, w: even(x1) - X0, h: even(y1) - Y0 };
}
function gridDims(n) {
  if (n <= 1) return [1, 1];
  if (n === 2) return [2, 1];
  if (n <= 4) return [2, 2];
  if (n <= 9) return [3, 3];
  if (n <= 16) return [4, 4];
  return [5, 5];
}

/** Where each picture goes: a port of `mix::layout::place` for the preview.
 *  `users`: [{id, main, aux}] in join order. Returns tiles back to front:
 *  {x, y, w, h, user, big, empty, alpha}. */
function placeTiles(W, H, layout, users) {
  W -= W % 2; H -= H % 2;
  const mode = Number(layout.MixLayoutMode || 3);
  const participants = users.filter((u) => !(layout.PureAudioDisableLayout && mode !== 4 && !u.main && !u.aux && !u.example));
  const tiles = [];
  if (mode === 3) {
    const pics = participants.slice(0, 25);
    const [cols, rows] = gridDims(pics.length);
    pics.forEach((u, i) => {
      const c = i % cols, r = Math.floor(i / cols);
      tiles.push({ ...rectOf((c * W) / cols, (r * H) / rows, ((c + 1) * W) / cols, ((r + 1) * H) / rows), user: u.id });
    });
  } else if (mode === 1) {
    const pics = participants.slice(0, 25);
    if (!pics.length) return tiles;
    let bigIdx = pics.findIndex((u) => u.id === layout.MaxResolutionUserId);
    if (bigIdx < 0) bigIdx = 0;
    tiles.push({ ...rectOf(0, 0, W, H), user: pics[bigIdx].id, big: true });
    const small = pics.filter((_, i) => i !== bigIdx);
    const n = pics.length;
    const [f, gap, per] = n <= 17 ? [0.235, 0.012, 4] : [0.188, 0.01, 5];
    small.forEach((u, i) => {
      const col = i % per, row = Math.floor(i / per);
      const x0 = gap * W + col * (f + gap) * W;
      const y1 = H - gap * H - row * (f + gap) * H;
      tiles.push({ ...rectOf(x0, y1 - f * H, x0 + f * W, y1), user: u.id });
    });
  } else if (mode === 2) {
    const big = participants.find((u) => u.id && u.id === layout.MaxResolutionUserId) || null;
    const small = participants.filter((u) => u !== big).slice(0, 23);
    const n = small.length + 1;
    let cols = 1, rows = 4, sw = W / 5, sh = H / 4, bw = (4 * W) / 5, bh = H;
    if (n >= 6 && n <= 7) { rows = 6; sw = W / 7; sh = H / 6; bw = (6 * W) / 7; }
    else if (n >= 8 && n <= 9) { rows = 8; sw = W / 9; sh = H / 8; bw = (8 * W) / 9; }
    else if (n >= 10) { cols = 2; rows = 8; sw = W / 10; sh = H / 8; bw = (4 * W) / 5; bh = n >= 18 ? (7 * H) / 8 : H; }
    const mirror = Number(layout.MaxResolutionUserAlign) === 1;
    const flip = (t) => (mirror ? { ...t, x: W - t.x - t.w } : t);
    tiles.push(flip({ ...rectOf(0, 0, bw, bh), user: big ? big.id : null, big: true, empty: !big }));
    small.forEach((u, i) => {
      let t;
      if (i < cols * rows) {
        const col = Math.floor(i / rows), row = i % rows;
        t = rectOf(bw + col * sw, row * sh, bw + (col + 1) * sw, (row + 1) * sh);
      } else {
        const k = i - cols * rows;
        t = rectOf((k * W) / 10, (7 * H) / 8, ((k + 1) * W) / 10, H);
      }
      tiles.push(flip({ ...t, user: u.id }));
    });
  } else if (mode === 4) {
    const list = (layout.MixLayoutList || []).slice(0, 25);
    const named = new Set(list.map((t) => t.UserId).filter(Boolean));
    const free = participants.filter((u) => !named.has(u.id));
    const ids = new Set(participants.map((u) => u.id));
    list.forEach((t, i) => {
      const L = Number(t.Left) || 0, T = Number(t.Top) || 0;
      const x0 = Math.min(Math.max(L, 0), W), y0 = Math.min(Math.max(T, 0), H);
      const x1 = Math.min(Math.max(L + (Number(t.Width) || 0), 0), W), y1 = Math.min(Math.max(T + (Number(t.Height) || 0), 0), H);
      const user = t.UserId ? t.UserId : (free.shift() || {}).id || null;
      tiles.push({ ...rectOf(x0, y0, x1, y1), user, empty: !user || (t.UserId && !ids.has(t.UserId)),
        alpha: 1 - (Number(t.Alpha) || 0) / 255, layer: Number(t.ImageLayer) || 0, order: i });
    });
    tiles.sort((a, b) => a.layer - b.layer || a.order - b.order);
  }
  return tiles;
}

const HUES = [140, 210, 30, 280, 0, 180, 60, 320, 100, 240];
function drawLayout(canvas, W, H, layout, users) {
  const maxW = canvas.parentElement ? Math.max(200, Math.min(560, canvas.parentElement.clientWidth || 480)) : 480;
  const scale = Math.min(maxW / W, 360 / H);
  canvas.width = Math.max(1, Math.round(W * scale));
  canvas.height = Math.max(1, Math.round(H * scale));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = /^#[0-9a-fA-F]{6}$/.test(layout.BackGroundColor || "") ? layout.BackGroundColor : "#000000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const tiles = placeTiles(W, H, layout, users);
  const ids = users.map((u) => u.id);
  for (const t of tiles) {
    const x = t.x * scale, y = t.y * scale, w = t.w * scale, hh = t.h * scale;
    if (w <= 0 || hh <= 0) continue;
    const hue = HUES[Math.max(0, ids.indexOf(t.user)) % HUES.length];
    ctx.globalAlpha = t.alpha === undefined ? 1 : Math.max(0.15, t.alpha);
    if (t.empty) {
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = "#9aa4b2";
      ctx.strokeRect(x + 1, y + 1, w - 2, hh - 2);
      ctx.setLineDash([]);
    } else {
      ctx.fillStyle = `hsl(${hue} 55% ${t.big ? 38 : 48}%)`;
      ctx.fillRect(x, y, w, hh);
      ctx.strokeStyle = "rgba(255,255,255,0.85)";
      ctx.lineWidth = 1;
      ctx.strokeRect(x + 0.5, y + 0.5, w - 1, hh - 1);
    }
    ctx.globalAlpha = 1;
    ctx.fillStyle = t.empty ? "#c5ccd6" : "#ffffff";
    const fs = Math.max(9, Math.min(15, hh / 4, w / 7));
    ctx.font = `${fs}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    const label = t.empty && t.big && !t.user ? "big picture: background (no MaxResolutionUserId)" : (t.user || "(empty)");
    ctx.fillText(label, x + 4, y + 3, Math.max(0, w - 8));
    if (hh > fs * 2.4) ctx.fillText(`${t.w}×${t.h}`, x + 4, y + 5 + fs, Math.max(0, w - 8));
  }
  canvas.dataset.tiles = JSON.stringify(tiles.map((t) => ({ user: t.user, x: t.x, y: t.y, w: t.w, h: t.h, big: !!t.big, empty: !!t.empty })));
  return tiles;
}

/** A MixLayoutParams editor with its live preview, used by Create and Modify.
 *  `canvasSize()` → [W, H]; `users()` → live users in join order. */
function layoutEditor(root, prefix, { canvasSize, users }) {
  const id = (s) => `${prefix}-${s}`;
  root.replaceChildren(
    h("div", { class: "grid-form" },
      h("label", null, "MixLayoutMode ", h("select", { id: id("mode") },
        h("option", { value: "3" }, "3 nine-grid"), h("option", { value: "1" }, "1 floating"),
        h("option", { value: "2" }, "2 screen share"), h("option", { value: "4" }, "4 custom"))),
      h("label", null, "BackGroundColor ", h("input", { id: id("bg"), type: "color", value: "#000000" })),
      h("label", { "data-modes": "1 2" }, "MaxResolutionUserId ", h("input", { id: id("maxres"), list: id("users"), placeholder: "first user / background" })),
      h("label", { "data-modes": "1 2" }, "MediaId (big picture) ", h("select", { id: id("media") },
        h("option", { value: "0" }, "0 main"), h("option", { value: "1" }, "1 aux"))),
      h("label", { "data-modes": "2", class: "check" }, h("input", { id: id("align"), type: "checkbox" }), " MaxResolutionUserAlign (big picture right)"),
      h("label", { "data-modes": "1 2 3" }, "RenderMode ", h("select", { id: id("render") },
        h("option", { value: "" }, "default"), h("option", { value: "0" }, "0 stretch"), h("option", { value: "1" }, "1 crop"),
        h("option", { value: "2" }, "2 letterbox"), h("option", { value: "3" }, "3 smart stretch"))),
      h("label", { "data-modes": "1 2 3", class: "check" }, h("input", { id: id("pureaudio"), type: "checkbox" }), " PureAudioDisableLayout"),
      h("label", { class: "wide" }, "BackgroundImageUrl ", h("input", { id: id("bgimg"), placeholder: "https://…/background.png" })),
      h("datalist", { id: id("users") })),
    h("div", { "data-modes": "4", class: "custom-tiles" },
      h("table", { class: "tiles" },
        h("thead", null, h("tr", null, ["UserId", "Left", "Top", "Width", "Height", "ImageLayer", "Alpha", "RenderMode", "MediaId", ""].map((c) => h("th", null, c)))),
        h("tbody", { id: id("tiles") })),
      h("button", { type: "button", id: id("addtile") }, "Add tile"), " ",
      h("button", { type: "button", id: id("presettiles") }, "Side by side")),
    h("label", { class: "wide" }, "More MixLayoutParams (JSON, merged: WaterMarkList, PlaceHolderMode, …) ",
      h("textarea", { id: id("extra"), rows: 2, placeholder: '{"WaterMarkList": [...]}', spellcheck: "false" })),
    h("div", { class: "preview" },
      h("div", { class: "preview-head" }, h("strong", null, "Preview"), " ",
        h("span", { class: "muted", id: id("preview-note") }, ""), " ",
        h("label", { class: "inline" }, "users ", h("input", { id: id("n"), type: "number", min: 0, max: 25, placeholder: "live" }))),
      h("canvas", { id: id("canvas"), class: "layout-canvas", width: 480, height: 270 })));

  const el = (s) => $(id(s));
  const tileRow = (t = {}) => h("tr", null,
    ["UserId", "Left", "Top", "Width", "Height", "ImageLayer", "Alpha", "RenderMode", "MediaId"].map((k) =>
      h("td", null, h("input", { "data-field": k, value: t[k] ?? "", type: k === "UserId" ? "text" : "number", class: "tile-input", list: k === "UserId" ? id("users") : null }))),
    h("td", null, h("button", { type: "button", class: "link danger", "data-remove-tile": "1" }, "remove")));
  const addTile = (t) => el("tiles").append(tileRow(t));
  el("addtile").addEventListener("click", () => {
    const [W, H] = canvasSize();
    addTile({ Left: 0, Top: 0, Width: even(W / 2), Height: even(H / 2), ImageLayer: el("tiles").children.length, RenderMode: 1 });
    changed();
  });
  el("presettiles").addEventListener("click", () => {
    const [W, H] = canvasSize();
    el("tiles").replaceChildren();
    addTile({ Left: 0, Top: 0, Width: even(W / 2), Height: H, RenderMode: 1 });
    addTile({ Left: even(W / 2), Top: 0, Width: W - even(W / 2), Height: H, RenderMode: 1 });
    changed();
  });
  el("tiles").addEventListener("click", (e) => {
    if (e.target.closest("[data-remove-tile]")) { e.target.closest("tr").remove(); changed(); }
  });

  function value() {
    const mode = Number(el("mode").value);
    const v = { MixLayoutMode: mode };
    const bg = el("bg").value;
    if (bg && bg.toLowerCase() !== "#000000") v.BackGroundColor = bg.toUpperCase();
    if (mode === 1 || mode === 2) {
      if (el("maxres").value.trim()) { v.MaxResolutionUserId = el("maxres").value.trim(); v.MediaId = Number(el("media").value); }
    }
    if (mode === 2 && el("align").checked) v.MaxResolutionUserAlign = 1;
    if (mode !== 4 && el("render").value !== "") v.RenderMode = Number(el("render").value);
    if (mode !== 4 && el("pureaudio").checked) v.PureAudioDisableLayout = true;
    if (el("bgimg").value.trim()) v.BackgroundImageUrl = el("bgimg").value.trim();
    if (mode === 4) {
      v.MixLayoutList = [...el("tiles").children].map((tr) => {
        const t = {};
        for (const inp of tr.querySelectorAll("[data-field]")) {
          const k = inp.dataset.field, raw = inp.value.trim();
          if (raw === "") continue;
          t[k] = k === "UserId" ? raw : Number(raw);
        }
        return t;
      });
    }
    const extra = el("extra").value.trim();
    if (extra) {
      let parsed;
      try { parsed = JSON.parse(extra); } catch (e) { throw new Error(`More MixLayoutParams: not JSON (${e.message})`); }
      Object.assign(v, parsed);
    }
    return v;
  }

  function previewUsers() {
    const live = users();
    const n = el("n").value === "" ? null : Math.max(0, Math.min(25, Number(el("n").value)));
    const list = [...live];
    const want = n === null ? (live.length || 3) : n;
    for (let i = 1; list.length < want; i++) {
      const name = `user${i}`;
      if (!list.some((u) => u.id === name)) list.push({ id: name, main: true, aux: false, example: true });
    }
    const note = live.length
      ? `${live.length} user(s) in the room now, in join order${n !== null && n !== live.length ? `; showing ${list.slice(0, want).length}` : ""}`
      : `no one in this room yet: ${want} example user(s)`;
    return { users: list.slice(0, want), note };
  }

  function draw() {
    const mode = el("mode").value;
    for (const n of root.querySelectorAll("[data-modes]")) n.hidden = !n.dataset.modes.split(" ").includes(mode);
    const live = users();
    morph(el("users"), live.map((u) => h("option", { value: u.id })));
    const [W, H] = canvasSize();
    const { users: list, note } = previewUsers();
    let layout;
    try { layout = value(); } catch { layout = { MixLayoutMode: Number(mode) }; }
    const tiles = drawLayout(el("canvas"), W, H, layout, list);
    el("preview-note").textContent = `${W}×${H} · ${tiles.filter((t) => !t.empty).length} tile(s) · ${note}`;
  }

  let onChange = () => {};
  function changed() { draw(); onChange(); }
  root.addEventListener("input", changed);
  root.addEventListener("change", changed);
  return {
    value, draw,
    set onchange(fn) { onChange = fn; },
    setMode(m) { el("mode").value = String(m); changed(); },
    mode: () => Number(el("mode").value),
  };
}

/** The four subscription lists (comma- or space-separated UserIds). */
function subsEditor(root, prefix) {
  const fields = ["SubscribeAudioUserIds", "UnSubscribeAudioUserIds", "SubscribeVideoUserIds", "UnSubscribeVideoUserIds"];
  root.replaceChildren(h("div", { class: "grid-form" }, fields.map((f) =>
    h("label", null, f, " ", h("input", { id: `${prefix}-${f}`, placeholder: f.startsWith("Un") ? "none" : "all", "data-sub": f })))),
  h("small", { class: "muted" }, "UserIds separated by commas; a prefix pattern is written like 1.*$. Empty lists: everyone (allow-lists) or no one (deny-lists)."));
  return {
    value() {
      const v = {};
      for (const f of fields) {
        const ids = $(`${prefix}-${f}`).value.split(/[\s,]+/).filter(Boolean);
        if (ids.length) v[f] = ids;
      }
      return v;
    },
  };
}

// ---------------------------------------------------------------- Create

let createLayout, createSubs, modifyLayout, modifySubs;
let botAuto = true;

function formRoom() {
  return { app: $("c-app").value, room: $("c-room").value.trim(), stringRoom: $("c-room-type").value === "0" };
}

function numberField(id) {
  const v = $(id).value.trim();
  if (v === "") return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : v; // a non-number goes as typed: the API names the field
}

function storageKind() { return document.querySelector('input[name="storage"]:checked').value; }

function createBody() {
  const mode = Number($("c-mode").value);
  const { app, room, stringRoom } = formRoom();
  const rp = {
    RecordMode: mode,
    MaxIdleTime: numberField("c-idle"),
    StreamType: Number($("c-stream").value),
  };
  const storage = storageKind();
  if (storage !== "vod") rp.OutputFormat = Number($("c-format").value);
  if (mode === 1 && $("c-avmerge").value !== "0") rp.AvMerge = Number($("c-avmerge").value);
  if ($("c-media").value !== "0") rp.MediaId = Number($("c-media").value);
  if ($("c-fill").value !== "0") rp.FillType = Number($("c-fill").value);
  if (numberField("c-maxdur") !== undefined) rp.MaxMediaFileDuration = numberField("c-maxdur");
  const subs = createSubs.value();
  if (Object.keys(subs).length) rp.SubscribeStreamUserIds = subs;
  for (const k of Object.keys(rp)) if (rp[k] === undefined) delete rp[k];
  const body = {
    SdkAppId: Number(app),
    RoomId: room,
    RoomIdType: stringRoom ? 0 : 1,
    UserId: $("c-user").value.trim(),
    UserSig: $("c-sig").value,
    RecordParams: rp,
  };
  if (numberField("c-expire") !== undefined) body.ResourceExpiredHour = numberField("c-expire");
  if (mode === 2) {
    body.MixTranscodeParams = {
      VideoParams: { Width: numberField("c-w"), Height: numberField("c-h"), Fps: numberField("c-fps"), BitRate: numberField("c-vbr"), Gop: numberField("c-gop") },
      AudioParams: { SampleRate: Number($("c-sr").value), Channel: Number($("c-ch").value), BitRate: numberField("c-abr") },
    };
    body.MixLayoutParams = createLayout.value();
  }
  if (storage === "s3") {
    const cs = {
      Vendor: Number($("s3-vendor").value), Region: $("s3-region").value.trim(), Bucket: $("s3-bucket").value.trim(),
      AccessKey: $("s3-ak").value.trim(), SecretKey: $("s3-sk").value,
    };
    const prefix = $("s3-prefix").value.split(/[\s,/]+/).filter(Boolean);
    if (prefix.length) cs.FileNamePrefix = prefix;
    body.StorageParams = { CloudStorage: cs };
  } else if (storage === "vod") {
    const tv = { MediaType: Number($("vod-media").value) };
    if (numberField("vod-expire") !== undefined) tv.ExpireTime = numberField("vod-expire");
    for (const [k, f] of [["UserDefineRecordId", "vod-udrid"], ["SourceContext", "vod-srcctx"], ["SessionContext", "vod-sessctx"], ["Procedure", "vod-proc"]]) {
      if ($(f).value.trim()) tv[k] = $(f).value.trim();
    }
    body.StorageParams = { CloudVod: { TencentVod: tv } };
  }
  return body;
}

function renderCreate() {
  const mixed = $("c-mode").value === "2";
  for (const n of document.querySelectorAll("#create-form [data-mixed]")) n.hidden = !mixed;
  for (const n of document.querySelectorAll("#create-form [data-single]")) n.hidden = mixed;
  const storage = storageKind();
  for (const n of document.querySelectorAll("#create-form [data-storage]")) n.hidden = n.dataset.storage !== storage;
  $("c-format").disabled = storage === "vod";
  let text;
  try {
    const b = createBody();
    if (b.UserSig) b.UserSig = b.UserSig.length > 12 ? `${b.UserSig.slice(0, 8)}…` : b.UserSig;
    if (b.StorageParams && b.StorageParams.CloudStorage && b.StorageParams.CloudStorage.SecretKey) b.StorageParams.CloudStorage.SecretKey = "•••";
    text = JSON.stringify(b, null, 2);
  } catch (e) { text = e.message; }
  $("c-json").textContent = text;
  if (mixed && createLayout) createLayout.draw();
}

let sigSeq = 0;
async function syncBotAndSig() {
  const { app, room } = formRoom();
  if (botAuto) $("c-user").value = `recorder_${room.replace(/[^A-Za-z0-9_-]/g, "").slice(0, 22) || "bot"}`;
  const user = $("c-user").value.trim();
  const seq = ++sigSeq;
  if (!appNeedsSig(app)) {
    if (!$("c-sig").value || $("c-sig").dataset.auto === "1") { $("c-sig").value = "console"; $("c-sig").dataset.auto = "1"; }
    $("c-sig-hint").textContent = "This app checks no UserSig (no user_sig_key): any non-empty value.";
    renderCreate();
    return;
  }
  $("c-sig-hint").textContent = "Minting a UserSig…";
  try {
    const sig = user ? await userSig(app, user) : null;
    if (seq !== sigSeq) return;
    if (sig) {
      $("c-sig").value = sig;
      $("c-sig").dataset.auto = "1";
      $("c-sig-hint").textContent = `Minted for ${user} from the app's user_sig_key (valid 24 h).`;
    } else {
      $("c-sig-hint").textContent = "This app checks no UserSig: any non-empty value.";
    }
  } catch (e) {
    if (seq === sigSeq) $("c-sig-hint").textContent = `No UserSig: ${e.message}`;
  }
  renderCreate();
}

async function submitCreate() {
  showError($("c-error"), null);
  $("c-result").textContent = "";
  let body;
  try { body = createBody(); } catch (e) { showError($("c-error"), e); return; }
  $("c-submit").disabled = true;
  try {
    const resp = await tc("CreateCloudRecording", body);
    if (body.MixTranscodeParams) rememberCanvas(resp.TaskId, body.MixTranscodeParams.VideoParams);
    $("c-result").replaceChildren("Started task ", h("code", { id: "c-task-id" }, resp.TaskId), " ",
      h("button", { type: "button", class: "link", "data-action": "goto-tab", "data-tab-target": "tasks" }, "see it in Tasks"));
    pollNow("tasks");
  } catch (e) {
    showError($("c-error"), e);
  } finally {
    $("c-submit").disabled = false;
  }
}

/** Modify's preview draws on the task's canvas when this browser created
 *  the task (the API does not say a task's canvas); else 640×360. */
const CANVAS_KEY = "kiroku.console.canvas";
function rememberCanvas(taskId, v) {
  const all = JSON.parse(sessionStorage.getItem(CANVAS_KEY) || "{}");
  all[taskId] = [Number(v.Width) || 640, Number(v.Height) || 360];
  sessionStorage.setItem(CANVAS_KEY, JSON.stringify(all));
}
function canvasOf(task) {
  const all = JSON.parse(sessionStorage.getItem(CANVAS_KEY) || "{}");
  return (task && all[task.task_id]) || [640, 360];
}

function drawPreviews() {
  if (createLayout && $("c-mode").value === "2") createLayout.draw();
  if (modifyLayout && !$("modify-panel").hidden) modifyLayout.draw();
}

// ---------------------------------------------------------------- tasks

async function pollTasks() {
  const body = await getJson("/v1/tasks");
  state.tasks = body.tasks || [];
  renderTasks();
}

function renderTasks() {
  const tasks = state.tasks;
  const live = tasks.filter((t) => t.status !== "ended").length;
  $("tasks-summary").textContent = `${live} live, ${tasks.length - live} ended (the newest 100)`;
  if (state.confirmStop && state.confirmStop.until < Date.now()) state.confirmStop = null;
  if (!tasks.length) {
    morph($("tasks"), [h("p", { class: "empty", "data-key": "empty" }, "No tasks yet: start one in the Record tab.")]);
    return;
  }
  morph($("tasks"), [h("table", { class: "tasks", "data-key": "table" },
    h("thead", null, h("tr", null, ["Task", "Room", "Mode", "Status", "Storage", "Started", "Ended", "Files", "Callbacks", ""].map((c) => h("th", null, c)))),
    h("tbody", null, tasks.map(taskRow)))]);
}

/** A single-stream file's user and stream, from its name (spec §3a:
 *  `…__UserId_s_<base64 with / → - and = → .>__UserId_e_<main|aux>[_<audio|video>]…`);
 *  other names as they are. The full name is the button's tooltip. */
function fileLabel(name) {
  const m = /__UserId_s_([A-Za-z0-9+\-.]+)__UserId_e_([a-z]+)(?:_([a-z]+))?/.exec(name);
  if (!m) return name;
  try {
    const bin = atob(m[1].replace(/-/g, "/").replace(/\./g, "="));
    const user = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
    return `${user} · ${m[2]}${m[3] ? " " + m[3] : ""}`;
  } catch {
    return name;
  }
}

function taskRow(t) {
  const ended = t.status === "ended";
  const confirming = state.confirmStop && state.confirmStop.taskId === t.task_id;
  const files = t.files || [];
  return h("tr", { "data-key": t.task_id, "data-task": t.task_id, "data-status": t.status, class: `task ${t.status}` },
    h("td", { class: "mono", title: t.task_id }, t.task_id.slice(0, 8), h("span", { class: "muted" }, "…")),
    h("td", null, h("div", null, String(t.room_id)), h("div", { class: "muted small" }, t.sdk_app_id)),
    h("td", null, t.mode),
    h("td", null, h("span", { class: `badge status-${t.status}` }, t.status.replace("_", " ")),
      t.restarts ? h("div", { class: "muted small" }, `${t.restarts} restart(s)`) : null),
    h("td", null, t.storage),
    h("td", { class: "small" }, dateTime(t.created_at_ms)),
    h("td", { class: "small" }, t.ended_at_ms ? [clock(t.ended_at_ms), h("div", { class: "muted" }, duration((t.ended_at_ms - t.created_at_ms) / 1000))]
      : h("span", { class: "muted" }, `running ${duration((Date.now() - t.created_at_ms) / 1000)}`)),
    h("td", { class: "files" }, files.length ? files.map((f) => f.url
      ? h("button", { type: "button", class: "file", "data-action": "play", "data-url": f.url, "data-kind": f.kind, "data-name": f.name,
        "data-task": t.task_id, title: f.name }, h("span", { class: `badge kind-${f.kind}` }, f.kind), " ", fileLabel(f.name))
      : h("div", { class: "file muted", title: `${f.name}: in the bucket, not playable from here` }, h("span", { class: "badge" }, f.kind), " ", fileLabel(f.name)))
      : h("span", { class: "muted" }, t.storage === "vod" && !ended ? "VOD files appear when the task ends" : "none yet")),
    h("td", { class: "callbacks" }, (t.callbacks || []).map((c) =>
      h("span", { class: `cb cb-${c.state}`, "data-event": c.event_type, "data-state": c.state,
        title: `${c.event_type} ${CALLBACKS[c.event_type] || ""}: ${c.state}, ${c.attempts} attempt(s), ${dateTime(c.at_ms)}` },
      String(c.event_type), c.state === "delivered" ? " ✓" : c.state === "given_up" ? " ✗" : " …"))),
    h("td", { class: "actions" }, ended ? null : [
      h("button", { type: "button", "data-action": "describe", "data-task": t.task_id, "data-app": t.sdk_app_id }, "Describe"),
      h("button", { type: "button", "data-action": "modify", "data-task": t.task_id }, "Modify"),
      h("button", { type: "button", class: `danger${confirming ? " confirming" : ""}`, "data-action": "stop-task", "data-task": t.task_id, "data-app": t.sdk_app_id },
        confirming ? "Confirm stop" : "Stop"),
    ]));
}

async function stopTask(taskId, app) {
  if (!state.confirmStop || state.confirmStop.taskId !== taskId || state.confirmStop.until < Date.now()) {
    state.confirmStop = { taskId, until: Date.now() + 5000 };
    renderTasks();
    setTimeout(renderTasks, 5100);
    return;
  }
  state.confirmStop = null;
  showError($("task-error"), null);
  try {
    await tc("DeleteCloudRecording", { SdkAppId: Number(app), TaskId: taskId });
    if (state.modifyTask && state.modifyTask.task_id === taskId) show($("modify-panel"), false);
  } catch (e) {
    showError($("task-error"), e);
  }
  pollNow("tasks");
}

async function describeTask(taskId, app) {
  showError($("task-error"), null);
  try {
    const resp = await tc("DescribeCloudRecording", { SdkAppId: Number(app), TaskId: taskId });
    $("describe-json").textContent = JSON.stringify(resp, null, 2);
    show($("describe-panel"));
  } catch (e) {
    showError($("task-error"), e);
  }
}

function openModify(taskId) {
  const t = state.tasks.find((x) => x.task_id === taskId);
  if (!t) return;
  state.modifyTask = t;
  $("m-task").textContent = t.task_id;
  const mixed = t.mode === "mixed";
  $("m-do-layout").checked = mixed;
  $("m-do-layout").disabled = !mixed;
  $("m-layout").hidden = !mixed;
  $("m-do-subs").checked = !mixed;
  showError($("m-error"), null);
  $("m-result").textContent = mixed ? "" : "Single-stream task: only its subscriptions can change.";
  show($("modify-panel"));
  modifyLayout.draw();
  $("modify-panel").scrollIntoView({ block: "nearest" });
}

async function submitModify() {
  const t = state.modifyTask;
  showError($("m-error"), null);
  $("m-result").textContent = "";
  const body = { SdkAppId: Number(t.sdk_app_id), TaskId: t.task_id };
  try {
    if ($("m-do-layout").checked) body.MixLayoutParams = modifyLayout.value();
    if ($("m-do-subs").checked) body.SubscribeStreamUserIds = modifySubs.value();
  } catch (e) { showError($("m-error"), e); return; }
  if (!body.MixLayoutParams && !body.SubscribeStreamUserIds) {
    showError($("m-error"), new Error("Tick what to replace: the layout, the subscriptions, or both."));
    return;
  }
  $("m-submit").disabled = true;
  try {
    const resp = await tc("ModifyCloudRecording", body);
    $("m-result").textContent = `Modified ${resp.TaskId} at ${clock(Date.now())} (RequestId ${resp.RequestId}).`;
  } catch (e) {
    showError($("m-error"), e);
  } finally {
    $("m-submit").disabled = false;
  }
}

// ---------------------------------------------------------------- player

let hls = null;
let hlsLoading = null;
let playerLive = false; // playing a playlist that is still being written

function loadHls() {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!hlsLoading) {
    hlsLoading = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = "/console/hls.min.js";
      s.onload = () => (window.Hls ? resolve(window.Hls) : reject(new Error("hls.js did not load")));
      s.onerror = () => { hlsLoading = null; reject(new Error("hls.js could not be loaded")); };
      document.head.append(s);
    });
  }
  return hlsLoading;
}

function stopPlayer() {
  if (hls) { hls.destroy(); hls = null; }
  for (const m of [$("player-video"), $("player-audio")]) {
    m.pause();
    m.removeAttribute("src");
    m.load();
    m.hidden = true;
  }
  show($("player-panel"), false);
}

async function startMedia(m) {
  try { await m.play(); } catch (e) {
    if (e.name === "NotAllowedError") { m.muted = true; try { await m.play(); } catch { /* the controls remain */ } }
  }
}

async function play({ url, kind, name, task }) {
  stopPlayer();
  const video = $("player-video"), audio = $("player-audio");
  const t = state.tasks.find((x) => x.task_id === task);
  const live = t && t.status !== "ended" && kind === "hls";
  show($("player-panel"));
  showError($("player-error"), null);
  $("player-title").textContent = name;
  $("player-panel").dataset.kind = kind;
  $("player-panel").dataset.url = url;
  playerLive = live;
  $("player-state").textContent = live ? "live playlist (recording in progress)" : "";
  if (kind === "aac") {
    audio.hidden = false;
    audio.src = url;
    await startMedia(audio);
  } else if (kind === "hls") {
    video.hidden = false;
    let Hls = null;
    try { Hls = await loadHls(); } catch (e) { console.warn(e); }
    if (Hls && Hls.isSupported()) {
      hls = new Hls({ liveSyncDurationCount: 2, enableWorker: true, manifestLoadingMaxRetry: 4, levelLoadingMaxRetry: 6 });
      let mediaRecoveries = 0;
      hls.on(Hls.Events.LEVEL_LOADED, (_, data) => { playerLive = !!data.details.live; });
      hls.on(Hls.Events.ERROR, (_, data) => {
        if (!data.fatal) return;
        if (data.type === Hls.ErrorTypes.NETWORK_ERROR && data.response && data.response.code === 401) {
          showError($("player-error"), new HttpError(401, "the session cookie was refused: sign in again"));
        } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR && mediaRecoveries++ < 3) {
          hls.recoverMediaError();
          return;
        } else {
          showError($("player-error"), new Error(`hls.js: ${data.type} ${data.details}`));
        }
      });
      hls.on(Hls.Events.MANIFEST_PARSED, () => startMedia(video));
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url; // the browser's own HLS player
      await startMedia(video);
    } else {
      showError($("player-error"), new Error("this browser can play HLS neither with hls.js (no MediaSource) nor natively"));
    }
  } else {
    video.hidden = false;
    video.src = url;
    await startMedia(video);
  }
  $("player-panel").scrollIntoView({ block: "nearest" });
}

function mediaState(m) {
  if (m.hidden) return;
  const d = Number.isFinite(m.duration) ? ` / ${m.duration.toFixed(1)} s` : "";
  $("player-state").textContent = playerLive
    ? `live playlist (recording in progress): hls.js follows it · ${m.currentTime.toFixed(1)} s`
    : `${m.currentTime.toFixed(1)} s${d}`;
}

function mediaError(m) {
  if (!m.error || m.hidden) return;
  showError($("player-error"), new Error(`the ${m.tagName.toLowerCase()} element cannot play this file (media error ${m.error.code}${m.error.message ? ": " + m.error.message : ""})`));
}

// ---------------------------------------------------------------- wiring

const actions = {
  "sign-out": () => signOut(),
  "record-room": (el) => {
    $("c-app").value = el.dataset.app;
    $("c-room").value = el.dataset.room;
    $("c-room-type").value = el.dataset.type;
    syncBotAndSig();
    selectTab("record");
  },
  "end-session": async (el) => {
    try { await operatorFetch(`/v1/sessions/${encodeURIComponent(el.dataset.session)}`, { method: "DELETE" }); showError($("rooms-error"), null); }
    catch (e) { showError($("rooms-error"), e); }
    pollNow("rooms");
  },
  "stop-publication": (el) => {
    const p = state.publications.find((x) => String(x.id) === el.dataset.pub);
    if (p) stopPublication(p);
  },
  "goto-tab": (el) => selectTab(el.dataset.tabTarget),
  play: (el) => play({ url: el.dataset.url, kind: el.dataset.kind, name: el.dataset.name, task: el.dataset.task })
    .catch((e) => showError($("player-error"), e)),
  "player-close": () => stopPlayer(),
  "stop-task": (el) => stopTask(el.dataset.task, el.dataset.app),
  describe: (el) => describeTask(el.dataset.task, el.dataset.app),
  "describe-close": () => show($("describe-panel"), false),
  modify: (el) => openModify(el.dataset.task),
  "modify-close": () => { show($("modify-panel"), false); state.modifyTask = null; },
};

function wire() {
  document.addEventListener("click", (e) => {
    const tab = e.target.closest("#tabs [data-tab]");
    if (tab) { selectTab(tab.dataset.tab); return; }
    const el = e.target.closest("[data-action]");
    if (el && actions[el.dataset.action]) { e.preventDefault(); actions[el.dataset.action](el, e); }
  });
  window.addEventListener("hashchange", () => state.signedIn && selectTab(location.hash.slice(1)));
  // Leaving the page ends its publications at once (else the box drops them
  // only when their ICE consent fails, seconds later).
  window.addEventListener("pagehide", () => {
    for (const p of state.publications) {
      if (p.location && !p.ended) fetch(p.location, { method: "DELETE", keepalive: true }).catch(() => {});
    }
  });

  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("signin-token").value.trim();
    $("signin-submit").disabled = true;
    showError($("signin-error"), null);
    try { await signIn(token); } catch (err) { showError($("signin-error"), err); } finally { $("signin-submit").disabled = false; }
  });

  $("publish-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError($("pub-error"), null);
    const user = $("pub-user").value.trim();
    if (!/^[A-Za-z0-9_-]{1,32}$/.test(user)) { showError($("pub-error"), new Error("UserId: 1–32 of A–Z a–z 0–9 _ -")); return; }
    $("pub-start").disabled = true;
    try {
      await startPublication({ app: $("pub-app").value, room: $("pub-room").value.trim(), stringRoom: $("pub-room-type").value === "string",
        user, source: $("pub-source").value, size: $("pub-size").value });
    } catch (err) { showError($("pub-error"), err); } finally { $("pub-start").disabled = false; }
  });
  $("pub-source").addEventListener("change", () => { $("pub-size").disabled = $("pub-source").value === "screen"; });
  const pubHint = () => { $("pub-hint").textContent = appNeedsSig($("pub-app").value) ? "this app needs UserSigs: the console mints one" : ""; };
  $("publish-form").addEventListener("change", (e) => e.target.id === "pub-app" && pubHint());

  createLayout = layoutEditor($("c-layout"), "cl", {
    canvasSize: () => [Number($("c-w").value) || 0, Number($("c-h").value) || 0],
    users: () => { const r = formRoom(); return roomUsers(r.app, r.room, r.stringRoom); },
  });
  createLayout.onchange = renderCreate;
  createSubs = subsEditor($("c-subs"), "cs");
  modifyLayout = layoutEditor($("m-layout"), "ml", {
    canvasSize: () => canvasOf(state.modifyTask),
    users: () => {
      const t = state.modifyTask;
      return t ? roomUsers(t.sdk_app_id, t.room_id, /^\d+$/.test(String(t.room_id)) ? null : true) : [];
    },
  });
  modifySubs = subsEditor($("m-subs"), "ms");
  $("m-do-layout").addEventListener("change", () => { $("m-layout").hidden = !$("m-do-layout").checked; });

  const form = $("create-form");
  form.addEventListener("input", (e) => {
    if (e.target.id === "c-user") botAuto = false;
    if (e.target.id === "c-sig") $("c-sig").dataset.auto = "0";
    if (["c-app", "c-room", "c-user"].includes(e.target.id)) { syncBotAndSig(); return; }
    renderCreate();
  });
  form.addEventListener("change", (e) => {
    if (["c-app", "c-room-type"].includes(e.target.id)) { syncBotAndSig(); return; }
    renderCreate();
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); submitCreate(); });
  $("modify-form").addEventListener("submit", (e) => { e.preventDefault(); submitModify(); });

  for (const m of [$("player-video"), $("player-audio")]) {
    m.addEventListener("timeupdate", () => mediaState(m));
    m.addEventListener("error", () => mediaError(m));
  }
}

async function boot() {
  wire();
  if (state.token) {
    try { await enter(); return; } catch { /* the token no longer opens a session */ }
  }
  signedOut("");
}

boot();
