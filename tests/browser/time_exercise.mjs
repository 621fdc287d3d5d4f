// An exercise notebook in JupyterLab as a class meets it, timed: open it, put every solution in its stub's cell, run
// all once, save (the lab records each cell's timing in its metadata when `recordTiming` is on; scripts/lab_waits.py
// turns it on and reads the saved notebook).
// Usage: node time_exercise.mjs URL [DEADLINE_S]  -> prints one JSON line, always, within the deadline
import { checkRun, end, fillSolutions, launch, openNotebook, waitForKernel } from "./harness.mjs";

const [url, deadlineArg] = process.argv.slice(2);
const deadline = Number(deadlineArg || 1800);
const { result, step, finish } = checkRun(deadline);
const browser = await launch(deadline);
let page;
try {
  let errors;
  ({ page, errors } = await openNotebook(browser, url, step));
  await waitForKernel(page, step);
  result.filled = await fillSolutions(page);
  result.run_ok = await page.evaluate(() => window.jupyterapp.commands.execute("notebook:run-all-cells"));
  step("ran all");
  result.errors = await page.evaluate(() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter((w) => w.model.type === "code")
    .flatMap((w) => w.model.outputs.toJSON().filter((o) => o.output_type === "error").map((o) => `${o.ename}: ${o.evalue}`)));
  await page.evaluate(() => window.jupyterapp.commands.execute("docmanager:save"));
  await page.waitForFunction(() => !window.jupyterapp.shell.currentWidget.context.model.dirty, { timeout: 60000 });
  step("saved");
  result.page_errors = errors;
  if (!result.run_ok || result.errors.length) result.failure = `run-all failed: ${result.errors.join(" | ")}`;
} catch (e) {
  result.failure = String(e);
}
await end(browser, page, result, finish, "/tmp/time_exercise.png");
