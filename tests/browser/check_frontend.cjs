// Drives the real ComfyUI front end with the pack loaded, in headless Chromium, and prints one
// JSON report on stdout for tests/test_browser.py to assert on. Input: a JSON file (argv[2]) with
// url, workflows (name -> UI workflow), secret, screenshot, userDataDir, chromium.
// playwright-core comes from NODE_PATH (installed by the test outside the repository).
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const report = { consoleErrors: [], failedResponses: [], failedRequests: [], extensionScripts: 0, workflows: {}, key: {}, run: {},
  templateResponses: [], steps: [] };
const step = (s) => report.steps.push(s);

// The flags this machine needs (no GPU, no network besides loopback, no first-run UI).
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function main() {
  const context = await chromium.launchPersistentContext(cfg.userDataDir, {
    executablePath: cfg.chromium, headless: true, args: FLAGS,
    viewport: { width: 1400, height: 900 },
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") report.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => report.consoleErrors.push(`pageerror: ${e.stack || e.message}`));
  page.on("requestfailed", (r) => report.failedRequests.push(`${r.failure()?.errorText} ${r.url()}`));
  // Every answer the page receives, to prove the key never comes back to the browser.
  const bodies = [];
  page.on("response", async (r) => {
    if (r.status() >= 400) report.failedResponses.push(`${r.status()} ${r.request().method()} ${r.url()}`);
    if (/\/hunyuancustom\.js(\?|$)/.test(r.url())) report.extensionScripts += 1;
    if (r.url().includes("/workflow_templates/")) report.templateResponses.push(`${r.status()} ${decodeURI(r.url())}`);
    try { bodies.push({ url: r.url(), text: await r.text() }); } catch { /* redirects, media */ }
  });
  try {
    if (cfg.baseline) { await baseline(page); return; }
    await page.goto(cfg.url, { waitUntil: "load" });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph
      && Object.keys(window.LiteGraph.registered_node_types).some((t) => t.startsWith("HunyuanCustom")),
    null, { timeout: 120000 });
    await page.waitForLoadState("networkidle");
    report.templateDialog = await dismissTemplates(page);
    step("front end ready");
    report.extensionScriptsOnLoad = report.extensionScripts;
    report.extensionLoaded = await page.evaluate(() =>
      (window.app.extensions || []).some((e) => e.name === "HunyuanCustom.Extension"));

    // A new node's seed control, beside core's KSampler; and a saved setting that wins on load.
    report.seedControl = await page.evaluate(async (wf) => {
      const control = (n) => n?.widgets?.find((w) => w.name === "control_after_generate")?.value ?? null;
      const fresh = {};
      for (const type of ["HunyuanCustomCloudRef2V720p", "HunyuanCustomCloudBatch720p",
        "HunyuanCustomLocalRef2V", "KSampler"]) fresh[type] = control(window.LiteGraph.createNode(type));
      const saved = JSON.parse(JSON.stringify(wf));
      const cloud = saved.nodes.find((n) => n.type.startsWith("HunyuanCustomCloudRef2V"));
      cloud.widgets_values[cloud.widgets_values.indexOf("fixed")] = "increment";
      await window.app.loadGraphData(saved, true, true, null);
      const loaded = control(window.app.graph.nodes.find((n) => n.type === cloud.type));
      return { fresh, loaded };
    }, cfg.workflows[cfg.cloudWorkflow]);

    // Each example workflow: every node type known, nothing reported missing.
    for (const [name, wf] of Object.entries(cfg.workflows)) {
      report.workflows[name] = await page.evaluate(async (wf) => {
        const types = new Set();
        const collect = (nodes) => (nodes || []).forEach((n) => types.add(n.type));
        collect(wf.nodes);
        for (const sg of wf.definitions?.subgraphs || []) collect(sg.nodes);
        const subgraphIds = new Set((wf.definitions?.subgraphs || []).map((s) => s.id));
        const missing = [...types].filter((t) => !subgraphIds.has(t)
          && !window.LiteGraph.registered_node_types[t]);
        await window.app.loadGraphData(wf, true, true, null);
        return { missing, nodes: window.app.graph.nodes.length, expected: wf.nodes.length,
          errored: window.app.graph.nodes.filter((n) => n.has_errors).map((n) => n.type) };
      }, wf);
      await twoFrames(page); // the warning is drawn on the front end's next render
      report.workflows[name].dialog = await missingNodesDialog(page);
      step(`opened ${name}`);
    }
    // The same check sees the dialog when a node type really is missing.
    const unknown = { ...cfg.workflows[cfg.cloudWorkflow] };
    unknown.nodes = unknown.nodes.map((n, i) => (i === 0 ? { ...n, type: "NoSuchNodeForTheBrowserTest" } : n));
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, null); }, unknown);
    await missingNodesWarning(page).first().waitFor({ timeout: 15000 }).catch(() => {});
    report.missingNodesControl = await missingNodesDialog(page);
    // Leave a complete workflow open: the front end restores it on the reload below.
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, null); },
      cfg.workflows[cfg.cloudWorkflow]);
    report.missingNodesDialog = Object.values(report.workflows).filter((w) => w.dialog).length;

    // A front end whose template browser this script cannot drive fails only the template test.
    await checkTemplates(page).catch(async (e) => {
      report.templates = { error: String(e && e.message || e) };
      await page.keyboard.press("Escape");
    });
    // A front end whose settings dialog this script cannot drive fails only the key test; the key
    // is then set through the pack's own route, as its setting does, so the run checks still run.
    await checkKey(page, bodies).catch(async (e) => {
      report.key.error = String(e && e.message || e);
      await page.keyboard.press("Escape");
      await page.evaluate(async (key) => {
        await window.comfyAPI.api.api.fetchApi("/hunyuancustom/key", { method: "POST",
          headers: { "Content-Type": "application/json" }, body: JSON.stringify({ key }) });
      }, cfg.secret);
    });
    await runCloud(page, context);
    await runInSubgraph(page);
  } catch (e) {
    // What the page looked like when it went wrong, next to the other screenshots.
    if (cfg.screenshot) await page.screenshot({ path: cfg.screenshot.replace(/\.png$/, "-error.png") }).catch(() => {});
    throw e;
  } finally {
    report.bodiesWithSecret = bodies.filter((b) => b.text.includes(cfg.secret)).map((b) => b.url);
    await context.close();
  }
}

