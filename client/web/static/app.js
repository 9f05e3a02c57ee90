// Spatia World web player: lobby (worlds, recordings), play / watch (WebRTC with a WebSocket + JPEG fallback),
// replay with seek. Plain JS, no build step. State lives in window.spatia (the browser tests read it).
"use strict";

const $ = (id) => document.getElementById(id);
const S = window.spatia = {
  mode: null,            // "play" | "watch" | "replay"
  world: null, rec: null,
  transport: null,       // "webrtc" | "ws" (in use)
  ws: null, pc: null, dc: null,
  seq: 0, sent: new Map(), reflectedSeq: 0,  // action seq -> performance.now() when sent
  keys: new Set(), mouseDx: 0, mouseDy: 0, dragging: false, lastX: 0, lastY: 0,
  shownTimes: [], latencies: [], framesShown: 0,
  // what the page can count (benchmarks/web.py): frames that arrived (WebSocket frames; WebRTC frame metadata on the
  // data channel, repeats not counted), requestVideoFrameCallback calls and the video's presentedFrames counter
  framesArrived: 0, rvfcCalls: 0, presentedFrames: 0,
  // where a shown frame's time went, ms (benchmarks/web.py): got_ms (the web app had it from the server) ->
  // out_ms (handed to the VP8 encoder after pacing) -> received (its last RTP packet) -> presented; WebSocket:
  // got -> drawn. Wall clocks of one machine: meaningful when the web app and the browser share it.
  stages: [],
  // when a live view's start got where (ms after Play / Watch was clicked; benchmarks/web.py): WebRTC's offer
  // gathered, the web app's answer back, connected; the first frame shown (either transport)
  phases: {}, startedAt: 0,
  shownMeta: null, metaByPts: new Map(), rtpOrigin: null, shownRtp: [], pendingRtp: [], rtpMisses: 0, rtpRelearned: 0,
  firstPose: null, viewers: 0, memoryPoints: 0, recording: "", playing: false,
  fps: 30, wanted: "auto", record: true, closing: false, retries: 0, lastError: "",
  replayFrames: 0, replayPos: 0, replayPaused: false,
  history: [],           // indices of the frames shown, oldest first (bounded)
  tickTimer: null, mapTimer: null, hudTimer: null, hudDrawn: 0, decodeBusy: false, pendingFrame: null,
};

const LOOK_RATE = Math.PI / 2;        // rad/s, arrow keys and a full right stick (client/keymap.py)
const MOUSE_RAD_PER_PX = 0.003;
const DEADZONE = 0.15;

async function api(path, opts = {}) {
  const resp = await fetch(path, Object.assign({credentials: "same-origin"}, opts));
  let body = null;
  try { body = await resp.json(); } catch (e) { body = {}; }
  if (!resp.ok) throw new Error(body.error || `${resp.status} ${resp.statusText}`);
  return body;
}

function show(id, on) { $(id).hidden = !on; }
function note(text) { $("note").textContent = text; }

// ---- lobby ------------------------------------------------------------------------------------------------

async function boot() {
  const cfg = await api("/api/config");
  $("server").textContent = cfg.server;
  if (cfg.auth_required && !cfg.logged_in) { show("login", true); show("lobby", false); return; }
  show("login", false); show("lobby", true);
  await refreshLobby();
}

async function refreshLobby() {
  try {
    const {worlds} = await api("/api/worlds");
    const tb = $("worlds").querySelector("tbody");
    tb.innerHTML = "";
    for (const w of worlds) {
      const tr = document.createElement("tr");
      tr.dataset.world = w.world_id;
      const state = w.playing_here ? `playing, ${w.viewers} watching` : (w.controlled ? "in use" : "");
      tr.innerHTML = `<td>${esc(w.world_id)}</td><td>${esc(w.source)}</td><td>${w.width}x${w.height}</td>` +
        `<td>${w.memory_points}</td><td>${esc(state)}</td><td></td>`;
      const cell = tr.lastChild;
      cell.append(button("Play", () => startLive(w.world_id, "play"), "play-" + w.world_id));
      cell.append(" ", button("Watch", () => startLive(w.world_id, "watch"), "watch-" + w.world_id));
      tb.append(tr);
    }
    const {recordings} = await api("/api/recordings");
    const rb = $("recordings").querySelector("tbody");
    rb.innerHTML = "";
    for (const r of recordings) {
      const tr = document.createElement("tr");
      tr.innerHTML = `<td>${esc(r.recording_id)}</td><td>${esc(r.world_id)}</td><td>${r.frames}</td>` +
        `<td>${r.duration_s.toFixed(1)}</td><td></td>`;
      tr.lastChild.append(button("Replay", () => startReplay(r.recording_id, r.frames), "replay-" + r.recording_id));
      rb.append(tr);
    }
    $("lobby-error").textContent = "";
  } catch (e) { $("lobby-error").textContent = e.message; }
}

