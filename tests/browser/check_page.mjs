// Open a local HTML page in headless Chromium; report plotly figures that did not render and page errors.
// Usage: node check_page.mjs /path/to/page.html   -> prints one JSON line
import { launch } from "./harness.mjs";

const page_path = process.argv[2];
const browser = await launch(120);
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
  await page.goto(`file://${page_path}`, { waitUntil: "load", timeout: 60000 });
  await new Promise((r) => setTimeout(r, 1500));
  const figures = await page.evaluate(() => {
    const divs = [...document.querySelectorAll(".plotly-graph-div")];
    return divs.map((d) => ({ id: d.id, svg: d.querySelectorAll("svg").length, traces: (d.data || []).length }));
  });
  const title = await page.title();
  console.log(JSON.stringify({ title, figures, errors }));
} finally {
  await browser.close();
}
