// Drives Debian's Chromium through the Prefect UI (V2, the UI's default) for tools/ui_tour.py.
//   node shoot.mjs form    <deployment page URL> <png> <service> <key> <operator> <reason>
//   node shoot.mjs page    <URL> <png> [text to wait for]
//   node shoot.mjs refused <flow run page URL> <png> <approver> <reason>
//   node shoot.mjs resume  <flow run page URL> <png> <approver> <reason>
//   node shoot.mjs dry-run <deployment page URL> <png> <filled png> <request JSON> <operator>
//                          <reason>
// `form` opens Run > Custom run, fills the text fields (switches left at their defaults), shoots,
// then turns dry_run off and require_approval on and submits (it waits for the flow run Submit
// creates, HTTP 201, and prints `flow-run: <id>`; a click that sent nothing, or that Prefect
// answered 503, is retried: its SQLite answers "database is locked" now and then). `refused`
// opens the run's menu > Resume, fills who and why but chooses no Decision, clicks Resume and
// shoots what the form says (it prints `refused: <status> <message>`; it fails if the dialog
// closes). `resume` does the same, chooses "approve" in Decision, shoots, then submits (it must be
// accepted; a 503 is clicked again). `dry-run` opens Run > Custom run and
// shoots the form as it opens (its defaults: dry_run on, require_approval off, which it checks),
// then gives `request` as JSON (its ⋮ menu > Use JSON Input: no str/None type toggles to click),
// fills operator and reason, shoots again and submits, as `form` does. Every step that does not
// happen throws, saying which.
import { chromium } from 'playwright-core';

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const [command, url, png, ...rest] = process.argv.slice(2);

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(60000); // 2 shared cores: the UI can take a while to render
  await page.goto(url, { waitUntil: 'networkidle' });
  if (command === 'form') await customRun(page, ...rest);
  else if (command === 'page') await shoot(page, rest[0]);
  else if (command === 'refused') await refused(page, ...rest);
  else if (command === 'resume') await resume(page, ...rest);
  else if (command === 'dry-run') await dryRun(page, ...rest);
  else throw new Error(`unknown command ${command}`);
} finally {
  await browser.close();
}

// The whole page in one PNG: the viewport grown to the content (a full-page shot of a taller
// page would cut the fixed sidebar at the first screen).
async function shoot(page, waitFor, to = png) {
  if (waitFor) await page.getByText(waitFor).first().waitFor();
  await page.evaluate(() => document.activeElement?.blur()); // no focus ring in the picture
  await page.waitForTimeout(1500);
  const height = await page.evaluate(() => document.documentElement.scrollHeight);
  await page.setViewportSize({ width: 1400, height: Math.max(900, Math.min(height, 4000)) });
  await page.waitForTimeout(500);
  await page.screenshot({ path: to });
}

async function customRun(page, service, key, operator, reason) {
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await page.getByRole('menuitem', { name: 'Custom run' }).click();
  const box = (name) => page.getByRole('textbox', { name, exact: true });
  await box('Service name').fill(service);
  await box('Service key').fill(key);
  await box('operator').fill(operator);
  await box('reason').fill(reason);
  await shoot(page);
  await page.setViewportSize({ width: 1400, height: 900 });
  await page.getByRole('switch', { name: /^dry_run/ }).click();
  await page.getByRole('switch', { name: /^require_approval/ }).click();
  await submit(page);
}

// The flow runs of that name (the form's Run Name), through Prefect's REST API.
async function runsNamed(page, name) {
  if (!name) return [];
  const api = `${new URL(page.url()).origin}/api/flow_runs/filter`;
  const answer = await page.request.post(api, { data: { flow_runs: { name: { any_: [name] } } } });
  if (!answer.ok()) throw new Error(`${api}: HTTP ${answer.status()}`);
  return answer.json();
}