// The first visit to a fresh user folder opens the template browser; close it like a user would.
async function dismissTemplates(page) {
  const title = page.getByText("Get Started with a Template", { exact: true });
  if (await title.count() > 0) {  // front end 1.27
    await page.keyboard.press("Escape");
    await title.waitFor({ state: "detached", timeout: 10000 });
    return "dismissed";
  }
  // Front end 1.49: a "Templates" dialog that opens a moment after the page is ready.
  const browser = page.getByRole("dialog").filter({ hasText: "All Templates" });
  await browser.first().waitFor({ timeout: 5000 }).catch(() => {});
  if (await browser.count() === 0) return "absent";
  await page.keyboard.press("Escape");
  await browser.first().waitFor({ state: "hidden", timeout: 10000 });
  return "dismissed";
}

// The template browser (Workflow > Browse Templates), the pack's category: each example workflow's
// card shows its picture and its title, and opening the browser adds no console error or failed
// request. Then a card opens its workflow.
async function checkTemplates(page) {
  const since = { console: report.consoleErrors.length, responses: report.failedResponses.length,
    requests: report.failedRequests.length };
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  const content = page.locator('[data-testid="template-workflows-content"]');
  // The pack's category: an option inside the content in 1.27, an entry of the side bar in 1.49.
  const legacy = content.getByRole("option", { name: cfg.packModule, exact: true });
  const sideBar = page.getByRole("dialog").getByText(cfg.packModule, { exact: true });
  await Promise.race([legacy.waitFor({ timeout: 30000 }), sideBar.first().waitFor({ timeout: 30000 })]);
  await (await legacy.count() > 0 ? legacy : sideBar.first()).click();
  await content.waitFor({ timeout: 30000 });
  const cards = {};
  for (const name of cfg.templateNames) {
    const card = content.locator(`[data-testid="template-workflow-${name}"]`);
    await card.waitFor({ timeout: 30000 });
    await card.scrollIntoViewIfNeeded(); // the pictures load when they come into view
    // Loaded or failed: either way the <img> is complete (a failed one is replaced by an icon).
    await page.waitForFunction((el) => {
      const img = el.querySelector("img");
      return (img && img.complete && img.naturalWidth > 0) || el.querySelector(".pi-file");
    }, await card.elementHandle(), { timeout: 30000 }).catch(() => {});
    cards[name] = await card.evaluate((el) => {
      const img = el.querySelector("img");
      return { title: el.querySelector("h3")?.textContent.trim() ?? img?.getAttribute("alt") ?? null,
        description: el.querySelector("p")?.textContent.trim() ?? null,
        src: img?.getAttribute("src") ?? null, naturalWidth: img?.naturalWidth ?? 0,
        naturalHeight: img?.naturalHeight ?? 0, shown: Boolean(img?.checkVisibility()) };
    });
  }
  // The screenshot: the first cards, once their pictures have loaded again (they unload out of view).
  await content.locator('[data-testid^="template-workflow-"]').first().scrollIntoViewIfNeeded();
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')]
    .filter((el) => el.getBoundingClientRect().top < window.innerHeight)
    .every((el) => el.querySelector("img")?.complete && el.querySelector("img").naturalWidth > 0),
  null, { timeout: 30000 }).catch(() => {});
  await page.screenshot({ path: cfg.screenshot.replace(/\.png$/, "-templates.png") });
  report.templates = { cards,
    responses: [...report.templateResponses],
    consoleErrors: report.consoleErrors.slice(since.console),
    failedResponses: report.failedResponses.slice(since.responses),
    failedRequests: report.failedRequests.slice(since.requests) };
  // A click on the cloud example's card opens it, named after its title.
  await content.locator(`[data-testid="template-workflow-${cfg.openTemplate}"]`).click();
  await content.waitFor({ state: "detached", timeout: 30000 });
  await page.waitForFunction(() => window.app.graph.nodes.some((n) => n.type.startsWith("HunyuanCustomCloud")),
    null, { timeout: 30000 });
  // The canvas may still hold an earlier workflow's cloud node: wait for the template's own tab
  // (on a slow machine the front end names it a moment after the click). A timeout is reported as
  // the name it has then, and the test says so.
  await page.waitForFunction((want) => window.app.extensionManager.workflow?.activeWorkflow?.filename === want,
    cfg.openTemplate, { timeout: 30000 }).catch(() => {});
  report.templates.opened = await page.evaluate(() => ({
    types: window.app.graph.nodes.map((n) => n.type),
    workflow: window.app.extensionManager.workflow?.activeWorkflow?.filename ?? null }));
  step("template browser");
}

