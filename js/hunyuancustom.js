// HunyuanCustom front end: the API key setting, a live status line on cloud nodes, and the
// task / seed line under each result. Nothing here ever holds the key after a save: it goes from
// the input straight to the pack's loopback-only route, and only "set, ends with abcd" comes back.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const KEY_ROUTE = "/hunyuancustom/key";
const STATUS_EVENT = "hunyuancustom.status";
const PANEL = "hunyuancustom_panel";

// ---------------------------------------------------------------------------------------------
// API key setting

async function keyRequest(method, body) {
  // Writes are JSON: the server refuses anything else, so a cross-site form cannot reach it.
  const init = { method, cache: "no-store", headers: { "Content-Type": "application/json" } };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await api.fetchApi(KEY_ROUTE, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function describeKey(st) {
  if (!st.set) return "Not set";
  const from = st.source === "env" ? "Set from WAVESPEED_API_KEY" : "Set";
  return `${from} · ends with ${st.last4}`;
}

// Front end 1.27 loads PrimeVue's button theme, so its class names style the buttons like the rest of
// the dialog; 1.49 no longer loads it (plain grey boxes there): the buttons then get the pack's own
// look, from the front end's colour variables.
function hasPrimeButtonTheme() {
  return Boolean(getComputedStyle(document.documentElement).getPropertyValue("--p-button-primary-background").trim());
}

function keyButton(cls, text, secondary) {
  const button = document.createElement("button");
  const look = hasPrimeButtonTheme()
    ? `p-button p-button-sm${secondary ? " p-button-secondary" : ""}`
    : `hunyuancustom-button${secondary ? "" : " hunyuancustom-button-primary"}`;
  button.className = `${cls} ${look}`;
  button.textContent = text;
  return button;
}

function keySettingElement() {
  const root = document.createElement("div");
  root.className = "hunyuancustom-key";
  const status = document.createElement("span");
  status.className = "hunyuancustom-key-status";
  status.textContent = "…";
  const input = document.createElement("input");
  input.className = "hunyuancustom-key-input p-inputtext";
  input.type = "password";
  // Not a site login: keep browsers and password managers from filling or saving it.
  input.autocomplete = "new-password";
  for (const attr of ["data-lpignore", "data-1p-ignore", "data-bwignore"]) input.setAttribute(attr, "true");
  input.setAttribute("data-form-type", "other");
  input.spellcheck = false;
  input.placeholder = "paste a new key";
  const save = keyButton("hunyuancustom-key-save", "Save", false);
  const remove = keyButton("hunyuancustom-key-delete", "Remove", true);
  const message = document.createElement("div");
  message.className = "hunyuancustom-key-message";

  const show = (st) => {
    status.textContent = describeKey(st);
    remove.disabled = !(st.set && st.source === "file");
    message.textContent = st.source === "env"
      ? "The environment variable wins over a key saved here." : "";
  };
  const fail = (e) => { message.textContent = `Error: ${e.message}`; };
  const run = async (method, body) => {
    save.disabled = true;
    try { show(await keyRequest(method, body)); } catch (e) { fail(e); } finally { save.disabled = false; }
  };
  save.addEventListener("click", async () => {
    const value = input.value;
    input.value = ""; // never left in the page, whatever the answer
    if (!value.trim()) { message.textContent = "Paste a key first."; return; }
    await run("POST", { key: value });
  });
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") save.click(); });
  remove.addEventListener("click", () => run("DELETE", {}));
  keyRequest("GET").then(show, fail);

  root.append(status, input, save, remove, message);
  return root;
}

// ---------------------------------------------------------------------------------------------
// Status line and result line on the pack's nodes

const active = new Map(); // node id -> { node, started, text, progress, taskId }
const lastResult = new WeakMap(); // node -> its last result message (info or batch summary)
let servedFromCache = new WeakSet(); // nodes ComfyUI serves from its own cache in this prompt

// What a run costs, said on the node before it runs. WaveSpeedAI publishes no per-run price for
// these models that we could find (README "Cost"), so the node names who bills, not a number.
const COST_TEXT = {
  single: "Each new task is billed by WaveSpeedAI to your account",
  batch: "Each new task (one per video) is billed by WaveSpeedAI to your account",
};
const COST_BADGE = "Billed by WaveSpeedAI per run";

function findNode(id) {
  // Inside subgraphs the execution id is a path "outer:inner:...": each part is a node of the
  // graph the previous one holds, starting from the root graph.
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById(part) ?? null;
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

function panelOf(node) {
  return node.widgets?.find((w) => w.name === PANEL)?.element ?? null;
}

// Layout. The front end adds its video preview widget when the first result arrives and shares the
// node's height out again, so the prompt boxes would shrink and the video stick out until the node
// grew. Instead the panel holds the video's place from the start (a placeholder under the status
// lines) and hands exactly that height to the preview once it exists: nothing moves.
const LINES_HEIGHT = 56; // the status line (up to three lines of text and the bar) or the result line
const VIDEO_WIDGET = "video-preview"; // the front end's name for it (1.27)

// A 16:9 box at the node's default width (400). Fixed, not from the node's width: a new node's size
// is computed before its width is known, so it would grow on its first draw.
const VIDEO_HEIGHT = 224;

function hasVideo(node) {
  return Boolean(node.widgets?.some((w) => w.name === VIDEO_WIDGET));
}

function addPanel(node, cost) {
  const el = document.createElement("div");
  el.className = "hunyuancustom-panel";
  el.innerHTML = `
    <div class="hunyuancustom-lines">
      <div class="hunyuancustom-status" hidden>
        <div class="hunyuancustom-status-text"></div>
        <div class="hunyuancustom-bar"><div class="hunyuancustom-bar-fill"></div></div>
      </div>
      <div class="hunyuancustom-info" hidden>
        <span class="hunyuancustom-info-text"></span>
        <button class="hunyuancustom-copy" title="Copy">Copy</button>
      </div>
    </div>
    <div class="hunyuancustom-placeholder">
      <div class="hunyuancustom-cost"></div>
      <div>the video appears here</div>
    </div>`;
  el.querySelector(".hunyuancustom-copy").addEventListener("click", () => {
    copyText(el.querySelector(".hunyuancustom-info").dataset.copy || "");
  });
  const placeholder = el.querySelector(".hunyuancustom-placeholder");
  const costLine = el.querySelector(".hunyuancustom-cost");
  costLine.textContent = cost ?? "";
  costLine.hidden = !cost;
  const widget = node.addDOMWidget(PANEL, "hunyuancustom", el, {
    serialize: false, // never part of a workflow or a prompt
    hideOnZoom: false,
    // Read at every layout: with no preview yet the panel also holds its place.
    getMinHeight: () => {
      placeholder.hidden = hasVideo(node);
      return LINES_HEIGHT + (placeholder.hidden ? 0 : VIDEO_HEIGHT);
    },
    getMaxHeight: () => (hasVideo(node) ? LINES_HEIGHT : undefined),
  });
  widget.serialize = false;
  return el;
}

// The price badge core's API nodes show in the title bar, for the pack's cloud nodes. Core draws
// it only for Comfy.org API nodes (billed in Comfy credits), so the pack adds its own badge of the
// same kind: an instance of the front end's badge class, found on a badge core gave the node
// (its id/source badge). A front end without badges keeps the line in the panel only.
function badgeClass(node) {
  for (const b of node.badges ?? []) {
    try {
      const badge = typeof b === "function" ? b() : b;
      if (badge && typeof badge.draw === "function") return badge.constructor;
    } catch { /* not a badge we can read */ }
  }
  return null;
}

function addCostBadge(node) {
  const Badge = badgeClass(node);
  if (!Badge || !Array.isArray(node.badges)) return false;
  let badge = null;
  node.badges.push(() => {
    badge ??= new Badge({ text: COST_BADGE, fgColor: "#fff", bgColor: "#8D6932" });
    return badge;
  });
  node.hunyuancustomCostBadge = COST_BADGE;
  return true;
}

function copyText(text) {
  if (navigator.clipboard?.writeText) {
    navigator.clipboard.writeText(text).catch(() => fallbackCopy(text));
  } else {
    fallbackCopy(text);
  }
}

function fallbackCopy(text) {
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

function formatElapsed(seconds) {
  const s = Math.floor(seconds);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

function drawStatus(entry, id) {
  if (!entry.node.graph) { active.delete(id); return; } // removed, or its workflow was closed
  const el = panelOf(entry.node);
  if (!el) return;
  const box = el.querySelector(".hunyuancustom-status");
  box.hidden = false;
  // One line at a time: the last result's line returns when this run ends without one.
  el.querySelector(".hunyuancustom-info").hidden = true;
  const elapsed = formatElapsed((Date.now() - entry.started) / 1000);
  // The server's text carries the elapsed time of its last poll ("Processing · 12 s · task …");
  // shown here is ours instead, ticking every second between polls.
  const text = entry.text.replace(/ · \d+ s(?= · |$)/, "");
  const line = el.querySelector(".hunyuancustom-status-text");
  line.textContent = `${text} · ${elapsed} elapsed`;
  line.title = line.textContent; // in full on hover, should a long message need more than three lines
  el.querySelector(".hunyuancustom-bar-fill").style.width = `${Math.round(entry.progress * 100)}%`;
}

function clearStatus(id) {
  const entry = active.get(String(id));
  if (!entry) return;
  active.delete(String(id));
  const el = panelOf(entry.node);
  if (el) {
    el.querySelector(".hunyuancustom-status").hidden = true;
    const info = el.querySelector(".hunyuancustom-info");
    info.hidden = !info.querySelector(".hunyuancustom-info-text").textContent;
  }
  entry.node.setDirtyCanvas?.(true, false);
}

function clearAll() {
  for (const id of [...active.keys()]) clearStatus(id);
}

function onStatus({ detail }) {
  const id = String(detail.node);
  const node = findNode(id);
  if (!node || !panelOf(node)) return;
  const entry = active.get(id) ?? { node, started: Date.now() };
  entry.text = detail.text;
  entry.progress = detail.progress ?? 0;
  entry.taskId = detail.task_id ?? entry.taskId ?? null;
  active.set(id, entry);
  drawStatus(entry, id);
}

// The line under a result says truly what this run cost. `how`: "run" (the node ran) or
// "comfy-cache" (ComfyUI served the node's earlier output: the node did not run, no request).
function describeResult(info, how = "run") {
  if (info.backend === "local") {
    const text = `local · seed ${info.seed} · ${info.steps} steps · ${info.sampling_s} s sampling`;
    return { text: how === "comfy-cache" ? `ComfyUI's cached result · ${text}` : text, copy: String(info.seed) };
  }
  const id = info.task_id;
  // Billed or free first, so it survives a narrow node.
  let head;
  if (how === "comfy-cache") head = `free · ComfyUI's cached result, no request made · task ${id}`;
  else if (info.source === "cache") head = `free · saved result of task ${id}, no request made`;
  else if (info.source === "resumed" && info.refetched) head = `not billed again · video of task ${id} fetched again`;
  else if (info.source === "resumed") head = `billed once at submit, not again · resumed task ${id}`;
  else if (info.billed_again) head = `billed again · new task ${id}`;
  else if (info.source === "new") head = `billed · new task ${id}`;
  else head = `task ${id}`;
  const parts = [head];
  if (info.inference_ms != null) parts.push(`${(info.inference_ms / 1000).toFixed(1)} s inference`);
  if ((info.has_nsfw_contents || []).some(Boolean)) parts.push("NSFW flagged");
  return { text: parts.join(" · "), copy: id };
}

function describeBatch(summary, how = "run") {
  const ids = (summary.results || []).map((r) => r.task_id).filter(Boolean);
  const failed = summary.failed ? ` · ${summary.failed} failed` : "";
  const done = `${summary.done} of ${summary.jobs} videos done`;
  if (how === "comfy-cache") {
    return { text: `free · ComfyUI's cached result, no request made · ${done}${failed}`, copy: ids.join("\n") };
  }
  const billing = summary.billed != null ? ` · ${summary.billed} billed, ${summary.free} free` : "";
  return { text: `${done}${billing}${failed}`, copy: ids.join("\n") };
}

function describe(message, how) {
  const info = message?.hunyuancustom?.[0];
  const batch = message?.hunyuancustom_batch?.[0];
  if (info) return describeResult(info, how);
  if (batch) return describeBatch(batch, how);
  return null;
}

// Cancel while the provider runs the task: the task goes on there and was billed when it was
// submitted; the journal resumes it (free) when the same inputs are queued again.
function describeCancel(entry) {
  const earlier = hasVideo(entry.node) ? " · the video shown is from an earlier run" : "";
  if (entry.node.type?.startsWith("HunyuanCustomCloudBatch")) {
    return { text: "cancelled · tasks already submitted keep running at WaveSpeedAI and were billed at "
      + `submit · queue again to resume them free${earlier}`, copy: entry.taskId ?? "" };
  }
  if (entry.taskId) {
    return { text: `cancelled · task ${entry.taskId} keeps running at WaveSpeedAI, billed at submit · `
      + `queue again to resume it free${earlier}`, copy: entry.taskId };
  }
  return { text: "cancelled before any task was confirmed · queue again: nothing is paid twice"
    + earlier, copy: "" };
}

function cancelAll() {
  for (const [id, entry] of [...active.entries()]) {
    if (entry.node.graph && entry.node.type?.startsWith("HunyuanCustomCloud")) {
      showResult(entry.node, describeCancel(entry));
    }
    clearStatus(id);
  }
}

// ComfyUI serves these nodes from its own cache: the node does not run, nothing is requested.
function onCached({ detail }) {
  for (const id of detail?.nodes ?? []) {
    const node = findNode(id);
    if (!node || !panelOf(node)) continue;
    servedFromCache.add(node);
    const line = describe(lastResult.get(node), "comfy-cache");
    if (line) showResult(node, line);
  }
}

function showResult(node, line) {
  const el = panelOf(node);
  if (!el) return;
  const box = el.querySelector(".hunyuancustom-info");
  box.hidden = false;
  box.dataset.copy = line.copy;
  box.querySelector(".hunyuancustom-info-text").textContent = line.text;
}

// A new node's seed starts with "control after generate" on fixed, not the front end's randomize:
// with randomize every queue is a new request, so a run stopped by Cancel could never be resumed
// (and would be paid twice). A node loaded from a workflow gets its saved setting afterwards.
function fixedSeedByDefault(node) {
  const control = node.widgets?.find((w) => w.name === "control_after_generate");
  if (control) control.value = "fixed";
}

// The front end's own video preview widget marks itself `serialize = false`, but its prompt
// builder (1.27) only skips `options.serialize === false`: the preview then goes out as an extra
// input, which changes ComfyUI's cache key and makes a re-run execute the node again instead of
// reusing its cached result. Mark it the way the prompt builder reads. Its size: the place the
// panel held for it (see addPanel). The front end sets its own rule (as tall as the video's aspect
// at the node's width, so any new video would move everything) right after creating the widget;
// that assignment is ignored. A video of another shape is letterboxed (object-fit: contain).
function adoptVideoPreview(node) {
  const add = node.addDOMWidget;
  if (typeof add !== "function") return;
  node.addDOMWidget = function (name, ...rest) {
    const widget = add.call(this, name, ...rest);
    if (name === VIDEO_WIDGET && widget) {
      widget.options = { ...(widget.options || {}), serialize: false };
      const layout = () => ({ minHeight: VIDEO_HEIGHT, minWidth: 0 });
      Object.defineProperty(widget, "computeLayoutSize", { get: () => layout, set: () => {}, configurable: true });
    }
    return widget;
  };
}

const STYLE = `
.hunyuancustom-panel { font: 11px/13px sans-serif; color: var(--input-text, #ddd); display: flex;
  flex-direction: column; overflow: hidden; box-sizing: border-box; }
/* The hidden attribute must win over the display rules below (an empty Copy button otherwise). */
.hunyuancustom-panel [hidden] { display: none !important; }
.hunyuancustom-lines { height: ${LINES_HEIGHT}px; flex: none; box-sizing: border-box; padding: 2px 4px;
  overflow: hidden; }
.hunyuancustom-status { display: flex; flex-direction: column; gap: 4px; }
/* Wrapped, never cut off: the node's default width fits the longest usual line in two lines. */
.hunyuancustom-status-text, .hunyuancustom-info-text { white-space: normal; overflow-wrap: anywhere;
  max-height: 39px; overflow: hidden; user-select: text; }
.hunyuancustom-placeholder { flex: 1; display: flex; flex-direction: column; align-items: center;
  justify-content: center; gap: 6px; text-align: center; }
.hunyuancustom-placeholder > div:last-child { opacity: .35; font-style: italic; }
.hunyuancustom-cost { opacity: .8; padding: 0 8px; }
.hunyuancustom-bar { height: 4px; background: rgba(128,128,128,.3); border-radius: 2px; }
.hunyuancustom-bar-fill { height: 100%; width: 0; background: #3a8; border-radius: 2px;
  transition: width .4s; }
.hunyuancustom-info { display: flex; gap: 6px; align-items: center; }
.hunyuancustom-info-text { flex: 1; }
.hunyuancustom-copy { flex: none; font-size: 10px; padding: 0 6px; cursor: pointer; }
.hunyuancustom-key { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.hunyuancustom-key-input { width: 14rem; }
.hunyuancustom-key-message { flex-basis: 100%; font-size: 12px; opacity: .8; }
.hunyuancustom-button { border: none; border-radius: 6px; padding: 6px 10px; font-size: 14px;
  line-height: 18px; cursor: pointer; color: var(--base-foreground, #fff);
  background: var(--secondary-background, #333); }
.hunyuancustom-button-primary { background: var(--primary-background, #0b8ce9); }
.hunyuancustom-button:disabled { opacity: .5; cursor: default; }
.hunyuancustom-button:not(:disabled):hover { filter: brightness(1.15); }
`;

app.registerExtension({
  name: "HunyuanCustom.Extension",
  settings: [
    {
      id: "HunyuanCustom.APIKey",
      category: ["HunyuanCustom", "API key"],
      name: "WaveSpeedAI API key (stored on the ComfyUI machine, never in workflows)",
      tooltip: "Saved to the pack's key file in ComfyUI's user folder. Only this computer can set "
        + "or remove it; the page only ever learns whether a key is set and its last 4 characters.",
      // A custom element that never calls the setter: ComfyUI's settings store (and the
      // browser) never see the key.
      type: () => keySettingElement(),
      defaultValue: "",
    },
  ],

  setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.append(style);

    api.addEventListener(STATUS_EVENT, onStatus);
    api.addEventListener("executed", ({ detail }) => clearStatus(detail.node ?? detail.display_node));
    api.addEventListener("execution_error", clearAll);
    api.addEventListener("execution_interrupted", cancelAll);
    api.addEventListener("execution_start", () => { servedFromCache = new WeakSet(); });
    api.addEventListener("execution_cached", onCached);
    api.addEventListener("execution_success", clearAll);
    // Tick the elapsed time between the server's polls (at least once a second).
    setInterval(() => active.forEach((entry, id) => drawStatus(entry, id)), 500);
  },

  // After core's own nodeCreated (its node id / source badge), whose badge class the cost badge uses.
  nodeCreated(node) {
    if (String(node.comfyClass ?? node.type ?? "").startsWith("HunyuanCustomCloud")) addCostBadge(node);
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("HunyuanCustom")) return;
    const makesVideo = (nodeData.output || []).some((t) => t === "VIDEO" || (Array.isArray(t) && t.includes("VIDEO")));
    const hasSeed = "seed" in (nodeData.input?.required ?? {});
    const cloud = nodeData.name.startsWith("HunyuanCustomCloud");

    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      if (hasSeed) fixedSeedByDefault(this);
      if (makesVideo) {
        addPanel(this, cloud ? COST_TEXT[nodeData.name.startsWith("HunyuanCustomCloudBatch") ? "batch" : "single"] : null);
        adoptVideoPreview(this);
      }
      return r;
    };
    if (!makesVideo) return;

    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = executed?.apply(this, arguments);
      const how = servedFromCache.has(this) ? "comfy-cache" : "run";
      servedFromCache.delete(this);
      const line = describe(message, how);
      if (line) {
        lastResult.set(this, message);
        showResult(this, line);
      }
      return r;
    };
  },
});