function button(label, fn, id) {
  const b = document.createElement("button");
  b.textContent = label; b.type = "button"; if (id) b.id = id;
  b.addEventListener("click", fn);
  return b;
}

function esc(s) { return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
                             body: JSON.stringify({token: $("token").value})});
    $("token").value = "";
    $("login-error").textContent = "";
    await boot();
  } catch (e) { $("login-error").textContent = e.message; }
});

$("create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("/api/worlds", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({
      scene: $("scene").value, seed: +$("seed").value, width: +$("width").value, height: +$("height").value})});
    await refreshLobby();
  } catch (e) { $("lobby-error").textContent = e.message; }
});

$("photo-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = $("photo").files[0];
  if (!f) { $("lobby-error").textContent = "choose a photo first"; return; }
  const form = new FormData(); form.append("photo", f);
  try { await api("/api/worlds", {method: "POST", body: form}); await refreshLobby(); }
  catch (e) { $("lobby-error").textContent = e.message; }
});

// ---- the viewer ---------------------------------------------------------------------------------------------

function resetViewer(mode) {
  Object.assign(S, {mode, history: [], seq: 0, reflectedSeq: 0, shownTimes: [], latencies: [], framesShown: 0, shownMeta: null,
                    framesArrived: 0, rvfcCalls: 0, presentedFrames: 0, stages: [],
                    rtpOrigin: null, shownRtp: [], pendingRtp: [], rtpMisses: 0, firstPose: null, closing: false, retries: 0, lastError: ""});
  S.sent.clear(); S.metaByPts.clear(); S.keys.clear();
  show("lobby", false); show("viewer", true);
  show("play-controls", mode === "play"); show("replay-controls", mode === "replay");
  $("video").hidden = true; $("canvas").hidden = false;
  $("stage").focus();
}

function startLive(worldId, role) {
  S.world = worldId; S.fps = Math.max(1, Math.min(60, +$("fps").value || 30));
  S.wanted = $("transport").value; S.record = $("record").checked;
  resetViewer(role);
  S.phases = {}; S.startedAt = performance.now();
  connect();
  clearInterval(S.tickTimer); S.tickTimer = setInterval(tick, 1000 / S.fps);
  clearInterval(S.mapTimer); S.mapTimer = setInterval(() => { refreshMinimap(); drawHud(); }, 1000); refreshMinimap();
}

function refreshMinimap() {
  if (!S.world || S.mode === "replay") return;
  const img = new Image();
  img.onload = () => { $("minimap").src = img.src; };
  img.src = `/api/worlds/${encodeURIComponent(S.world)}/minimap.png?size=192&t=${Date.now()}`;
}

async function connect() {
  const tryRtc = S.wanted !== "ws" && typeof RTCPeerConnection !== "undefined";
  if (tryRtc) {
    try { await connectRtc(); return; }
    catch (e) {
      S.lastError = "WebRTC: " + e.message;
      if (S.wanted === "webrtc") { note(S.lastError); scheduleReconnect(); return; }
    }
  }
  connectWs();
}

function scheduleReconnect() {
  if (S.closing) return;
  const delay = Math.min(1000 * 2 ** S.retries, 8000);
  S.retries += 1;
  note(`connection lost, reconnecting in ${(delay / 1000).toFixed(0)} s`);
  setTimeout(() => { if (!S.closing) connect(); }, delay);
}

