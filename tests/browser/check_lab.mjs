// Drive JupyterLab in headless Chromium: open a notebook, run all cells, wait for the explorer widget,
// type a new instruction and wait for the widget's output to change.
// Usage: node check_lab.mjs URL NEW_INSTRUCTION   -> prints one JSON line
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";

const [url, instruction] = process.argv.slice(2);
const browser = await puppeteer.launch({
  args: chromium.args, executablePath: await chromium.executablePath(), headless: true,
  defaultViewport: { width: 1400, height: 1000 },
});
const result = { steps: [] };
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: "networkidle2", timeout: 120000 });
  console.error("page opened");
  await page.waitForFunction(() => window.jupyterapp && document.querySelector(".jp-Notebook"), { timeout: 90000 })
    .catch(async (e) => { await page.screenshot({ path: process.env.SHOT || "/tmp/lab.png" }); throw e; });
  result.steps.push("lab loaded"); console.error("lab loaded");
  await new Promise((r) => setTimeout(r, 3000));
  await page.evaluate(() => window.jupyterapp.commands.execute("notebook:run-all-cells"));
  result.steps.push("run all"); console.error("run all");
  await page.waitForSelector(".widget-text input", { timeout: 180000 })
    .catch(async (e) => { await page.screenshot({ path: process.env.SHOT || "/tmp/lab.png" }); throw e; });
  const outputText = () => page.evaluate(() => {
    const out = document.querySelector(".widget-output");
    return out ? out.innerText : "";
  });
  await page.waitForFunction(() => {
    const out = document.querySelector(".widget-output");
    return out && out.innerText.includes("refusal metric");
  }, { timeout: 240000 });
  result.before = await outputText();
  result.steps.push("widget rendered"); console.error("widget rendered");
  const input = await page.$(".widget-text input");
  await input.click({ clickCount: 3 });
  await input.type(instruction, { delay: 20 });  // replaces the selected default
  await new Promise((r) => setTimeout(r, 1000));  // let the value reach the kernel before submitting
  await page.keyboard.press("Enter");
  await page.waitForFunction((before) => {
    const out = document.querySelector(".widget-output");
    return out && out.innerText.includes("refusal metric") && out.innerText !== before;
  }, { timeout: 240000 }, result.before);
  result.after = await outputText();
  result.steps.push("output changed");
  result.errors = errors;
} catch (e) {
  result.failure = String(e);
} finally {
  console.log(JSON.stringify(result));
  await browser.close();
}