// The front end's missing-nodes warning: front end 1.27 opens a dialog "Some Nodes Are Missing"
// (closed with Escape); 1.49 shows its error overlay at the top right, "Missing node: <type>" or
// "Missing nodes", or "N errors found" when there is more than one kind of error (counted too: it
// may include missing nodes), closed with its X button.
const MISSING_NODES_DIALOG = /Some Nodes Are Missing/i;
const MISSING_NODES_OVERLAY = /Missing nodes?\b|\d+ errors? found/i;
const missingNodesOverlay = (page) =>
  page.locator('[data-testid="error-overlay"]').filter({ hasText: MISSING_NODES_OVERLAY });
const missingNodesWarning = (page) => page.getByText(MISSING_NODES_DIALOG).or(missingNodesOverlay(page));

// Shown? Then closed, so the next check starts clean.
async function missingNodesDialog(page) {
  if (await page.getByText(MISSING_NODES_DIALOG).count() > 0) {
    await page.keyboard.press("Escape");
    await page.getByText(MISSING_NODES_DIALOG).first().waitFor({ state: "detached", timeout: 10000 });
    return true;
  }
  const overlay = missingNodesOverlay(page);
  if (await overlay.count() > 0) {
    await overlay.first().locator('[data-testid="error-overlay-dismiss"]').click();
    await overlay.first().waitFor({ state: "detached", timeout: 10000 });
    return true;
  }
  return false;
}

