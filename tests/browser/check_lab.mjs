// Drive JupyterLab in headless Chromium: open a notebook, run all cells, wait for the explorer widget,
// type a new instruction, press Enter and wait for the widget's output to change.
// Usage: node check_lab.mjs URL NEW_INSTRUCTION [DEADLINE_S]  -> prints one JSON line, always, within the deadline
import { checkRun, end, launch, openNotebook } from "./harness.mjs";

const [url, instruction, deadlineArg] = process.argv.slice(2);
const deadline = Number(deadlineArg || 600);
const { result, step, finish } = checkRun(deadline);
const browser = await launch(deadline);
let page;
const outputText = () => page.evaluate(() => {
  const out = document.querySelector(".widget-output");
  return out ? out.innerText : "";
});
try {
  let errors;
  ({ page, errors } = await openNotebook(browser, url, step));
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
  try { result.last_output = (await outputText()).slice(0, 2000); } catch (e2) { result.diagnostics_failed = String(e2); }
}
await end(browser, page, result, finish, "/tmp/lab.png");
