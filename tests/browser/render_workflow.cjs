// Opens example workflows in the real ComfyUI front end (headless Chromium), prints what the front
// end's own graphToPrompt makes of each, and saves a picture of one. Driven by
// tests/browser/render_workflow.py (not a test); input: a JSON file (argv[2]) with url, chromium,
// userDataDir, workflows (name -> UI workflow), shot {name, path, width, height}.
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function main() {
  const report = { prompts: {}, warnings: {}, consoleErrors: [] };
  const context = await chromium.launchPersistentContext(cfg.userDataDir, {
    executablePath: cfg.chromium, headless: true, args: FLAGS,
    viewport: { width: cfg.shot.width, height: cfg.shot.height },
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") report.consoleErrors.push(m.text()); });
  try {
    await page.goto(cfg.url, { waitUntil: "load" });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph
      && Object.keys(window.LiteGraph.registered_node_types).some((t) => t.startsWith("HunyuanCustom")),
    null, { timeout: 120000 });
    await page.waitForLoadState("networkidle");
    // The first visit's template browser ("Get Started with a Template" in 1.27, "Templates" in
    // 1.49, which opens a moment later): closed before anything else.
    await page.waitForSelector(".p-dialog, [role='dialog']", { timeout: 10000 }).catch(() => {});
    for (let i = 0; i < 10 && await page.locator(".p-dialog, [role='dialog']").count() > 0; i++) {
      await page.keyboard.press("Escape");
      await page.waitForTimeout(300);
    }
    const startupErrors = report.consoleErrors.length;
    report.startupErrors = report.consoleErrors.slice(0, startupErrors);  // the page's own, before any workflow
    for (const [name, wf] of Object.entries(cfg.workflows)) {
      const logged = report.consoleErrors.length;
      await page.evaluate(async (w) => { await window.app.loadGraphData(w, true, true, null); }, wf);
      // The prompt as the Run button sends it once the page has settled: Load Video's preview is a
      // widget the front end adds only when the video has loaded, and it goes into the prompt
      // (video-preview: ""); asked for at once, the prompt would depend on how fast that was.
      report.videoPreviews ??= {};
      report.videoPreviews[name] = await page.waitForFunction(() => window.app.graph.nodes
        .filter((n) => n.type === "LoadVideo")
        .every((n) => n.widgets?.some((x) => x.name === "video-preview")), null, { timeout: 30000 })
        .then(() => true, () => false);
      report.prompts[name] = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
      report.warnings[name] = await warningsShown(page, logged, report);
    }
    // No minimap or canvas info in the picture; every node drawn in full at any zoom.
    await page.evaluate(async () => {
      const settings = window.app.extensionManager.setting;
      await settings.set("Comfy.Minimap.Visible", false);
      await settings.set("Comfy.Graph.CanvasInfo", false);
      window.app.canvas.min_font_size_for_lod = 0;
    });
    await page.evaluate(async (w) => { await window.app.loadGraphData(w, true, true, null); },
      cfg.workflows[cfg.shot.name]);
    // The reference image's preview, then the whole graph (nodes and groups) fitted to the canvas.
    await page.waitForFunction(() => window.app.graph.nodes.filter((n) => n.type === "LoadImage")
      .every((n) => n.imgs?.[0]?.complete && n.imgs[0].naturalWidth > 0), null, { timeout: 30000 });
    const bounds = await page.evaluate(() => {
      const app = window.app, canvas = app.canvas;
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      const add = (x, y, w, h) => { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h); };
      for (const n of app.graph.nodes) add(n.pos[0], n.pos[1] - 32, n.size[0], n.size[1] + 32);
      for (const g of app.graph.groups ?? app.graph._groups ?? []) add(...g._bounding ?? g.bounding);
      const el = canvas.canvas, margin = 24;
      const w = el.clientWidth, h = el.clientHeight;
      const scale = Math.min((w - 2 * margin) / (x1 - x0), (h - 2 * margin) / (y1 - y0));
      canvas.ds.scale = scale;
      canvas.ds.offset[0] = (w / scale - (x1 - x0)) / 2 - x0;
      canvas.ds.offset[1] = (h / scale - (y1 - y0)) / 2 - y0;
      canvas.setDirty(true, true);
      canvas.draw(true, true);
      const r = el.getBoundingClientRect();
      return { x: r.x, y: r.y, width: r.width, height: r.height, scale };
    });
    report.scale = bounds.scale;
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
    await page.screenshot({ path: cfg.shot.path, clip: { x: bounds.x, y: bounds.y, width: bounds.width, height: bounds.height } });
  } catch (e) {
    report.error = String(e?.stack || e);
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(report));
}

// What the front end tells a user on opening a workflow: its dialogs and toasts (missing nodes,
// missing models, "N errors found" in 1.49, a validation or widget-value warning) and the
// console errors logged meanwhile. Closed again so the next workflow starts clean.
async function warningsShown(page, logged, report) {
  await page.waitForTimeout(1500);  // the missing-models check and toasts come after loadGraphData
  // 1.49's error overlay (missing nodes, models or media: "N errors found") is a role=status box.
  const shown = await page.evaluate(() => [...document.querySelectorAll(
    ".p-dialog, .p-toast-message, [role='dialog'], [role='alert'], [data-testid='error-overlay']")]
    .map((d) => d.innerText.trim()).filter((t) => t));
  for (let i = 0; i < 3 && shown.length; i++) { await page.keyboard.press("Escape"); await page.waitForTimeout(200); }
  // 1.49's error overlay does not close on Escape: its X button.
  for (const x of await page.locator("[data-testid='error-overlay-dismiss']").all()) await x.click().catch(() => {});
  return [...shown, ...report.consoleErrors.slice(logged).map((e) => `console: ${e}`)];
}

main();