// The settings dialog: `.settings-container` in front end 1.27, `[data-testid="settings-dialog"]`
// (a reka dialog with the categories in a side bar) in 1.49; Escape closes either.
const SETTINGS_DIALOG = '.settings-container, [data-testid="settings-dialog"]';

// The stock front end without the pack (cfg.baseline): the errors it logs on its own, which the
// pack's run may repeat but not add to. Opens the same pages the pack run opens.
async function baseline(page) {
  for (const load of [() => page.goto(cfg.url, { waitUntil: "load" }), () => page.reload({ waitUntil: "load" })]) {
    await load();
    await page.waitForFunction(() => window.app?.graph && window.app?.extensionManager?.command
      && Object.keys(window.LiteGraph?.registered_node_types || {}).length > 0, null, { timeout: 120000 });
    await page.waitForLoadState("networkidle");
  }
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.ShowSettingsDialog"));
  await page.locator(SETTINGS_DIALOG).waitFor({ timeout: 30000 });
  await page.keyboard.press("Escape");
  await page.locator(SETTINGS_DIALOG).waitFor({ state: "detached", timeout: 10000 });
  report.extensionLoaded = await page.evaluate(() =>
    (window.app.extensions || []).some((e) => e.name === "HunyuanCustom.Extension"));
  step("baseline");
}

async function checkKey(page, bodies) {
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.ShowSettingsDialog"));
  const dialog = page.locator(SETTINGS_DIALOG);
  await dialog.waitFor({ timeout: 30000 });
  await dialog.getByText("HunyuanCustom", { exact: true }).first().click();
  const status = page.locator(".hunyuancustom-key-status");
  await status.waitFor({ timeout: 30000 });
  await page.waitForFunction(() => document.querySelector(".hunyuancustom-key-status").textContent !== "…");
  report.key.before = await status.textContent();
  step("key setting shown");

  await page.fill(".hunyuancustom-key-input", cfg.secret);
  await page.click(".hunyuancustom-key-save");
  await page.waitForFunction(() => /ends with/.test(document.querySelector(".hunyuancustom-key-status").textContent));
  report.key.afterSave = await status.textContent();
  report.key.inputAfterSave = await page.inputValue(".hunyuancustom-key-input");
  report.key.domHasSecret = await page.evaluate((s) => document.documentElement.outerHTML.includes(s), cfg.secret);
  report.key.storageHasSecret = await page.evaluate((s) =>
    JSON.stringify({ ...localStorage }).includes(s) || JSON.stringify({ ...sessionStorage }).includes(s), cfg.secret);
  // ComfyUI's own settings store and the workflow as it would be saved.
  report.key.settingsHasSecret = await page.evaluate(async (s) =>
    (await (await fetch("api/settings")).text()).includes(s), cfg.secret);
  report.key.workflowHasSecret = await page.evaluate((s) =>
    JSON.stringify(window.app.graph.serialize()).includes(s), cfg.secret);
  // The key file holds the key and the API root it was set for (the one ComfyUI is configured with).
  const stored = fs.existsSync(cfg.keyFile) ? JSON.parse(fs.readFileSync(cfg.keyFile, "utf8")) : {};
  report.key.fileHoldsKey = stored.key === cfg.secret && stored.api_base === cfg.apiBase;
  await page.screenshot({ path: cfg.screenshot.replace(/\.png$/, "-settings.png") });

  // A reload shows the stored key's status again (the round trip through the server).
  await page.reload({ waitUntil: "load" });
  await page.waitForFunction(() => window.app?.extensionManager?.command, null, { timeout: 120000 });
  await page.waitForLoadState("networkidle");
  report.key.templateDialogAfterReload = await dismissTemplates(page);
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.ShowSettingsDialog"));
  await page.locator(SETTINGS_DIALOG).getByText("HunyuanCustom", { exact: true }).first().click();
  await page.waitForFunction(() => /ends with/.test(document.querySelector(".hunyuancustom-key-status")?.textContent || ""));
  report.key.afterReload = await status.textContent();

  await page.click(".hunyuancustom-key-delete");
  await page.waitForFunction(() => document.querySelector(".hunyuancustom-key-status").textContent === "Not set");
  report.key.afterDelete = await status.textContent();
  report.key.fileAfterDelete = fs.existsSync(cfg.keyFile);
  // Set it again for the run below.
  await page.fill(".hunyuancustom-key-input", cfg.secret);
  await page.click(".hunyuancustom-key-save");
  await page.waitForFunction(() => /ends with/.test(document.querySelector(".hunyuancustom-key-status").textContent));
  await page.keyboard.press("Escape");
  await page.locator(SETTINGS_DIALOG).waitFor({ state: "detached", timeout: 10000 });
  await page.locator(".p-dialog-mask").first().waitFor({ state: "detached", timeout: 10000 });
  step("key round trip");
}