// Submit the run form and wait for the flow run it creates (HTTP 201); returns the run. A click
// that sent nothing (the form not ready yet) is retried, and so is one Prefect answers 503 (its
// answer for errors worth retrying) when no run of the form's Run Name exists; what the form's
// validation answered and any message on the page are in the error when no run is created.
async function submit(page) {
  const isCreate = (r) => r.method() === 'POST'
    && /\/deployments\/[^/]+\/create_flow_run$/.test(new URL(r.url()).pathname);
  const validations = [];
  page.on('response', async (r) => {
    if (/\/ui\/schemas\/validate$/.test(new URL(r.url()).pathname)) {
      validations.push(`HTTP ${r.status()} ${(await r.text().catch(() => '')).slice(0, 500)}`);
    }
  });
  let sent = false;
  page.on('request', (r) => { if (isCreate(r)) sent = true; });
  const attempts = 5;
  for (let attempt = 1; attempt <= attempts; attempt += 1) {
    const created = page.waitForResponse((r) => isCreate(r.request()), { timeout: 30000 })
      .catch(() => null);
    await page.getByRole('button', { name: 'Submit' }).click();
    let response = await created;
    if (!response && sent) { // sent, not answered yet: the server is slow
      response = await page.waitForResponse((r) => isCreate(r.request()), { timeout: 90000 })
        .catch(() => null);
    }
    if (response && response.status() === 503 && attempt < attempts) {
      // Prefect's "retry" answer (its own client retries it; the UI shows an error and stays):
      // SQLite busy, say. Unless the run was made after all, click Submit again.
      const name = response.request().postDataJSON()?.name;
      const made = await runsNamed(page, name);
      if (made.length === 1) {
        console.log(`create_flow_run answered HTTP 503, but flow run ${name} exists`);
        console.log(`flow-run: ${made[0].id}`);
        return made[0];
      }
      if (made.length > 1) throw new Error(`${made.length} flow runs named ${name}`);
      console.log(`retrying: create_flow_run answered HTTP 503 (${await response.text()})`);
      await page.waitForTimeout(2000 * attempt);
      sent = false;
      continue;
    }
    if (response) {
      const body = await response.json().catch(() => ({}));
      if (response.status() !== 201 || !body.id) {
        const answered = `HTTP ${response.status()}: ${JSON.stringify(body)}`;
        throw new Error(`create_flow_run answered ${answered}`);
      }
      console.log(`sent: ${JSON.stringify(response.request().postDataJSON()?.parameters ?? null)}`);
      console.log(`flow-run: ${body.id}`);
      return body;
    }
    if (sent) throw new Error('create_flow_run sent but not answered (120 s)');
    const shown = await page.getByText(/error|invalid|required|must/i).allInnerTexts()
      .catch(() => []);
    console.log(`retrying: Submit created no flow run in 30 s (validation: ${validations.join('; ')
      || 'none seen'}; the page says: ${JSON.stringify(shown)})`);
  }
  const validated = validations.join('; ') || 'none seen';
  throw new Error(`Submit created no flow run after ${attempts} clicks (validation: ${validated})`);
}

// The run's menu > Resume, with who and why filled in; the dialog.
async function resumeDialog(page, approver, reason) {
  await page.getByText('Paused').first().waitFor();
  await page.getByRole('main').getByRole('button', { name: 'Open menu' }).first().click();
  await page.getByRole('menuitem', { name: 'Resume' }).click();
  const dialog = page.getByRole('dialog', { name: 'Resume Flow Run' });
  await dialog.getByRole('textbox', { name: 'Approver', exact: true }).fill(approver);
  await dialog.getByRole('textbox', { name: 'Reason', exact: true }).fill(reason);
  await page.setViewportSize({ width: 1400, height: 1250 }); // the whole dialog, unscrolled
  return dialog;
}

// Resume without a decision: the form must stay open and say why (the run stays paused: the
// tour checks that through the API).
async function refused(page, approver, reason) {
  const dialog = await resumeDialog(page, approver, reason);
  const response = await resumeClicked(page, dialog);
  const message = page.getByText(/required/i).last();
  await message.waitFor({ timeout: 10000 });
  await page.waitForTimeout(300);
  if (!(await dialog.isVisible())) throw new Error('the Resume dialog closed without a decision');
  await page.evaluate(() => document.activeElement?.blur());
  await page.screenshot({ path: png }); // at once: the message may not stay
  let status = 'no resume request seen';
  if (response) {
    const body = await response.json().catch(() => ({}));
    status = `POST .../resume: HTTP ${response.status()}, status ${body.status}, state `
      + `${body.state?.name}, ${JSON.stringify(body.details?.reason ?? null)}`;
  }
  console.log(`refused: ${status}`);
  console.log(`refused: the dialog stays open; it shows: ${await message.innerText()}`);
  const shown = Date.now();
  const gone = await message.waitFor({ state: 'hidden', timeout: 20000 }).then(() => true, () => false);
  const seconds = ((Date.now() - shown) / 1000).toFixed(0);
  console.log(`refused: that message ${gone ? `is gone ~${seconds} s later` : 'stays (20 s)'}; `
    + `the dialog is ${(await dialog.isVisible()) ? 'still open' : 'closed'}`);
}

async function resume(page, approver, reason) {
  const dialog = await resumeDialog(page, approver, reason);
  await dialog.getByRole('button', { name: 'Select Decision' }).click();
  await page.getByRole('option', { name: 'approve', exact: true }).click();
  await dialog.getByRole('button', { name: 'Select Decision' }).getByText('approve').waitFor();
  await page.evaluate(() => document.activeElement?.blur());
  await page.waitForTimeout(800);
  await page.screenshot({ path: png });
  const response = await resumeClicked(page, dialog);
  if (!response) throw new Error('Resume sent no resume request (15 s)');
  const body = await response.json().catch(() => ({}));
  if (![200, 201].includes(response.status()) || body.status !== 'ACCEPT') {
    throw new Error(`POST .../resume answered HTTP ${response.status()}: ${JSON.stringify(body)}`);
  }
  await dialog.waitFor({ state: 'hidden' });
}

