// Drives kiroku's web console (/console) in Debian's Chromium with fake media
// devices, as a person would: sign in (a wrong token first), publish the fake
// camera, watch the room, start a mixed recording from the form (a refused
// Create first), play it live with hls.js, change its layout, stop it, play
// the finished MP4, sign out. tests/e2e/test_console.py starts kiroku, runs
// this and checks what it reports independently (ffprobe, callbacks, PNGs).
//
//   node console.mjs <config.json>
// config: {url, token, app, room, user, out, chromium, second: {bin, user}}
// `second`: a solid red `kiroku publish` joins the room after the camera, so
// that the layouts are told apart by colour (grid: camera left, red right;
// floating: the camera fills the canvas, red small at the bottom left).
// Writes <out>/result.json and <out>/*.png; exits 1 on the first failure
// (result.json then has "failed" and the page's console log).

import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import { chromium } from "playwright-core";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = cfg.out;
fs.mkdirSync(out, { recursive: true });
const t0 = Date.now();
const result = { steps: [], console: [], screenshots: {} };
const save = () => fs.writeFileSync(path.join(out, "result.json"), JSON.stringify(result, null, 2));

function step(name, extra = {}) {
  const s = { name, at_s: (Date.now() - t0) / 1000, ...extra };
  result.steps.push(s);
  console.log(`[${s.at_s.toFixed(1)} s] ${name}${Object.keys(extra).length ? " " + JSON.stringify(extra) : ""}`);
  save();
}

async function until(what, fn, timeoutMs = 15000, everyMs = 200) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms: ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const browser = await chromium.launch({
  executablePath: cfg.chromium || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
  ],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, deviceScaleFactor: 1 });
const page = await context.newPage();
page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
page.on("response", (r) => { if (r.status() >= 400) result.console.push(`http ${r.status()}: ${r.request().method()} ${r.url()}`); });

async function shot(name, locator, opts = {}) {
  const file = path.join(out, `${name}.png`);
  if (locator) await locator.screenshot({ path: file, ...opts });
  else {
    // From the top, so that the sticky header is where a person sees it.
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: file, ...opts });
  }
  result.screenshots[name] = file;
}

/** The mean RGB of a <video>'s current picture over a rectangle given in
 *  fractions of the picture (drawn onto a canvas: the media is same-origin). */
async function videoMean(selector, rect = [0, 0, 1, 1]) {
  return page.evaluate(([sel, [fx, fy, fw, fh]]) => {
    const v = document.querySelector(sel);
    const w = v.videoWidth, h = v.videoHeight;
    if (!w || !h) return null;
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const ctx = c.getContext("2d");
    ctx.drawImage(v, 0, 0, w, h);
    const x = Math.floor(fx * w), y = Math.floor(fy * h), rw = Math.max(1, Math.floor(fw * w)), rh = Math.max(1, Math.floor(fh * h));
    const d = ctx.getImageData(x, y, rw, rh).data;
    let r = 0, g = 0, b = 0, n = 0, lo = 255, hi = 0;
    for (let i = 0; i < d.length; i += 4) {
      r += d[i]; g += d[i + 1]; b += d[i + 2]; n++;
      const l = (d[i] + d[i + 1] + d[i + 2]) / 3;
      if (l < lo) lo = l;
      if (l > hi) hi = l;
    }
    return { width: w, height: h, r: r / n, g: g / n, b: b / n, min_luma: lo, max_luma: hi };
  }, [selector, rect]);
}

let second = null; // the `kiroku publish` child
const mediaTime = (sel) => page.evaluate((s) => { const m = document.querySelector(s); return m ? { t: m.currentTime, d: m.duration, ready: m.readyState, paused: m.paused } : null; }, sel);

const GREEN = (m) => m && m.g > 90 && m.g > 2 * m.r + 10 && m.g > 2 * m.b + 10;
const RED = (m) => m && m.r > 120 && m.r > 2 * m.g + 10 && m.r > 2 * m.b + 10;
// Regions of a 320×240 mixed picture (fractions), inside the tiles' edges.
const REGIONS = {
  left: [0.06, 0.1, 0.36, 0.8], // grid: the first user's tile is the left half
  right: [0.56, 0.1, 0.38, 0.5], // grid: the second user's; floating: the big picture
  smallBottomLeft: [0.03, 0.78, 0.2, 0.17], // floating: the second user, small
};
async function layoutColours(sel) {
  const out = {};
  for (const [k, r] of Object.entries(REGIONS)) out[k] = await videoMean(sel, r);
  return out;
}
const isGrid = (c) => GREEN(c.left) && RED(c.right);
const isFloat = (c) => GREEN(c.right) && RED(c.smallBottomLeft);

