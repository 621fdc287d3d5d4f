// An exercise notebook in JupyterLab, as a learner meets it: open it, reveal a solution with one click, run all with
// the stubs (the first check must fail with the stub's message), then put every solution in its stub's cell and run
// all again (every check must pass, no error anywhere).
// Usage: node check_exercise.mjs URL [DEADLINE_S]  -> prints one JSON line, always, within the deadline
import { checkRun, end, fillSolutions, launch, openNotebook, waitForKernel } from "./harness.mjs";

const [url, deadlineArg] = process.argv.slice(2);
const deadline = Number(deadlineArg || 900);
const { result, step, finish } = checkRun(deadline);
const browser = await launch(deadline);
let page;
// Every code cell's outputs as text: streams, errors ("ename: evalue") and text/plain results.
const outputs = () => page.evaluate(() => {
  const panel = window.jupyterapp.shell.currentWidget;
  return panel.content.widgets.filter((w) => w.model.type === "code").map((w) => w.model.outputs.toJSON().map((o) =>
    o.output_type === "stream" ? String(o.text)
      : o.output_type === "error" ? `ERROR ${o.ename}: ${o.evalue}`
        : String((o.data || {})["text/plain"] || "")).join("\n"));
});
try {
  let errors;
  ({ page, errors } = await openNotebook(browser, url, step));
  await waitForKernel(page, step);
  // 1. The solution is one click away: a collapsed <details> under the first exercise (after its hints, each
  // collapsed too).
  await page.waitForSelector(".jp-RenderedMarkdown details summary", { timeout: 60000 });
  // the solution's block: the first <details> whose summary says Solution (the hints' say Hint 1, Hint 2, ...)
  const FIND = `[...document.querySelectorAll(".jp-RenderedMarkdown details")]
    .find((d) => d.querySelector("summary").textContent.includes("Solution"))`;
  await page.waitForFunction(`Boolean(${FIND})`, { timeout: 60000 });
  result.hints_collapsed = await page.evaluate(() => [...document.querySelectorAll(".jp-RenderedMarkdown details")]
    .filter((d) => d.querySelector("summary").textContent.startsWith("Hint")).every((d) => !d.open));
  result.collapsed_before = await page.evaluate(`!${FIND}.open`);
  // a click on the summary (through the DOM: a mouse click at coordinates can land on an overlay while the lab lays out)
  await page.evaluate(`${FIND}.querySelector("summary").click()`);
  await page.waitForFunction(`${FIND}.open`, { timeout: 10000 });
  // textContent: the code is in the opened block (innerText is empty for a cell the windowed notebook has not laid out)
  result.revealed = await page.evaluate(`${FIND}.textContent.slice(0, 400)`);
  step("solution revealed");
  // 2. Run all with the stubs: run-all stops at the first failing check.
  result.first_run_ok = await page.evaluate(() => window.jupyterapp.commands.execute("notebook:run-all-cells"));
  const first = await outputs();
  result.first_run_errors = first.filter((t) => t.includes("ERROR"));
  // the setup cell's one line when it built what the notebook reads (the second run finds it built)
  result.cold_start = first.join("\n").split("\n").filter((l) => l.startsWith("Cold start:"));
  step("ran with the stubs");
  // 3. Fill every stub with the solution below it, as a learner who gave up would, and run all again.
  result.filled = await fillSolutions(page);
  result.second_run_ok = await page.evaluate(() => window.jupyterapp.commands.execute("notebook:run-all-cells"));
  const texts = await outputs();
  result.errors_after = texts.filter((t) => t.includes("ERROR"));
  result.passed_checks = texts.join("\n").split("\n").filter((l) => l.startsWith("✓ "));
  result.cold_start_again = texts.join("\n").split("\n").filter((l) => l.startsWith("Cold start:"));
  result.results_written = texts.some((t) => t.includes("results written to"));
  result.last_output = texts[texts.length - 1].slice(0, 300);
  step("ran with the solutions");
  result.page_errors = errors;
} catch (e) {
  result.failure = String(e);
}
await end(browser, page, result, finish, "/tmp/exercise.png");