// What a user sees of the cloud node, read from the page: the status texts shown anywhere (ours
// or core's progress text under the node), whether the panel's lines fit, and the node's layout.
function installViewProbe() {
  const cloudNode = () => window.app.graph.nodes.find((n) => n.type.startsWith("HunyuanCustomCloud"));
  const shown = (el) => el.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true })
    && el.getBoundingClientRect().width > 0 && el.getBoundingClientRect().height > 0;
  // The reporter's phrases (hunyuancustom/ref2v.py) and the result line's first words.
  const STATUS = /\b(Uploading|Submitting|Queued|Processing|Completed|Downloading|Decoding|Done|Cached)\b|\b(billed|free|cancelled) ·/;
  window.__hcView = {
    cloudNode,
    statusTexts() {
      const found = new Set();
      const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
      for (let t = walk.nextNode(); t; t = walk.nextNode()) {
        if (STATUS.test(t.textContent) && t.parentElement && shown(t.parentElement)) found.add(t.parentElement);
      }
      return [...found].map((el) => ({ text: el.textContent.trim(), cls: String(el.className) }));
    },
    panel() {
      const el = cloudNode().widgets.find((w) => w.name === "hunyuancustom_panel").element;
      const box = el.getBoundingClientRect();
      const lines = [...el.querySelectorAll(".hunyuancustom-status-text, .hunyuancustom-info-text")].filter(shown);
      return {
        copyShown: shown(el.querySelector(".hunyuancustom-copy")),
        infoDisplay: getComputedStyle(el.querySelector(".hunyuancustom-info")).display,
        statusDisplay: getComputedStyle(el.querySelector(".hunyuancustom-status")).display,
        lines: lines.map((line) => {
          const r = line.getBoundingClientRect();
          return { text: line.textContent, clientWidth: line.clientWidth, scrollWidth: line.scrollWidth,
            clientHeight: line.clientHeight, scrollHeight: line.scrollHeight,
            insidePanel: r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5 && r.right <= box.right + 0.5 };
        }),
      };
    },
    layout() {
      const node = cloudNode();
      const w = (name) => node.widgets.find((x) => x.name === name);
      const px = (name) => Math.round(w(name)?.element?.getBoundingClientRect().height ?? -1);
      return { size: [...node.size].map(Math.round), prompt: Math.round(w("prompt").computedHeight),
        negative: Math.round(w("negative_prompt").computedHeight), promptPx: px("prompt"),
        negativePx: px("negative_prompt"), video: Boolean(w("video-preview")),
        widgets: node.widgets.map((x) => x.name),
        outside: node.widgets.filter((x) => (x.y ?? 0) + (x.computedHeight ?? 0) > node.size[1] + 1).map((x) => x.name) };
    },
  };
}

const twoFrames = (page) => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));

