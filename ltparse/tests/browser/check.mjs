// Looks at an ltparse HTML report in a real browser: headless Chromium, driven over the DevTools
// protocol. Loads the file, collects every console message, uncaught exception, browser log
// error and failed load, then measures each chart as rendered (its size on the page, its lines
// and whether their points lie inside the plot, text overlapping other text or cut off at the
// chart's edge) and saves a full-page screenshot.
//
// Usage: node check.mjs REPORT.html SCREENSHOT.png
// Prints one JSON object ({errors, charts: [{title, width, height, lines, points, outside,
// overlaps, clipped, drawn}], ...})
// and exits 0 when there is no error and every chart drew data, 1 otherwise, 2 on a harness
// failure. CHROMIUM names the browser (default: chromium).
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import WebSocket from "ws";

const [report, screenshot] = process.argv.slice(2);
if (!report || !screenshot) {
  console.error("usage: node check.mjs REPORT.html SCREENSHOT.png");
  process.exit(2);
}
const profile = mkdtempSync(join(tmpdir(), "ltparse-chromium-"));
const browser = spawn(process.env.CHROMIUM ?? "chromium", [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
  `--user-data-dir=${profile}`, "--window-size=1280,900", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"], detached: true });
// Chromium and every helper process it started (its own process group) end with this script.
const done = async (code) => {
  if (browser.exitCode === null && browser.signalCode === null) {
    const exited = new Promise((ok) => browser.once("exit", ok));
    try {
      process.kill(-browser.pid, "SIGKILL");
    } catch {
      browser.kill("SIGKILL");
    }
    await exited;
  }
  try {
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  } catch (e) {
    console.error(`note: could not remove ${profile}: ${e.message}`);
  }
  process.exit(code);
};
const deadline = setTimeout(() => {
  console.error("chromium did not finish within 60 s");
  done(2);
}, 60_000);

const endpoint = await new Promise((ok, fail) => {
  let seen = "";
  browser.stderr.on("data", (chunk) => {
    seen += chunk;
    const m = seen.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) ok(m[1]);
  });
  browser.on("exit", (code) => fail(new Error(`chromium exited (${code}) before listening:\n${seen}`)));
}).catch(async (e) => {
  console.error(e.message);
  await done(2);
});

const ws = new WebSocket(endpoint, { perMessageDeflate: false });
await new Promise((ok) => ws.once("open", ok));
let nextId = 0;
const pending = new Map();
const listeners = [];
ws.on("message", (data) => {
  const msg = JSON.parse(data);
  if (msg.id !== undefined && pending.has(msg.id)) {
    const { ok, fail } = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.error) fail(new Error(`${msg.error.message} (${msg.error.code})`));
    else ok(msg.result);
  } else if (msg.method) {
    for (const l of listeners) l(msg);
  }
});
const send = (method, params = {}, sessionId) =>
  new Promise((ok, fail) => {
    const id = ++nextId;
    pending.set(id, { ok, fail });
    ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
  });

const errors = [];
const { targetId } = await send("Target.createTarget", { url: "about:blank" });
const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
const page = (method, params) => send(method, params, sessionId);
const loaded = new Promise((ok) => {
  listeners.push((msg) => {
    if (msg.sessionId !== sessionId) return;
    const p = msg.params;
    switch (msg.method) {
      case "Page.loadEventFired":
        ok();
        break;
      case "Runtime.consoleAPICalled":
        if (["error", "warning", "assert"].includes(p.type)) {
          errors.push(`console.${p.type}: ${p.args.map((a) => a.value ?? a.description).join(" ")}`);
        }
        break;
      case "Runtime.exceptionThrown":
        errors.push(`exception: ${p.exceptionDetails.exception?.description ?? p.exceptionDetails.text}`);
        break;
      case "Log.entryAdded":
        if (p.entry.level === "error") errors.push(`log: ${p.entry.text} ${p.entry.url ?? ""}`.trim());
        break;
      case "Network.loadingFailed":
        errors.push(`failed load: ${p.errorText} (${p.type})`);
        break;
    }
  });
});
await page("Page.enable");
await page("Runtime.enable");
await page("Log.enable");
await page("Network.enable");
await page("Page.navigate", { url: pathToFileURL(resolve(report)).href });
await loaded;

// Every chart as the browser laid it out: size, lines drawn and their points within the plot.
const measure = `(() => {
  const charts = [...document.querySelectorAll("svg[role=img]")].map((svg) => {
    const box = svg.getBoundingClientRect();
    const plot = svg.querySelector("rect").getBBox();
    let points = 0, lines = 0, outside = 0;
    for (const el of svg.querySelectorAll("polyline, circle")) {
      const pts = el.tagName === "circle"
        ? [{ x: el.cx.baseVal.value, y: el.cy.baseVal.value }]
        : [...el.points];
      if (pts.length === 0) continue;
      lines += 1;
      points += pts.length;
      for (const p of pts) {
        if (p.x < plot.x - 0.5 || p.x > plot.x + plot.width + 0.5 ||
            p.y < plot.y - 0.5 || p.y > plot.y + plot.height + 0.5) outside += 1;
      }
    }
    // Text that overlaps other text (a legend over a long title, crowded ticks) is unreadable.
    const boxes = [...svg.querySelectorAll("text")].map((t) => t.getBBox());
    const view = svg.viewBox.baseVal;
    const clipped = boxes.filter((b) => b.x < -0.5 || b.y < -0.5 ||
      b.x + b.width > view.width + 0.5 || b.y + b.height > view.height + 0.5).length;
    let overlaps = 0;
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        const w = Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x);
        const h = Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y);
        if (w > 1 && h > 1) overlaps += 1;
      }
    }
    const title = svg.querySelector("title")?.textContent ?? "";
    return { title, width: Math.round(box.width), height: Math.round(box.height), lines, points, outside,
             overlaps, clipped,
             drawn: box.width > 0 && box.height > 0 && lines > 0 && outside === 0 && overlaps === 0 &&
               clipped === 0 };
  });
  const h = document.documentElement;
  return { title: document.title, sections: [...document.querySelectorAll("h2")].map((e) => e.textContent),
           width: h.scrollWidth, height: h.scrollHeight, charts };
})()`;
const { result, exceptionDetails } = await page("Runtime.evaluate", { expression: measure, returnByValue: true });
if (exceptionDetails) {
  console.error(`measuring failed: ${exceptionDetails.text}`);
  await done(2);
}
const layout = result.value;
const shot = await page("Page.captureScreenshot", {
  format: "png",
  captureBeyondViewport: true,
  clip: { x: 0, y: 0, width: Math.min(layout.width, 4000), height: Math.min(layout.height, 16000), scale: 1 },
});
writeFileSync(screenshot, Buffer.from(shot.data, "base64"));
clearTimeout(deadline);
const ok = errors.length === 0 && layout.charts.length > 0 && layout.charts.every((c) => c.drawn);
console.log(JSON.stringify({ ok, errors, ...layout }, null, 1));
ws.close();
done(ok ? 0 : 1);
