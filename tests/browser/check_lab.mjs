// Drive JupyterLab in headless Chromium: open a notebook, run all cells, wait for the explorer widget,
// type a new instruction, press Enter and wait for the widget's output to change.
// Usage: node check_lab.mjs URL NEW_INSTRUCTION [DEADLINE_S]  -> prints one JSON line, always, within the deadline
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";

const [url, instruction, deadlineArg] = process.argv.slice(2);
const t0 = Date.now();
const result = { steps: [] };
const step = (name) => {
  const s = `${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`;
  result.steps.push(s); console.error(s);
};
const finish = (code) => { console.log(JSON.stringify(result)); process.exit(code); };
// One deadline for the whole check, below the test's own timeout, so the JSON (with the last output seen)
// is printed even when a step hangs; browser.close() is not awaited past it either.
setTimeout(() => { result.failure = result.failure || `deadline of ${deadlineArg || 600} s reached`; finish(2); },
  1000 * Number(deadlineArg || 600));

const browser = await puppeteer.launch({
  args: chromium.args, executablePath: await chromium.executablePath(), headless: true,
  defaultViewport: { width: 1400, height: 1000 },
});
let page;
const outputText = () => page.evaluate(() => {
  const out = document.querySelector(".widget-output");
  return out ? out.innerText : "";
});
try {
  page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: "networkidle2", timeout: 120000 });
  step("page opened");
  await page.waitForFunction(() => window.jupyterapp && document.querySelector(".jp-Notebook"), { timeout: 90000 });
  step("lab loaded");
  await new Promise((r) => setTimeout(r, 3000));
  await page.evaluate(() => window.jupyterapp.commands.execute("notebook:run-all-cells"));
  step("run all");
  await page.waitForSelector(".widget-text input", { timeout: 180000 });
  await page.waitForFunction(() => {
    const out = document.querySelector(".widget-output");
    return out && out.innerText.includes("refusal metric");
  }, { timeout: 240000 });
  result.before = await outputText();
  step("widget rendered");
  const input = await page.$(".widget-text input");
  await input.click({ clickCount: 3 });
  await input.type(instruction, { delay: 20 });  // replaces the selected default
  result.typed = await page.evaluate(() => document.querySelector(".widget-text input").value);
  await page.keyboard.press("Enter");  // the text box syncs its value on Enter; the explorer observes it
  step("submitted");
  await page.waitForFunction((before) => {
    const out = document.querySelector(".widget-output");
    return out && out.innerText.includes("refusal metric") && out.innerText !== before;
  }, { timeout: 240000 }, result.before);
  result.after = await outputText();
  step("output changed");
  result.errors = errors;
} catch (e) {
  result.failure = String(e);
  try {
    result.last_output = (await outputText()).slice(0, 2000);
    await page.screenshot({ path: process.env.SHOT || "/tmp/lab.png" });
    result.screenshot = process.env.SHOT || "/tmp/lab.png";
  } catch (e2) { result.diagnostics_failed = String(e2); }
}
await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 10000))]);
finish(result.failure ? 1 : 0);