async function runCloud(page, context) {
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, null); },
    cfg.workflows[cfg.cloudWorkflow]);
  // The node at the size a new node gets (its default width), at scale 1 for the screenshots.
  await page.evaluate(installViewProbe);
  report.run.defaultSize = await page.evaluate(() => {
    const node = window.__hcView.cloudNode();
    node.setSize([...window.LiteGraph.createNode(node.type).size]);
    window.app.canvas.ds.scale = 1;
    window.app.canvas.centerOnNode?.(node) ?? window.app.canvas.animateToBounds?.(node.boundingRect);
    window.app.canvas.setDirty(true, true);
    return [...node.size];
  });
  await twoFrames(page);
  report.run.before = { panel: await page.evaluate(() => window.__hcView.panel()),
    texts: await page.evaluate(() => window.__hcView.statusTexts()) };
  report.cost = await readCost(page);
  await page.screenshot({ path: cfg.screenshot.replace(/\.png$/, "-before.png") });
  // The layout at every frame from here until the video has arrived (changes only).
  await page.evaluate(() => {
    window.__hcLayout = [];
    const sample = () => {
      const now = window.__hcView.layout();
      const last = window.__hcLayout[window.__hcLayout.length - 1];
      if (!last || JSON.stringify(last) !== JSON.stringify(now)) window.__hcLayout.push(now);
      if (!window.__hcLayoutStop) requestAnimationFrame(sample);
    };
    requestAnimationFrame(sample);
  });
  // Record every status line the node draws while the job waits.
  await page.evaluate(() => {
    window.__hcStatus = [];
    new MutationObserver(() => {
      const el = document.querySelector(".hunyuancustom-status");
      if (el && !el.hidden) window.__hcStatus.push({ t: Date.now(), text: el.textContent.trim() });
    }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  });
  const started = Date.now();
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  // While the job waits at the provider: what the node shows.
  await page.waitForFunction(() => window.__hcView.statusTexts().some((t) => /Processing/.test(t.text)),
    null, { timeout: 60000 });
  report.run.during = { panel: await page.evaluate(() => window.__hcView.panel()),
    texts: await page.evaluate(() => window.__hcView.statusTexts()) };
  await page.screenshot({ path: cfg.screenshot.replace(/\.png$/, "-during.png") });
  const info = page.locator(".hunyuancustom-info:not([hidden]) .hunyuancustom-info-text");
  await info.waitFor({ timeout: 120000 });
  report.run.seconds = (Date.now() - started) / 1000;
  report.run.info = await info.textContent();
  report.run.status = await page.evaluate(() => window.__hcStatus);
  report.run.statusHiddenAfter = await page.evaluate(() => document.querySelector(".hunyuancustom-status").hidden);
  report.run.video = await videoState(page);
  await twoFrames(page);
  report.run.after = { panel: await page.evaluate(() => window.__hcView.panel()),
    texts: await page.evaluate(() => window.__hcView.statusTexts()) };
  await page.screenshot({ path: cfg.screenshot.replace(/\.png$/, "-after.png") });
  report.run.layout = await page.evaluate(() => { window.__hcLayoutStop = true; return window.__hcLayout; });
  // The workflow and the prompt the front end sent, after a run with the key set.
  report.run.workflowHasSecret = await page.evaluate(async (s) =>
    JSON.stringify(window.app.graph.serialize()).includes(s)
    || JSON.stringify(await window.app.graphToPrompt()).includes(s), cfg.secret);
  step("cloud run finished");
  // The Copy button puts the task id on the clipboard.
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(cfg.url).origin });
  await page.locator(".hunyuancustom-info:not([hidden]) .hunyuancustom-copy").click();
  report.run.copied = await page.evaluate(() => navigator.clipboard.readText());

  // Run again: ComfyUI serves the node from its cache; the preview and the line must stay.
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  // Until the server has finished both prompts.
  const h = await waitForHistory(page, 2);
  report.run.history = h.entries;
  report.run.prompts = h.inputs;
  report.run.cachedInfo = await page.locator(".hunyuancustom-info:not([hidden]) .hunyuancustom-info-text").textContent().catch(() => null);
  report.run.cachedVideo = await videoState(page);

  await page.evaluate(() => {
    const node = window.app.graph.nodes.find((n) => n.type.startsWith("HunyuanCustomCloud"));
    window.app.canvas.selectNode(node);
    window.app.canvas.ds.scale = 1;
    window.app.canvas.centerOnNode?.(node) ?? window.app.canvas.animateToBounds?.(node.boundingRect);
    window.app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(1000);
  await page.screenshot({ path: cfg.screenshot });
  step("screenshot");

  await runBillingLines(page);

  // A task the provider fails: the status line shows while it runs, then goes away with the error.
  await page.evaluate((marker) => {
    const node = window.app.graph.nodes.find((n) => n.type.startsWith("HunyuanCustomCloud"));
    const prompt = node.widgets.find((w) => w.name === "prompt");
    prompt.value = `${prompt.value} ${marker}`;
  }, cfg.failMarker);
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  await page.waitForFunction(() => {
    const el = document.querySelector(".hunyuancustom-status");
    return el && !el.hidden && /Processing|Queued/.test(el.textContent);
  }, null, { timeout: 60000 });
  report.failure = { statusBefore: await page.locator(".hunyuancustom-status").textContent() };
  const failed = await waitForHistory(page, 7);
  report.failure.events = failed.entries.map((e) => e.map((m) => m[0]));
  report.failure.statusHidden = await page.evaluate(() => document.querySelector(".hunyuancustom-status").hidden);
  step("failure");
}

// What the node says a run costs before it runs: the line in its panel and the badge in its title
// bar (the front end's own badge class, as core's API nodes show their price).
async function readCost(page) {
  return page.evaluate(() => {
    const read = (node) => {
      const el = node.widgets.find((w) => w.name === "hunyuancustom_panel").element.querySelector(".hunyuancustom-cost");
      const badges = (node.badges || []).map((b) => (typeof b === "function" ? b() : b)).filter(Boolean);
      return { line: el && !el.hidden ? el.textContent.trim() : null, shown: Boolean(el?.checkVisibility()),
        badges: badges.map((b) => b.text).filter(Boolean),
        badgeClass: badges.map((b) => b.constructor?.name) };
    };
    const batch = window.LiteGraph.createNode("HunyuanCustomCloudBatch720p");
    window.app.graph.add(batch);
    const out = { single: read(window.__hcView.cloudNode()), batch: read(batch) };
    window.app.graph.remove(batch);
    return out;
  });
}

// The line under the result after each kind of run, as the user sees it: Cancel while the
// provider runs the task, re-queue (resumed), the saved file gone (fetched again), force_new over a
// paid result (billed again).
async function runBillingLines(page) {
  const infoText = () => page.evaluate(() => {
    const el = document.querySelector(".hunyuancustom-info");
    return el && !el.hidden ? el.querySelector(".hunyuancustom-info-text").textContent : null;
  });
  const setWidget = (name, value) => page.evaluate(([n, v]) => {
    window.__hcView.cloudNode().widgets.find((w) => w.name === n).value = v;
  }, [name, value]);
  // A request not seen yet (another fixed seed): a new task, which Cancel stops waiting for.
  await setWidget("seed", 2024);
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  await page.waitForFunction(() => {
    const el = document.querySelector(".hunyuancustom-status");
    return el && !el.hidden && /Processing|Queued/.test(el.textContent);
  }, null, { timeout: 60000 });
  report.cancel = { statusBefore: await page.locator(".hunyuancustom-status").textContent() };
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.Interrupt"));
  const after = await waitForHistory(page, 3);
  report.cancel.events = after.entries.map((e) => e.map((m) => m[0]));
  report.cancel.statusHidden = await page.evaluate(() => document.querySelector(".hunyuancustom-status").hidden);
  report.cancel.info = await infoText();
  step("cancel");

  // The same inputs again: the journal resumes the cancelled task.
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  const resumed = await waitForHistory(page, 4);
  report.resumed = { info: await infoText(), output: resumed.last?.["2"]?.images?.[0] ?? null };
  step("resumed");

  // Its saved video deleted; the node runs again (image_index 0 is the same single image, so the
  // same request): the video is fetched again from its task.
  const saved = report.resumed.output;
  if (saved) fs.rmSync(`${cfg.outputDir}/${saved.subfolder}/${saved.filename}`, { force: true });
  await setWidget("image_index", 0);
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  await waitForHistory(page, 5);
  report.refetched = { info: await infoText() };
  step("refetched");

  // force_new over a request already paid for: a new task, billed again.
  await setWidget("force_new", true);
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  await waitForHistory(page, 6);
  report.billedAgain = { info: await infoText() };
  step("billed again");
}

// The cloud node inside a subgraph: its execution id is "outer:inner", and the status line and
// the result line must reach that inner node.
async function runInSubgraph(page) {
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, null); },
    cfg.workflows[cfg.cloudWorkflow]);
  report.subgraph = await page.evaluate(() => {
    const g = window.app.graph;
    const cloud = g.nodes.find((n) => n.type.startsWith("HunyuanCustomCloud"));
    cloud.widgets.find((w) => w.name === "force_new").value = true; // a new task, not the cache
    const made = g.convertToSubgraph(new Set([cloud]));
    const outer = made?.node ?? g.nodes.find((n) => n.subgraph);
    const inner = outer?.subgraph?.nodes.find((n) => n.type.startsWith("HunyuanCustomCloud"));
    window.__hcInner = inner;
    window.__hcInnerStatus = [];
    const panel = inner?.widgets?.find((w) => w.name === "hunyuancustom_panel")?.element;
    if (panel) {
      new MutationObserver(() => {
        const el = panel.querySelector(".hunyuancustom-status");
        if (!el.hidden) window.__hcInnerStatus.push(el.textContent.trim());
      }).observe(panel, { subtree: true, childList: true, characterData: true, attributes: true });
    }
    return { outerId: outer?.id ?? null, innerId: inner?.id ?? null, hasPanel: Boolean(panel) };
  });
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  const done = await waitForHistory(page, 8);
  report.subgraph.events = done.entries.map((e) => e.map((m) => m[0]));
  Object.assign(report.subgraph, await page.evaluate(() => {
    const panel = window.__hcInner?.widgets?.find((w) => w.name === "hunyuancustom_panel")?.element;
    return {
      statusSeen: window.__hcInnerStatus,
      statusHiddenAfter: panel?.querySelector(".hunyuancustom-status").hidden ?? null,
      info: panel?.querySelector(".hunyuancustom-info")?.hidden === false
        ? panel.querySelector(".hunyuancustom-info-text").textContent : null,
    };
  }));
  step("subgraph");
}

