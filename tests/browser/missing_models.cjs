// Opens each given workflow in the real front end of a ComfyUI that lacks the model files and
// prints what the front end shows about missing models: the text of its "Missing Models" dialog
// (front end 1.27) or of the errors panel behind "View details" (1.49). Driven by
// tests/test_browser_models.py; input: a JSON file (argv[2]) with url, chromium, userDataDir,
// workflows (name -> UI workflow).
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function closeAll(page) {
  for (let i = 0; i < 3; i++) { await page.keyboard.press("Escape"); await page.waitForTimeout(200); }
}

async function main() {
  const report = { shown: {}, version: null };
  const context = await chromium.launchPersistentContext(cfg.userDataDir, {
    executablePath: cfg.chromium, headless: true, args: FLAGS, viewport: { width: 1400, height: 900 },
  });
  const page = context.pages()[0] ?? await context.newPage();
  try {
    await page.goto(cfg.url, { waitUntil: "load" });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph
      && Object.keys(window.LiteGraph.registered_node_types).some((t) => t.startsWith("HunyuanCustom")),
    null, { timeout: 120000 });
    await page.waitForLoadState("networkidle");
    await closeAll(page);  // the first visit's template browser
    report.version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    for (const [name, wf] of Object.entries(cfg.workflows)) {
      await page.evaluate(async (w) => { await window.app.loadGraphData(w, true, true, null); }, wf);
      // 1.27: a dialog titled "Missing Models"; 1.49: "N errors found" with "View details".
      const dialog = page.getByText("Missing Models", { exact: true });
      const details = page.getByText("View details", { exact: true });
      await Promise.race([dialog.first().waitFor({ timeout: 15000 }), details.first().waitFor({ timeout: 15000 })])
        .catch(() => {});
      if (await details.count() > 0) {
        await details.first().click();
        await dialog.first().waitFor({ timeout: 10000 }).catch(() => {});
      }
      report.shown[name] = await dialog.count() > 0
        ? await page.evaluate(() => document.body.innerText) : null;
      await closeAll(page);
    }
  } catch (e) {
    report.error = String(e?.stack || e);
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(report));
}

main();
