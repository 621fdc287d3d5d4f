// What every JupyterLab check shares: one JSON result printed always, within a deadline; headless Chromium;
// opening a notebook; a screenshot when a step failed.
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";

/** A check's `result` (printed as one JSON line by `finish`, also when the deadline passes first, so the test sees
 * how far it got) and `step(name)`, which records a step with its time. */
export function checkRun(deadlineS) {
  const t0 = Date.now();
  const result = { steps: [] };
  const step = (name) => {
    const s = `${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`;
    result.steps.push(s); console.error(s);
  };
  const finish = (code) => { console.log(JSON.stringify(result)); process.exit(code); };
  setTimeout(() => { result.failure = result.failure || `deadline of ${deadlineS} s reached`; finish(2); },
    1000 * deadlineS);
  return { result, step, finish };
}

/** Headless Chromium from @sparticuz/chromium; no browser call waits past the deadline. */
export async function launch(deadlineS) {
  return puppeteer.launch({
    args: chromium.args, executablePath: await chromium.executablePath(), headless: true,
    defaultViewport: { width: 1400, height: 1000 }, protocolTimeout: 1000 * deadlineS,
  });
}

/** Open a JupyterLab notebook URL and wait for the notebook panel; the page's uncaught errors collect in `errors`. */
export async function openNotebook(browser, url, step) {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: "networkidle2", timeout: 120000 });
  step("page opened");
  await page.waitForFunction(() => window.jupyterapp && document.querySelector(".jp-Notebook"), { timeout: 90000 });
  return { page, errors };
}

/** The end of every check: a screenshot if it failed ($SHOT or `shot`), the browser closed (not awaited past 10 s),
 * the result printed. */
export async function end(browser, page, result, finish, shot) {
  if (result.failure && page) {
    try {
      await page.screenshot({ path: process.env.SHOT || shot });
      result.screenshot = process.env.SHOT || shot;
    } catch (e) { result.diagnostics_failed = String(e); }
  }
  await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 10000))]);
  finish(result.failure ? 1 : 0);
}

/** Wait until the open notebook's kernel has started (an exercise copy's cells run on it next). */
export async function waitForKernel(page, step) {
  await page.waitForFunction(() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel,
    { timeout: 90000 });
  step("kernel started");
}

/** Put every exercise's solution (the code block of the first "Solution" cell below it) in its stub's cell, as a
 * learner who gave up would; returns how many were filled. */
export async function fillSolutions(page) {
  return page.evaluate(() => {
    const cells = window.jupyterapp.shell.currentWidget.content.widgets;
    let n = 0;
    cells.forEach((w, i) => {
      const tags = w.model.getMetadata("tags") || [];
      if (!tags.includes("exercise")) return;
      const next = cells.slice(i + 1).find((c) => c.model.sharedModel.getSource().includes("<b>Solution</b>"));
      const solution = next.model.sharedModel.getSource();
      w.model.sharedModel.setSource(solution.split("```python\n")[1].split("\n```")[0]);
      n += 1;
    });
    return n;
  });
}