// Poll the server's queue and history (as a client would) until `count` prompts have finished.
async function waitForHistory(page, count) {
  const read = () => page.evaluate(async () => {
    const q = await (await fetch("api/queue")).json();
    const h = await (await fetch("api/history")).json();
    const all = Object.values(h);
    return { idle: q.queue_running.length === 0 && q.queue_pending.length === 0,
      entries: all.map((e) => (e.status?.messages || [])),
      inputs: all.map((e) => e.prompt?.[2]),
      last: all.length ? all.reduce((a, b) => ((a.prompt?.[0] ?? 0) >= (b.prompt?.[0] ?? 0) ? a : b)).outputs : null };
  });
  const deadline = Date.now() + 120000;
  let h = await read();
  while (!(h.idle && h.entries.length >= count) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250)); // polling the server, not timing anything
    h = await read();
  }
  return h;
}

// The <video> the front end shows on the cloud node itself (not on the Save Video node).
async function videoState(page) {
  // The front end adds the preview widget when the node next draws after "executed", which can
  // come after our info line: wait for it (a missing preview still fails the test below).
  await page.waitForFunction(() => {
    const node = window.app.graph.nodes.find((n) => n.type.startsWith("HunyuanCustomCloud"));
    return (node?.widgets || []).some((w) => w.element
      && (w.element.tagName === "VIDEO" || w.element.querySelector?.("video")));
  }, null, { timeout: 30000 }).catch(() => {});
  return page.evaluate(async () => {
    const node = window.app.graph.nodes.find((n) => n.type.startsWith("HunyuanCustomCloud"));
    const els = (node.widgets || []).map((w) => w.element).filter(Boolean);
    const v = els.map((el) => (el.tagName === "VIDEO" ? el : el.querySelector?.("video"))).find(Boolean);
    if (!v) return { missing: true, widgets: (node.widgets || []).map((w) => `${w.name}:${w.type}`) };
    if (v.readyState < 2) {
      await new Promise((r) => { v.addEventListener("loadeddata", r, { once: true }); setTimeout(r, 20000); });
    }
    return { src: v.currentSrc || v.src, readyState: v.readyState, width: v.videoWidth,
      height: v.videoHeight, duration: v.duration, visible: v.getBoundingClientRect().width > 0 };
  });
}

main().then(() => { process.stdout.write(JSON.stringify(report)); },
  (e) => { report.error = String(e && e.stack || e); process.stdout.write(JSON.stringify(report)); process.exitCode = 1; });
