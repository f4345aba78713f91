// Drives Debian's Chromium through the Prefect UI (V2, the UI's default) for tools/ui_tour.py.
//   node shoot.mjs form    <deployment page URL> <png> <service> <key> <operator> <reason>
//   node shoot.mjs page    <URL> <png> [text to wait for]
//   node shoot.mjs refused <flow run page URL> <png> <approver> <reason>
//   node shoot.mjs resume  <flow run page URL> <png> <approver> <reason>
// `form` opens Run > Custom run, fills the text fields (switches left at their defaults), shoots,
// then turns dry_run off and require_approval on and submits. `refused` opens the run's menu >
// Resume, fills who and why but chooses no Decision, clicks Resume and shoots what the form says
// (it prints `refused: <status> <message>`; it fails if the dialog closes). `resume` does the
// same, chooses "approve" in Decision, shoots, then submits.
import { chromium } from 'playwright-core';

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const [command, url, png, ...rest] = process.argv.slice(2);

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(30000);
  await page.goto(url, { waitUntil: 'networkidle' });
  if (command === 'form') await customRun(page, ...rest);
  else if (command === 'page') await shoot(page, rest[0]);
  else if (command === 'refused') await refused(page, ...rest);
  else if (command === 'resume') await resume(page, ...rest);
  else throw new Error(`unknown command ${command}`);
} finally {
  await browser.close();
}

// The whole page in one PNG: the viewport grown to the content (a full-page shot of a taller
// page would cut the fixed sidebar at the first screen).
async function shoot(page, waitFor) {
  if (waitFor) await page.getByText(waitFor).first().waitFor();
  await page.evaluate(() => document.activeElement?.blur()); // no focus ring in the picture
  await page.waitForTimeout(1500);
  const height = await page.evaluate(() => document.documentElement.scrollHeight);
  await page.setViewportSize({ width: 1400, height: Math.max(900, Math.min(height, 4000)) });
  await page.waitForTimeout(500);
  await page.screenshot({ path: png });
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
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.getByText('scheduled to start').waitFor();
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
  const answer = page.waitForResponse((r) => r.request().method() === 'POST'
    && /\/flow_runs\/[^/]+\/resume$/.test(new URL(r.url()).pathname), { timeout: 10000 })
    .catch(() => null);
  await dialog.getByRole('button', { name: 'Resume', exact: true }).click();
  const message = page.getByText(/required/i).last();
  await message.waitFor({ timeout: 10000 });
  await page.waitForTimeout(300);
  if (!(await dialog.isVisible())) throw new Error('the Resume dialog closed without a decision');
  await page.evaluate(() => document.activeElement?.blur());
  await page.screenshot({ path: png }); // at once: the message may not stay
  const response = await answer;
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
  await dialog.getByRole('button', { name: 'Resume', exact: true }).click();
  await dialog.waitFor({ state: 'hidden' });
}