/** Waits until the <video> plays: its currentTime advances by `advance` s. */
async function playing(sel, advance, timeoutMs) {
  const first = await until(`${sel} to start`, async () => { const m = await mediaTime(sel); return m && m.t > 0.2 ? m : null; }, timeoutMs, 250);
  const later = await until(`${sel} to advance ${advance} s`, async () => {
    const m = await mediaTime(sel);
    return m && m.t - first.t >= advance ? m : null;
  }, timeoutMs, 250);
  return { from: first.t, to: later.t, duration: later.d };
}

try {
  // -- sign in: a wrong token is refused with the box's message ----------------
  await page.goto(`${cfg.url}/console`);
  await page.locator("#signin").waitFor({ state: "visible" });
  await page.fill("#signin-token", "not-the-admin-token");
  await page.click("#signin-submit");
  const signinError = page.locator("#signin-error");
  await signinError.waitFor({ state: "visible" });
  result.signin_error = (await signinError.innerText()).trim();
  step("wrong token refused", { message: result.signin_error });
  await shot("signin-error", page.locator("#signin"));
  await page.fill("#signin-token", cfg.token);
  await page.click("#signin-submit");
  await page.locator("#tabs").waitFor({ state: "visible" });
  await page.locator("#load-figures .figure").first().waitFor();
  result.node_info = await page.locator("#node-info").innerText();
  step("signed in", { node: result.node_info });

  // -- publish the fake camera from the console ----------------------------------
  await page.click('#tabs [data-tab="publish"]');
  await page.selectOption("#pub-app", String(cfg.app));
  await page.fill("#pub-room", String(cfg.room));
  await page.fill("#pub-user", cfg.user);
  await page.selectOption("#pub-size", "640x360");
  await page.click("#pub-start");
  const pub = page.locator(`.publication[data-user="${cfg.user}"]`);
  await until("the publication to connect", async () => (await pub.getAttribute("data-state")) === "connected", 20000);
  step("publishing", { state: await pub.locator(".pub-state").innerText() });
  await until("send statistics", async () => /kbit|Mbit/.test(await pub.locator(".pub-stats").innerText()), 5000);
  await shot("publish", null, { fullPage: true });
  if (cfg.second) {
    second = spawn(cfg.second.bin, ["publish", "--url", cfg.url, "--sdk-app-id", String(cfg.app), "--room", String(cfg.room),
      "--user", cfg.second.user, "--pattern", "solid", "--color", "#ff0000", "--width", "320", "--height", "240",
      "--no-audio", "--duration", String(cfg.second.duration || 60)], { stdio: "ignore" });
  }

  // -- the rooms view shows the user and tracks, refreshed every second ------------
  await page.click('#tabs [data-tab="rooms"]');
  const video = page.locator(`tr[data-user="${cfg.user}"][data-kind="main_video"]`);
  const audio = page.locator(`tr[data-user="${cfg.user}"][data-kind="audio"]`);
  const seen = await until("the camera track with frame rate and bitrate", async () => {
    if (!(await video.count()) || !(await audio.count())) return null;
    const fps = Number(await video.locator("td.fps").getAttribute("data-value"));
    const br = Number(await video.locator("td.bitrate").getAttribute("data-value"));
    const abr = Number(await audio.locator("td.bitrate").getAttribute("data-value"));
    return fps > 0 && br > 0 && abr > 0 ? { fps, bitrate: br, audio_bitrate: abr } : null;
  }, 20000, 300);
  const frames1 = Number(await video.locator("td.frames").innerText());
  await page.waitForTimeout(1600);
  const frames2 = Number(await video.locator("td.frames").innerText());
  result.rooms = {
    ...seen,
    frames_before: frames1, frames_after: frames2,
    codec: await video.locator("td.codec").innerText(),
    audio_codec: await audio.locator("td.codec").innerText(),
    resolution: await video.locator("td.res").innerText(),
    fps_text: await video.locator("td.fps").innerText(),
    bitrate_text: await video.locator("td.bitrate").innerText(),
    users: await page.locator("#rooms tr[data-user] td.user strong").allInnerTexts(),
  };
  if (cfg.second) {
    result.rooms.users = await until("the second user in the room", async () => {
      const users = await page.locator("#rooms tr[data-user] td.user strong").allInnerTexts();
      return users.length === 2 ? users : null;
    }, 15000);
  }
  step("room shows the tracks", result.rooms);
  await shot("rooms", null, { fullPage: true });

  // -- a Create the API refuses shows Tencent's Code and Message -------------------
  await page.locator(`.room[data-room="${cfg.room}"] [data-action="record-room"]`).click();
  await page.locator("#view-record").waitFor({ state: "visible" });
  await page.fill("#c-idle", "1");
  await page.click("#c-submit");
  await page.locator("#c-error").waitFor({ state: "visible" });
  result.create_error = {
    code: (await page.locator("#c-error .code").innerText()).trim(),
    message: (await page.locator("#c-error .message").innerText()).trim(),
  };
  step("refused Create shown", result.create_error);
  await shot("create-error", page.locator("#c-error"));

  // -- a mixed recording from the form, with its live layout preview --------------
  await page.fill("#c-idle", "30");
  await page.selectOption("#c-mode", "2");
  await page.selectOption("#c-format", "1");
  await page.fill("#c-w", "320");
  await page.fill("#c-h", "240");
  await page.fill("#c-fps", "15");
  await page.fill("#c-vbr", "300000");
  await page.fill("#c-gop", "2");
  await page.selectOption("#cl-mode", "3");
  const tiles = async () => JSON.parse((await page.locator("#cl-canvas").getAttribute("data-tiles")) || "[]");
  const nUsers = cfg.second ? 2 : 1;
  result.preview = { grid: await until("the preview's tiles of the room's users", async () => { const t = await tiles(); return t.length === nUsers && t[0].user === cfg.user ? t : null; }, 5000) };
  await page.fill("#cl-n", "5");
  result.preview.grid5 = await tiles();
  await page.selectOption("#cl-mode", "1");
  result.preview.float5 = await tiles();
  await page.selectOption("#cl-mode", "2");
  await page.fill("#cl-maxres", cfg.user);
  result.preview.screen5 = await tiles();
  await shot("record-form", null, { fullPage: true });
  await page.fill("#cl-maxres", "");
  await page.fill("#cl-n", "");
  await page.selectOption("#cl-mode", "3");
  result.create_body = JSON.parse(await page.evaluate(() => {
    document.querySelector("#create-form details").open = true;
    return document.getElementById("c-json").textContent;
  }));
  await page.click("#c-submit");
  await page.locator("#c-task-id").waitFor({ timeout: 10000 });
  const taskId = (await page.locator("#c-task-id").innerText()).trim();
  result.task_id = taskId;
  step("recording started", { task: taskId, error_box_hidden: await page.locator("#c-error").isHidden() });

  // -- the task, its live playlist in hls.js --------------------------------------
  await page.click('#tabs [data-tab="tasks"]');
  const row = page.locator(`tr[data-task="${taskId}"]`);
  const hlsButton = row.locator('button.file[data-kind="hls"]').first();
  await until("the task in progress with its playlist", async () =>
    (await row.getAttribute("data-status")) === "in_progress" && (await hlsButton.count()) > 0, 30000, 300);
  step("task in progress");
  // Two segments at least, so that hls.js has something to play.
  await page.waitForTimeout(2500);
  await hlsButton.click();
  const livePlay = await playing("#player-video", 1.5, 30000);
  result.live = { ...livePlay, state: await page.locator("#player-state").innerText(),
    hls_loaded: await page.evaluate(() => typeof window.Hls === "function" && window.Hls.version) };
  result.live.mean = await videoMean("#player-video");
  if (cfg.second) {
    result.live.grid = await until("the grid in the live picture (camera left, red right)", async () => {
      const c = await layoutColours("#player-video");
      return isGrid(c) ? c : null;
    }, 15000, 300);
  }
  step("live playlist plays", result.live);
  await shot("live-player", page.locator("#player-video"));
  await shot("tasks-live", null, { fullPage: true });

  // -- Modify: switch the layout ----------------------------------------------------
  await row.locator('[data-action="modify"]').click();
  await page.locator("#modify-panel").waitFor({ state: "visible" });
  await page.selectOption("#ml-mode", "1");
  await page.fill("#ml-n", "3");
  await page.click("#m-submit");
  await until("the Modify answer", async () => /^Modified /.test(await page.locator("#m-result").innerText()) ||
    (await page.locator("#m-error").isVisible()), 10000);
  result.modify = { result: await page.locator("#m-result").innerText(), error_visible: await page.locator("#m-error").isVisible() };
  step("layout modified", result.modify);
  if (cfg.second) {
    const at = Date.now();
    result.modify.float = await until("the floating layout in the live picture", async () => {
      const c = await layoutColours("#player-video");
      return isFloat(c) ? c : null;
    }, 30000, 300);
    result.modify.seen_after_s = (Date.now() - at) / 1000;
    result.modify.live_time = (await mediaTime("#player-video")).t;
    step("the new layout plays live", { after_s: result.modify.seen_after_s });
    await shot("live-player-float", page.locator("#player-video"));
  }
  await shot("modify", null, { fullPage: true });
  await page.click('[data-action="modify-close"]');

  // -- stop the task, then the publisher -------------------------------------------
  await row.locator('[data-action="stop-task"]').click();
  await row.locator('[data-action="stop-task"].confirming').click();
  await until("the task to end", async () => (await row.getAttribute("data-status")) === "ended", 30000, 300);
  step("task ended");
  const mp4Button = row.locator('button.file[data-kind="mp4"]').first();
  await until("the MP4 and callback 305 delivered", async () => (await mp4Button.count()) > 0 &&
    (await row.locator('.cb[data-event="305"][data-state="delivered"]').count()) > 0, 30000, 300);
  result.callbacks_listed = await row.locator(".cb").evaluateAll((els) => els.map((e) => ({ event: Number(e.dataset.event), state: e.dataset.state })));
  step("callbacks listed", { callbacks: result.callbacks_listed });

  await page.click('#tabs [data-tab="publish"]');
  await pub.locator('[data-action="stop-publication"]').click();
  await until("the publication to go", async () => (await pub.count()) === 0, 10000);
  await page.click('#tabs [data-tab="rooms"]');
  await until("the user to leave the room", async () => (await page.locator(`tr[data-user="${cfg.user}"]`).count()) === 0, 10000);
  step("publisher stopped, user left");

  // -- play the finished recording: the MP4 in <video> --------------------------------
  await page.click('#tabs [data-tab="tasks"]');
  await mp4Button.click();
  const mp4 = await playing("#player-video", 1.0, 20000);
  result.mp4 = { ...mp4, mean: await videoMean("#player-video"), src: await page.locator("#player-panel").getAttribute("data-url") };
  if (cfg.second) {
    // The file holds both layouts: the grid first, floating at the end.
    const seek = (t) => page.evaluate((t) => new Promise((resolve) => {
      const v = document.getElementById("player-video");
      v.pause();
      v.addEventListener("seeked", () => resolve(v.currentTime), { once: true });
      v.currentTime = t;
    }), t);
    // One picture a second: which layout each shows.
    result.mp4.timeline = [];
    for (let t = 0.5; t < mp4.duration - 0.2; t += 1.0) {
      await seek(t);
      const c = await layoutColours("#player-video");
      result.mp4.timeline.push(isGrid(c) ? "grid" : isFloat(c) ? "float" : GREEN(c.left) && GREEN(c.right) ? "camera" : "other");
    }
    const tl = result.mp4.timeline;
    result.mp4.layouts = { grid_then_float: tl.includes("grid") && tl.lastIndexOf("grid") < tl.indexOf("float"), float_last: tl[tl.length - 1] === "float" };
    await seek(1.0);
  }
  step("mp4 plays", result.mp4);
  await shot("mp4-player", page.locator("#player-video"));
  await page.evaluate(() => document.getElementById("player-video").pause());
  await shot("tasks", null, { fullPage: true });
  await shot("status", page.locator("#load"));
  result.status_text = await page.locator("#load-figures").innerText();

  // -- sign out --------------------------------------------------------------------------
  await page.click("#sign-out");
  await page.locator("#signin").waitFor({ state: "visible" });
  result.signed_out = await page.evaluate(async () => (await fetch("/v1/tasks")).status);
  step("signed out", { tasks_status_after: result.signed_out });
  result.ok = true;
} catch (e) {
  result.failed = String(e && e.stack ? e.stack : e);
  try { await page.screenshot({ path: path.join(out, "failure.png"), fullPage: true }); result.screenshots.failure = path.join(out, "failure.png"); } catch { /* */ }
  console.error(result.failed);
} finally {
  if (second && second.exitCode === null) second.kill("SIGTERM");
  result.elapsed_s = (Date.now() - t0) / 1000;
  save();
  await browser.close();
}
process.exit(result.ok ? 0 : 1);