function liveQuery() {
  return `world=${encodeURIComponent(S.world)}&role=${S.mode}&fps=${S.fps}&record=${S.record ? 1 : 0}`;
}

function connectWs() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws/play?${liveQuery()}`);
  ws.binaryType = "arraybuffer";
  S.ws = ws; S.transport = "ws";
  $("video").hidden = true; $("canvas").hidden = false;
  ws.onopen = () => { S.retries = 0; note("WebSocket stream"); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onControlMessage(JSON.parse(ev.data));
    else onJpegFrame(ev.data);
  };
  ws.onclose = () => { if (S.ws === ws) { S.ws = null; scheduleReconnect(); } };
}

function parseFrame(buf) {
  const n = new DataView(buf).getUint32(0);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  return [meta, new Blob([new Uint8Array(buf, 4 + n)], {type: "image/jpeg"})];
}

function onJpegFrame(buf) {
  S.framesArrived += 1;
  // latest wins: while one frame decodes, a newer one replaces the one waiting
  S.pendingFrame = buf;
  if (!S.decodeBusy) drawPending();
}

async function drawPending() {
  S.decodeBusy = true;
  while (S.pendingFrame) {
    const buf = S.pendingFrame; S.pendingFrame = null;
    const [meta, blob] = parseFrame(buf);
    try {
      const bmp = await createImageBitmap(blob);
      const c = $("canvas");
      if (c.width !== bmp.width || c.height !== bmp.height) { c.width = bmp.width; c.height = bmp.height; }
      c.getContext("2d").drawImage(bmp, 0, 0);
      bmp.close();
      onFrameShown(meta, {drawn: epochMs(performance.now())});
    } catch (e) { S.lastError = "decode: " + e.message; }
  }
  S.decodeBusy = false;
}

async function connectRtc() {
  const pc = new RTCPeerConnection({iceServers: []});
  const dc = pc.createDataChannel("control", {ordered: true});
  pc.addTransceiver("video", {direction: "recvonly"});
  S.pc = pc; S.dc = dc;
  dc.onmessage = (ev) => onControlMessage(JSON.parse(ev.data));
  const video = $("video");
  pc.ontrack = (ev) => { video.srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // non-trickle: send the offer with its candidates
    if (pc.iceGatheringState === "complete") return resolve();
    const t = setTimeout(resolve, 2000);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(t); resolve(); }
    });
  });
  S.phases.gathered_ms = performance.now() - S.startedAt;
  const resp = await fetch("/api/rtc/offer", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type, world: S.world,
                          role: S.mode, fps: S.fps, record: S.record ? 1 : 0})});
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) { pc.close(); S.pc = null; throw new Error(body.error || `offer refused (${resp.status})`); }
  await pc.setRemoteDescription(body);
  S.phases.answered_ms = performance.now() - S.startedAt;
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no WebRTC connection within 5 s")), 5000);
    const check = () => {
      if (pc.connectionState === "connected") { clearTimeout(t); resolve(); }
      else if (pc.connectionState === "failed") { clearTimeout(t); reject(new Error("WebRTC connection failed")); }
    };
    pc.addEventListener("connectionstatechange", check); check();
  }).catch((e) => { pc.close(); S.pc = null; throw e; });
  S.transport = "webrtc"; S.retries = 0;
  S.phases.connected_ms = performance.now() - S.startedAt;
  video.hidden = false; $("canvas").hidden = true;
  note("WebRTC stream");
  pc.addEventListener("connectionstatechange", () => {
    if (S.pc === pc && ["failed", "closed", "disconnected"].includes(pc.connectionState)) {
      S.pc = null; S.dc = null; pc.close(); scheduleReconnect();
    }
  });
  const onVideoFrame = (now, md) => {
    if (S.pc !== pc) return;
    S.rvfcCalls += 1; S.presentedFrames = md.presentedFrames;
    if (md.rtpTimestamp !== undefined) {
      onRtpShown(md.rtpTimestamp, {received: md.receiveTime !== undefined ? epochMs(md.receiveTime) : undefined,
                                   presented: epochMs(md.presentationTime)});
    }
    video.requestVideoFrameCallback(onVideoFrame);
  };
  video.requestVideoFrameCallback(onVideoFrame);
  const expiry = setInterval(() => { if (S.pc === pc) expirePendingRtp(performance.now()); else clearInterval(expiry); }, 500);
  video.play().catch(() => {});
}

// A frame's RTP timestamp is origin + pts (mod 2^32): the pts the data channel announced with its metadata, the
// origin random per sender (RFC 3550) and not told by aiortc's public API. The page learns it from the last 16
// frames it was shown (``shownRtp``): each candidate origin (a shown frame's RTP timestamp minus an announced pts)
// scores the shown frames it maps onto an announced pts; the server keeps consecutive pts gaps distinct
// (client/web/rtc.py), so the true origin is the one best candidate once two shown frames have their metadata.
// Until then a frame is shown when every best candidate maps it to the same picture (copies of one picture: a
// world entered standing still). Metadata can arrive after its frame was shown (the data channel lags under
// load): such frames wait in ``pendingRtp`` for it (1 s); three that never map in a row mean a wrong origin,
// which is learned again at once from the same window (the stream may have gone quiet: no later frame would).
function learnRtpOrigin() {
  const score = new Map();
  for (const r of S.shownRtp) {
    for (const p of S.metaByPts.keys()) { const o = (r - p) >>> 0; score.set(o, (score.get(o) || 0) + 1); }
  }
  let best = 0, found = null, ties = 0;
  for (const [o, n] of score) {
    if (n > best) { best = n; found = o; ties = 1; } else if (n === best) ties += 1;
  }
  const latest = S.shownRtp[S.shownRtp.length - 1];
  if (best >= 2 && ties === 1) {
    S.rtpOrigin = found; S.rtpMisses = 0; S.pendingRtp = [];
    return S.metaByPts.get((latest - found) >>> 0) || null;
  }
  if (best === 0) return null;
  let meta = null;
  for (const [o, n] of score) {
    if (n !== best) continue;
    const m = S.metaByPts.get((latest - o) >>> 0);
    if (!m) continue;
    if (meta && m.index !== meta.index) return null;
    meta = meta || m;
  }
  return meta;
}

// Frames that never mapped (1 s) count as misses; three in a row mean a wrong origin, learned again at once from
// the window. Also run from a timer: a stream that went quiet after a wrong origin gets no later frame to do it.
function expirePendingRtp(now) {
  while (S.rtpOrigin !== null && S.pendingRtp.length && now - S.pendingRtp[0].t > 1000) {
    S.pendingRtp.shift();
    if (++S.rtpMisses >= 3) { S.rtpOrigin = null; S.rtpMisses = 0; S.rtpRelearned += 1; S.pendingRtp = []; }
  }
  if (S.rtpOrigin === null && S.shownRtp.length) {
    const meta = learnRtpOrigin();
    if (meta && (!S.shownMeta || meta.index !== S.shownMeta.index)) onFrameShown(meta);
    return true;
  }
  return false;
}

function epochMs(t) { return performance.timeOrigin + t; }  // a performance.now() time -> ms since 1970

function onRtpShown(rtp, times) {
  if (!S.shownRtp.includes(rtp)) S.shownRtp.push(rtp);
  if (S.shownRtp.length > 16) S.shownRtp.shift();
  const now = performance.now();
  if (expirePendingRtp(now)) return;
  const meta = S.metaByPts.get((rtp - S.rtpOrigin) >>> 0);
  if (meta) { S.rtpMisses = 0; onFrameShown(meta, times); }
  else { S.pendingRtp.push({rtp, t: now, times}); if (S.pendingRtp.length > 32) S.pendingRtp.shift(); }
}

function onMetaArrived(m) {
  if (S.rtpOrigin === null) {
    if (S.shownRtp.length) {
      const meta = learnRtpOrigin();
      if (meta && (!S.shownMeta || meta.index !== S.shownMeta.index)) onFrameShown(meta);
    }
    return;
  }
  const i = S.pendingRtp.findIndex((x) => ((x.rtp - S.rtpOrigin) >>> 0) === m.pts);
  if (i < 0) return;
  const times = S.pendingRtp[i].times;
  S.pendingRtp.splice(i, 1); S.rtpMisses = 0;
  if (!S.shownMeta || m.session_frame === undefined || m.session_frame >= S.shownMeta.session_frame) onFrameShown(m, times);
}

function onControlMessage(m) {
  if (m.t === "frame" || m.t === "still") {
    if (S.transport === "webrtc" && m.pts !== undefined) {
      if (!m.repeat) S.framesArrived += 1;
      S.metaByPts.set(m.pts, m);
      if (S.metaByPts.size > 256) S.metaByPts.delete(S.metaByPts.keys().next().value);
      onMetaArrived(m);
    }
    S.viewers = m.viewers; S.memoryPoints = m.memory_points; S.recording = m.recording;
  } else if (m.t === "status") {
    S.viewers = m.viewers; S.playing = m.playing; S.recording = m.recording;
    if (m.memory_points) S.memoryPoints = m.memory_points;
    if (S.mode) drawHud();
  } else if (m.t === "error") {
    S.lastError = m.message; note(m.message);
    if (m.code) S.closing = true;  // refused on connect (e.g. someone else plays this world): do not retry
  } else if (m.t === "note") {
    note(m.message);
  }
}

function onFrameShown(meta, times) {
  const now = performance.now();
  if (meta.repeat && S.shownMeta && S.shownMeta.index === meta.index) return;  // the same picture again (rtc.py)
  if (times && meta.got_ms && !meta.repeat) {
    const st = {index: meta.index};
    if (times.drawn !== undefined) st.total_ms = times.drawn - meta.got_ms;
    else {
      st.total_ms = times.presented - meta.got_ms;
      if (meta.out_ms) { st.wait_ms = meta.out_ms - meta.got_ms; st.paced_ms = meta.paced_ms; }
      if (meta.out_ms && times.received !== undefined) st.wire_ms = times.received - meta.out_ms;
      if (meta.encoded_ms && times.received !== undefined) {  // of it: converted + encoded, then sent + received
        st.encode_ms = meta.encoded_ms - meta.out_ms; st.net_ms = times.received - meta.encoded_ms;
      }
      if (times.received !== undefined) st.show_ms = times.presented - times.received;
    }
    // the newest action this frame reflects: page -> web app (up), web app -> its gRPC write returned (fwd),
    // written -> the web app had the frame (server: waiting for and generating the clip, both gRPC hops)
    const sentAt = S.sent.get(meta.seq);
    if (meta.act_rx_ms && sentAt !== undefined && meta.seq > S.reflectedSeq) {
      st.up_ms = meta.act_rx_ms - epochMs(sentAt);
      st.fwd_ms = meta.act_fwd_ms - meta.act_rx_ms;
      st.server_ms = meta.got_ms - meta.act_fwd_ms;
      if (meta.server_time_ns) {  // of it: written -> the server made the frame (gen), server -> web app (down)
        st.gen_ms = meta.server_time_ns / 1e6 - meta.act_fwd_ms;
        st.down_ms = meta.got_ms - meta.server_time_ns / 1e6;
      }
      st.newest_ms = now - sentAt;  // sent -> shown of this action (benchmarks/web.py compares the gRPC client's)
    }
    S.stages.push(st); if (S.stages.length > 4000) S.stages.splice(0, 2000);
  }
  if (S.phases.first_frame_ms === undefined && S.mode !== "replay") S.phases.first_frame_ms = now - S.startedAt;
  S.shownMeta = meta; S.framesShown += 1;
  S.history.push(meta.index); if (S.history.length > 2000) S.history.splice(0, 1000);
  S.shownTimes.push(now);
  while (S.shownTimes.length && now - S.shownTimes[0] > 2000) S.shownTimes.shift();
  if (!S.firstPose) S.firstPose = meta.pose;
  // key -> frame latency: each action is measured to the first shown frame whose pose reflects it
  if (meta.seq > S.reflectedSeq) {
    for (let s = S.reflectedSeq + 1; s <= meta.seq; s++) {
      const t = S.sent.get(s);
      if (t !== undefined) { S.latencies.push(now - t); S.sent.delete(s); }
    }
    S.reflectedSeq = meta.seq;
    if (S.latencies.length > 4000) S.latencies.splice(0, 2000);
  }
  if (meta.viewers !== undefined) S.viewers = meta.viewers;
  if (meta.memory_points) S.memoryPoints = meta.memory_points;
  if (S.mode === "replay" && meta.replay_frame !== undefined) {
    S.replayPos = meta.replay_frame; $("seek").value = meta.replay_frame;
    $("replay-pos").textContent = `${meta.replay_frame + 1} / ${S.replayFrames}`;
  }
  scheduleHud();
}

// The HUD's text is redrawn at most HUD_HZ times a second, not on every frame: each redraw is a style, layout and
// paint of the overlay on top of the video (software-composited in headless Chromium, on the cores the engine
// needs), and nobody reads a number changing 30 times a second.
const HUD_HZ = 5;
function scheduleHud() {
  if (S.hudTimer) return;
  const wait = Math.max(0, (S.hudDrawn || 0) + 1000 / HUD_HZ - performance.now());
  S.hudTimer = setTimeout(() => { S.hudTimer = null; S.hudDrawn = performance.now(); if (S.mode) drawHud(); }, wait);
}

function percentile(xs, p) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))];
}

function drawHud() {
  const now = performance.now();
  while (S.shownTimes.length && now - S.shownTimes[0] > 2000) S.shownTimes.shift();
  const n = S.shownTimes.length;
  const fps = n > 1 ? (n - 1) / ((S.shownTimes[n - 1] - S.shownTimes[0]) / 1000) : 0;
  const m = S.shownMeta;
  const lines = [`${S.mode}  ${S.mode === "replay" ? S.rec : S.world}  via ${S.transport || "-"}`,
                 `fps ${fps.toFixed(1)}`];
  if (S.mode === "play") {
    const recent = S.latencies.slice(-60);
    lines.push(`action->frame ${recent.length ? percentile(recent, 50).toFixed(0) + " ms" : "-"}`);
  }
  if (m && m.pose) {
    const p = m.pose, f = S.firstPose;
    // heading: angle of the camera's forward (column z) from the first camera's level forward, > 0 = right
    const up = [-f[1], -f[5], -f[9]];
    const fwd0 = [f[2], f[6], f[10]];
    const d = fwd0[0] * up[0] + fwd0[1] * up[1] + fwd0[2] * up[2];
    const lf = [fwd0[0] - d * up[0], fwd0[1] - d * up[1], fwd0[2] - d * up[2]];
    const right = [lf[1] * up[2] - lf[2] * up[1], lf[2] * up[0] - lf[0] * up[2], lf[0] * up[1] - lf[1] * up[0]];
    const c = [p[2], p[6], p[10]];
    const heading = Math.atan2(c[0] * right[0] + c[1] * right[1] + c[2] * right[2],
                               c[0] * lf[0] + c[1] * lf[1] + c[2] * lf[2]) * 180 / Math.PI;
    lines.push(`pos ${p[3].toFixed(2)} ${p[7].toFixed(2)} ${p[11].toFixed(2)} m  heading ${heading.toFixed(0)} deg`
               + (m.collided ? "  BLOCKED" : ""));
    lines.push(`frame ${m.index}`);
  }
  if (S.mode !== "replay") {
    lines.push(`memory ${S.memoryPoints} points`);
    lines.push(`${S.recording ? "REC " + S.recording : "not recording"}  viewers ${S.viewers}`);
  }
  $("hud").textContent = lines.join("\n");
}

// ---- input ------------------------------------------------------------------------------------------------

const MOVE_KEYS = new Set(["KeyW", "KeyA", "KeyS", "KeyD", "Space", "KeyC", "ShiftLeft", "ShiftRight",
                           "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "KeyE", "KeyQ"]);

document.addEventListener("keydown", (ev) => {
  if (!S.mode || ev.target.tagName === "INPUT") return;
  if (S.mode === "replay") { replayKey(ev); return; }
  if (MOVE_KEYS.has(ev.code)) { S.keys.add(ev.code); ev.preventDefault(); return; }
  if (ev.code === "KeyX" && S.mode === "play") editInFront();
  else if (ev.code === "KeyT" && S.mode === "play") { ev.preventDefault(); $("prompt").focus(); }
  else if (ev.code === "KeyP") screenshot();
});
document.addEventListener("keyup", (ev) => { S.keys.delete(ev.code); });
window.addEventListener("blur", () => S.keys.clear());

$("stage").addEventListener("click", () => {
  if (S.mode === "play" && $("stage").requestPointerLock) {
    try { const p = $("stage").requestPointerLock(); if (p && p.catch) p.catch(() => {}); } catch (e) { /* none */ }
  }
});
document.addEventListener("mousemove", (ev) => {
  if (S.mode !== "play") return;
  if (document.pointerLockElement === $("stage")) {
    S.mouseDx += ev.movementX; S.mouseDy += ev.movementY;
  } else if (S.dragging) {  // no pointer lock (e.g. headless): drag with a button held looks around
    S.mouseDx += ev.clientX - S.lastX; S.mouseDy += ev.clientY - S.lastY;
    S.lastX = ev.clientX; S.lastY = ev.clientY;
  }
});
$("stage").addEventListener("mousedown", (ev) => { S.dragging = true; S.lastX = ev.clientX; S.lastY = ev.clientY; });
document.addEventListener("mouseup", () => { S.dragging = false; });

function gamepadAxes() {
  const pads = navigator.getGamepads ? navigator.getGamepads() : [];
  for (const pad of pads || []) {
    if (!pad || !pad.axes) continue;
    const dz = (v) => (Math.abs(v) < DEADZONE ? 0 : Math.max(-1, Math.min(1, v)));
    const a = pad.axes;  // standard mapping: left stick 0/1, right stick 2/3 (pushed up = negative)
    const b = (i) => !!(pad.buttons && pad.buttons[i] && pad.buttons[i].pressed);
    return {mx: dz(a[0] || 0), my: dz(a[1] || 0), lx: dz(a[2] || 0), ly: dz(a[3] || 0),
            up: b(0), down: b(1), sprint: b(10)};
  }
  return null;
}

function tick() {
  if (S.mode !== "play") return;
  const k = (c) => S.keys.has(c);
  const axis = (p, n) => (p ? 1 : 0) - (n ? 1 : 0);
  const g = gamepadAxes() || {mx: 0, my: 0, lx: 0, ly: 0, up: false, down: false, sprint: false};
  const dt = 1 / S.fps;
  const clamp = (v) => Math.max(-1, Math.min(1, v));
  const act = {
    move_forward: clamp(axis(k("KeyW"), k("KeyS")) - g.my),
    move_right: clamp(axis(k("KeyD"), k("KeyA")) + g.mx),
    move_up: axis(k("Space") || k("KeyE") || g.up, k("KeyC") || k("KeyQ") || g.down),
    yaw_rate_rad_s: (axis(k("ArrowRight"), k("ArrowLeft")) + g.lx) * LOOK_RATE,
    pitch_rate_rad_s: (axis(k("ArrowUp"), k("ArrowDown")) - g.ly) * LOOK_RATE,
    yaw_delta_rad: S.mouseDx * MOUSE_RAD_PER_PX,     // the mouse moving right turns right
    pitch_delta_rad: -S.mouseDy * MOUSE_RAD_PER_PX,  // moving up (dy < 0) looks up
    sprint: k("ShiftLeft") || k("ShiftRight") || g.sprint,
  };
  S.mouseDx = 0; S.mouseDy = 0;
  const idle = !act.move_forward && !act.move_right && !act.move_up && !act.yaw_rate_rad_s &&
               !act.pitch_rate_rad_s && !act.yaw_delta_rad && !act.pitch_delta_rad;
  if (idle) return;  // standing still generates nothing: nothing to send
  sendControl(Object.assign({t: "act", seq: ++S.seq, dt_s: dt}, act));
  S.sent.set(S.seq, performance.now());
  if (S.sent.size > 2000) S.sent.delete(S.sent.keys().next().value);
}

function sendControl(msg) {
  const text = JSON.stringify(msg);
  if (S.transport === "webrtc" && S.dc && S.dc.readyState === "open") S.dc.send(text);
  else if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(text);
}

$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") { sendControl({t: "prompt", prompt: $("prompt").value}); $("stage").focus(); }
  else if (ev.key === "Escape") $("stage").focus();
});

async function editInFront() {
  try {
    const r = await api(`/api/worlds/${encodeURIComponent(S.world)}/edit`, {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(S.shownMeta ? {pose: S.shownMeta.pose} : {})});
    note(`edit: removed ${r.points_removed} points`); S.memoryPoints = r.memory_points; refreshMinimap();
  } catch (e) { note("edit failed: " + e.message); }
}
$("edit-btn").addEventListener("click", editInFront);

// The frame on screen as a canvas (video frames are drawn into one), for screenshots and the tests.
function grabCanvas() {
  if (S.transport === "webrtc" && !$("video").hidden) {
    const v = $("video"), c = document.createElement("canvas");
    c.width = v.videoWidth; c.height = v.videoHeight;
    c.getContext("2d").drawImage(v, 0, 0);
    return c;
  }
  return $("canvas");
}
S.grab = () => ({png: grabCanvas().toDataURL("image/png"), meta: S.shownMeta});

function screenshot() {
  const a = document.createElement("a");
  a.href = grabCanvas().toDataURL("image/png");
  a.download = `spatia-${S.world || S.rec}-${S.shownMeta ? S.shownMeta.index : 0}.png`;
  a.click();
}
$("shot-btn").addEventListener("click", screenshot);

$("back-btn").addEventListener("click", () => { stopViewer(); show("viewer", false); show("lobby", true); refreshLobby(); });

function stopViewer() {
  S.closing = true;
  clearInterval(S.tickTimer); clearInterval(S.mapTimer);
  if (S.ws) { const ws = S.ws; S.ws = null; ws.close(); }
  if (S.pc) { const pc = S.pc; S.pc = null; pc.close(); }
  if (document.pointerLockElement) document.exitPointerLock();
  S.mode = null;
}
S.stop = stopViewer;

// ---- replay ----------------------------------------------------------------------------------------------

function startReplay(recId, frames) {
  S.rec = recId; S.world = null; S.replayFrames = frames; S.transport = "ws";
  resetViewer("replay");
  $("seek").max = Math.max(frames - 1, 0); $("seek").value = 0;
  $("minimap").src = "";
  replaySeek(0);
}

function replaySeek(frame) {
  if (S.ws) { const old = S.ws; S.ws = null; old.close(); }
  S.replayPaused = false; $("pause-btn").textContent = "Pause";
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws/replay?rec=${encodeURIComponent(S.rec)}&start=${frame}&speed=1`);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onmessage = (ev) => {
    if (S.ws !== ws) return;
    if (typeof ev.data === "string") {
      const m = JSON.parse(ev.data);
      if (m.t === "end") { S.replayPaused = true; $("pause-btn").textContent = "Play"; note("end of recording"); }
      else onControlMessage(m);
    } else onJpegFrame(ev.data);
  };
}
S.replaySeek = replaySeek;

function replayPause() {
  if (S.replayPaused) { replaySeek(Math.min(S.replayPos + 1, S.replayFrames - 1)); return; }
  S.replayPaused = true; $("pause-btn").textContent = "Play";
  if (S.ws) { const ws = S.ws; S.ws = null; ws.close(); }
}
$("pause-btn").addEventListener("click", replayPause);
$("seek").addEventListener("change", () => replaySeek(+$("seek").value));

function replayKey(ev) {
  const fps = 16;
  if (ev.code === "Space") { ev.preventDefault(); replayPause(); }
  else if (ev.code === "ArrowRight") replaySeek(Math.min(S.replayPos + fps, S.replayFrames - 1));
  else if (ev.code === "ArrowLeft") replaySeek(Math.max(S.replayPos - fps, 0));
  else if (ev.code === "Home") replaySeek(0);
  else if (ev.code === "KeyP") screenshot();
}

boot().catch((e) => { $("status").textContent = e.message; });