// Click the dialog's Resume; the answer to the POST .../resume it sends (null: none in 15 s).
// One Prefect answers 503 (its answer for errors worth retrying: SQLite busy, seen here; the
// resume is one transaction, rolled back) leaves the dialog open and the run paused: it is
// clicked again, up to 5 times.
async function resumeClicked(page, dialog) {
  const isResume = (r) => r.request().method() === 'POST'
    && /\/flow_runs\/[^/]+\/resume$/.test(new URL(r.url()).pathname);
  for (let attempt = 1; ; attempt += 1) {
    const answer = page.waitForResponse(isResume, { timeout: 15000 }).catch(() => null);
    await dialog.getByRole('button', { name: 'Resume', exact: true }).click();
    const response = await answer;
    if (response?.status() !== 503 || attempt === 5) return response;
    console.log(`retrying: POST .../resume answered HTTP 503 (${await response.text()})`);
    await page.waitForTimeout(2000 * attempt);
  }
}

// `what` until it does not throw, at most `attempts` times (a click the UI was not ready for yet).
async function retried(what, attempts, action) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await action();
    } catch (error) {
      if (attempt >= attempts) {
        throw new Error(`${what}: failed ${attempts} times: ${error.message}`);
      }
      console.log(`retrying: ${what} (${error.message.split('\n')[0]})`);
    }
  }
}

// One parameter's block in the run form (its label, description, ⋮ menu and input): the label is
// the parameter's name (or its schema title), exactly.
async function field(page, label) {
  const block = page.locator('main label').filter({ hasText: new RegExp(`^${label}$`) })
    .locator('xpath=ancestor::div[contains(concat(" ", @class, " "), " group ")][1]');
  await block.first().waitFor({ timeout: 60000 }).catch(() => {
    throw new Error(`the run form has no field labelled "${label}" (60 s)`);
  });
  const found = await block.count();
  if (found !== 1) throw new Error(`the run form has ${found} fields labelled "${label}", not 1`);
  return block;
}

async function switchState(page, name) {
  const control = page.getByRole('switch', { name: new RegExp(`^${name}\\b`) });
  await control.waitFor();
  return (await control.getAttribute('aria-checked')) === 'true';
}

async function dryRun(page, filledPng, requestJson, operator, reason) {
  const wanted = JSON.parse(requestJson);
  await retried('opening Run > Custom run', 3, async () => {
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    await page.getByRole('menuitem', { name: 'Custom run' }).click({ timeout: 10000 });
  });
  await page.getByRole('button', { name: 'Submit' }).waitFor();
  const request = await field(page, 'request');
  await page.getByRole('textbox', { name: 'reason', exact: true }).waitFor();
  if (!(await switchState(page, 'dry_run'))) {
    throw new Error('dry_run is not on when the form opens');
  }
  if (await switchState(page, 'require_approval')) {
    throw new Error('require_approval is on when the form opens');
  }
  console.log('opened: dry_run on, require_approval off');
  await shoot(page); // the form as it opens
  await page.setViewportSize({ width: 1400, height: 900 });

  const editor = request.locator('.cm-content');
  await retried('request > ⋮ > Use JSON Input', 3, async () => {
    await request.getByRole('button', { name: 'Open menu' }).first().click();
    await page.getByRole('menuitem', { name: 'Use JSON Input' }).click({ timeout: 10000 });
    await editor.waitFor({ timeout: 10000 });
  });
  console.log(`opened: request as JSON: ${(await editor.innerText()).replace(/\s+/g, ' ')}`);
  await retried('typing the request JSON', 3, async () => {
    // the editor's own select-all and delete, then the text as typed (fill() can miss the
    // editor's selection and insert before what it held)
    await editor.click();
    await page.keyboard.press('Control+A');
    await page.keyboard.press('Backspace');
    for (const deadline = Date.now() + 10000; (await editor.innerText()).trim() !== '';) {
      if (Date.now() > deadline) throw new Error('the JSON editor did not empty (10 s)');
      await page.waitForTimeout(250);
    }
    await page.keyboard.insertText(JSON.stringify(wanted, null, 2));
    let shown = '';
    const deadline = Date.now() + 10000;
    for (; Date.now() < deadline; await page.waitForTimeout(250)) {
      shown = await editor.innerText(); // the editor draws what it was given a little later
      try {
        if (JSON.stringify(JSON.parse(shown)) === JSON.stringify(wanted)) return;
      } catch { /* not all drawn yet */ }
    }
    throw new Error(`the JSON editor shows ${JSON.stringify(shown)}, not ${requestJson} (10 s)`);
  });
  await page.getByRole('textbox', { name: 'operator', exact: true }).fill(operator);
  await page.getByRole('textbox', { name: 'reason', exact: true }).fill(reason);
  if (!(await switchState(page, 'dry_run'))) throw new Error('dry_run went off');
  await shoot(page, undefined, filledPng);
  await page.setViewportSize({ width: 1400, height: 900 });

  await submit(page);
}
