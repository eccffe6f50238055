import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cliOk, ROOT, setup, spawnCli, tempDir, waitFor, type Proc } from '../helpers/cli.js';

const CHROMIUM = '/usr/bin/chromium';
const hasChromium = fs.existsSync(CHROMIUM);
if (!hasChromium) console.log(`no ${CHROMIUM} (Debian package chromium): the console browser tests are skipped`);

/** Screenshots go to a temp folder; DROPWIRE_UPDATE_SCREENSHOTS=1 also refreshes the one in docs/. */
const SHOTS = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-console-shots-'));

async function launch(): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] });
  onTestFinished(() => browser.close());
  return browser;
}

/** The devices table row of `name`. */
const row = (page: Page, name: string) => page.locator('tr', { has: page.getByRole('link', { name, exact: true }) });

async function onlineViaApi(s: Awaited<ReturnType<typeof setup>>, want: boolean): Promise<void> {
  await waitFor(async () => ((await s.api.get(`/v1/devices/${s.device}`)).json.online === want ? true : undefined), 30_000, `device ${want ? 'online' : 'offline'}`);
}

describe.skipIf(!hasChromium)('operator console in a real browser', () => {
  it('sign in; presence live; a failed exec with exit code and output; retry; cancel; cross-site refused; sign out', { timeout: 240_000 }, async () => {
    const dir = tempDir();
    const flag = path.join(dir, 'fixed');
    const script = path.join(dir, 'job.mjs');
    // Fails (exit 3, with output) until the flag file exists: then a retry succeeds.
    fs.writeFileSync(
      script,
      `import fs from 'node:fs';
if (fs.existsSync(${JSON.stringify(flag)})) { console.log('imported fine'); process.exitCode = 0; }
else { console.log('reading order'); console.error('bad order: missing customer'); process.exitCode = 3; }\n`,
    );
    const s = await setup({ rules: [] });
    await cliOk(['rule', 'add', '*.job', 'exec', '--home', s.home, '--', process.execPath, script, '{file}']);
    const admin = await cliOk(['relay', 'token', 'add', 'ops', '--admin', '--data', s.data]);
    const base = `http://${s.relay.info.http}`;
    let agent: Proc = spawnCli(['agent', '--home', s.home]);
    await onlineViaApi(s, true);

    // Without the cookie: the pages send you to sign in, the rest is 401 with a code.
    const noCookie = await fetch(`${base}/`, { redirect: 'manual', headers: { accept: 'text/html' } });
    expect(noCookie.status).toBe(303);
    expect(noCookie.headers.get('location')).toBe('/console/sign-in');
    const noCookieApi = await fetch(`${base}/console/messages`);
    expect(noCookieApi.status).toBe(401);
    expect(await noCookieApi.json()).toMatchObject({ error: { code: 'DW_UNAUTHORIZED' } });
    // A sender token is not an admin token.
    const browser = await launch();
    const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    const page = await context.newPage();
    await page.goto(`${base}/`);
    await page.getByLabel('Admin token').fill(s.token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'not an admin token' }).waitFor();

    // Sign in.
    await page.getByLabel('Admin token').fill(admin);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Devices', level: 1 }).waitFor();
    const cookie = (await context.cookies()).find((c) => c.name === 'dw_console')!;
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: 'Strict' });
    await row(page, s.device).getByText('online', { exact: true }).waitFor();
    expect(await row(page, s.device).textContent()).toContain('tcp');

    // A failed exec: its exit code and output on the message page, and at the top of the messages.
    const failed = (await s.api.send(s.device, 'order-17.job', '<order/>')).json.id as string;
    await s.api.until(failed, ['failed']);
    await page.getByRole('link', { name: 'Messages' }).click();
    const attention = page.getByRole('table', { name: 'Failed, rejected and overdue messages' });
    await attention.getByRole('link', { name: 'order-17.job' }).click();
    await page.getByRole('heading', { name: 'Message order-17.job' }).waitFor();
    const result = page.getByRole('region', { name: 'Result' });
    expect(await result.getByRole('definition').first().textContent()).toBe('3');
    expect(await result.textContent()).toContain('Exit code');
    expect(await result.textContent()).toContain('DW_EXEC_FAILED');
    expect(await result.textContent()).toContain('bad order: missing customer');
    const timeline = page.getByRole('region', { name: 'Timeline' });
    expect(await timeline.getByRole('listitem').allTextContents()).toEqual(expect.arrayContaining([expect.stringContaining('queued'), expect.stringContaining('failed')]));
    await page.screenshot({ path: path.join(SHOTS, 'message.png'), fullPage: true });

    // Retry the failed one (fixed in the meantime): a new message, which is handled, shown live.
    fs.writeFileSync(flag, '');
    await page.getByRole('button', { name: 'Retry message' }).click();
    await page.getByRole('status').filter({ hasText: 'Message queued again' }).waitFor();
    const retried = decodeURIComponent(new URL(page.url()).pathname.split('/').pop()!);
    expect(retried).not.toBe(failed);
    await page.getByRole('region', { name: 'Result' }).getByText('0', { exact: true }).waitFor({ timeout: 30_000 });
    expect(await page.getByRole('link', { name: failed }).count()).toBe(1); // "Retry of"
    expect((await s.api.message(retried)).status).toBe('handled');

    // Presence, live: the agent is killed; the row turns red (offline) without a reload, and back.
    await page.getByRole('link', { name: 'Devices' }).click();
    await row(page, s.device).getByText('online', { exact: true }).waitFor();
    await page.evaluate('window.stayed = true');
    await agent.kill('SIGKILL');
    await row(page, s.device).getByText('offline', { exact: true }).waitFor({ timeout: 30_000 });
    const color = await row(page, s.device).getByText('offline', { exact: true }).evaluate((el: unknown) => (globalThis as unknown as { getComputedStyle(e: unknown): { color: string } }).getComputedStyle(el).color);
    expect(color).toBe('rgb(179, 38, 30)');
    expect(await page.evaluate('window.stayed')).toBe(true);

    // Cancel a queued message (the device is away, so it stays queued).
    const queued = (await s.api.send(s.device, 'later.job', 'x')).json.id as string;
    await page.goto(`${base}/console/messages/${queued}`);
    await page.getByRole('button', { name: 'Cancel message' }).click();
    await page.getByRole('status').filter({ hasText: 'Message cancelled.' }).waitFor();
    expect((await s.api.message(queued)).status).toBe('cancelled');

    // A cross-site POST (a page on another site submits a form to the console) is refused; nothing changes.
    const victim = (await s.api.send(s.device, 'keep.job', 'x')).json.id as string;
    const evil = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(`<form id="f" method="post" action="${base}/console/messages/${victim}/cancel"><input name="csrf" value="guess"></form><script>document.getElementById('f').submit()</script>`);
    });
    await new Promise<void>((r) => evil.listen(0, '127.0.0.1', () => r()));
    onTestFinished(() => new Promise<void>((r) => evil.close(() => r())));
    const evilPage = await context.newPage();
    const [refused] = await Promise.all([
      evilPage.waitForResponse((r) => r.url().includes('/cancel')),
      evilPage.goto(`http://localhost:${(evil.address() as AddressInfo).port}/`),
    ]);
    expect(refused.status()).toBe(403);
    await evilPage.getByText('DW_CROSS_SITE').waitFor();
    await evilPage.close();
    // Same origin but without the form's CSRF token: refused too.
    const forged = await fetch(`${base}/console/messages/${victim}/cancel`, {
      method: 'POST',
      headers: { cookie: `dw_console=${cookie.value}`, 'content-type': 'application/x-www-form-urlencoded', origin: base, 'sec-fetch-site': 'same-origin' },
      body: 'csrf=guess',
    });
    expect(forged.status).toBe(403);
    expect(await forged.json()).toMatchObject({ error: { code: 'DW_BAD_CSRF' } });
    expect((await s.api.message(victim)).status).toBe('queued');

    // Back online, live: the kept message is delivered.
    await page.goto(`${base}/`);
    await row(page, s.device).getByText('offline', { exact: true }).waitFor();
    await page.evaluate('window.stayed = true');
    agent = spawnCli(['agent', '--home', s.home]);
    await row(page, s.device).getByText('online', { exact: true }).waitFor({ timeout: 30_000 });
    expect(await page.evaluate('window.stayed')).toBe(true);
    await s.api.until(victim, ['handled']);
    // The rest of the row follows from the server, still without a reload: how it is connected now.
    await row(page, s.device).getByText('tcp', { exact: true }).waitFor({ timeout: 30_000 });
    await page.getByText('1 device, 1 online, 0 offline.').waitFor();
    expect(await page.evaluate('window.stayed')).toBe(true);
    await page.screenshot({ path: path.join(SHOTS, 'devices.png'), fullPage: true });
    // Readable at 320 px: no sideways scrolling.
    await page.setViewportSize({ width: 320, height: 700 });
    expect(await page.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(320);
    await page.screenshot({ path: path.join(SHOTS, 'devices-320.png'), fullPage: true });
    await page.setViewportSize({ width: 1100, height: 760 });
    if (process.env.DROPWIRE_UPDATE_SCREENSHOTS === '1') fs.copyFileSync(path.join(SHOTS, 'devices.png'), path.join(ROOT, 'docs', 'console-devices.png'));
    console.log(`console screenshots in ${SHOTS}`);

    // Sign out: the cookie is gone and the pages ask to sign in again.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByText('You are signed out.').waitFor();
    expect((await context.cookies()).find((c) => c.name === 'dw_console')).toBeUndefined();
    await page.goto(`${base}/console/messages`);
    await page.getByRole('button', { name: 'Sign in' }).waitFor();
    await agent.kill();
  });

  it('the whole page weighs under 200 KB, loads nothing from elsewhere, and works with the keyboard', { timeout: 120_000 }, async () => {
    const s = await setup({ rules: [] });
    const admin = await cliOk(['relay', 'token', 'add', 'ops', '--admin', '--data', s.data]);
    const base = `http://${s.relay.info.http}`;
    const browser = await launch();
    const page = await browser.newPage();
    let bytes = 0;
    const hosts = new Set<string>();
    page.on('response', async (r) => {
      hosts.add(new URL(r.url()).host);
      if (r.status() === 200) bytes += (await r.body().catch(() => Buffer.alloc(0))).length;
    });
    await page.goto(`${base}/`);
    // Keyboard only: the token field has the focus, type, Enter; then Tab reaches the skip link first.
    expect(await page.evaluate('document.activeElement?.id')).toBe('token');
    await page.keyboard.type(admin);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Devices', level: 1 }).waitFor();
    await page.keyboard.press('Tab');
    expect(await page.evaluate('document.activeElement?.textContent')).toBe('Skip to content');
    for (let i = 0; i < 3; i++) await page.keyboard.press('Tab'); // brand, Devices, Messages
    expect(await page.evaluate('document.activeElement?.textContent')).toBe('Messages');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Messages', level: 1 }).waitFor();
    await page.getByRole('search', { name: 'Filter messages' }).getByLabel('Id or file name').waitFor();
    expect([...hosts]).toEqual([s.relay.info.http]);
    expect(bytes).toBeGreaterThan(0);
    expect(bytes).toBeLessThan(200 * 1024);
  });

  it('a device page: a new enrollment token that a new host enrolls with, and remove device', { timeout: 180_000 }, async () => {
    const s = await setup({ rules: [] });
    const admin = await cliOk(['relay', 'token', 'add', 'ops', '--admin', '--data', s.data]);
    const base = `http://${s.relay.info.http}`;
    const old = spawnCli(['agent', '--home', s.home]);
    await onlineViaApi(s, true);
    const browser = await launch();
    const page = await browser.newPage();
    await page.goto(`${base}/`);
    await page.getByLabel('Admin token').fill(admin);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('link', { name: s.device, exact: true }).click();
    await page.getByRole('heading', { name: `Device ${s.device}` }).waitFor();

    // A new enrollment token: the page shows the init line; the old host's key stops working, a new host enrolls.
    await page.getByRole('button', { name: 'New enrollment token' }).click();
    const line = (await page.getByLabel('init command').textContent())!.trim();
    expect(line).toMatch(/^dropwire init dw1\.\S+$/);
    // The old host is dropped and its key refused from now on.
    await old.waitLog((l) => JSON.stringify(l).includes('DW_UNKNOWN_DEVICE'), 30_000);
    await old.kill();
    const newHome = path.join(tempDir(), 'replacement');
    await cliOk(['init', line.split(' ')[2]!, '--home', newHome]);
    const replacement = spawnCli(['agent', '--home', newHome]);
    await onlineViaApi(s, true);
    // The page that showed the token follows the device live: online again, by the new host.
    await page.locator('[data-device]').getByText('online', { exact: true }).waitFor({ timeout: 30_000 });

    // Remove device: needs the box ticked; then it is gone from the relay.
    await page.getByRole('checkbox', { name: /Remove shop/ }).check();
    await page.getByRole('button', { name: 'Remove device' }).click();
    await page.getByRole('status').filter({ hasText: 'Device removed' }).waitFor();
    expect(await page.getByRole('link', { name: s.device, exact: true }).count()).toBe(0);
    expect((await s.api.get(`/v1/devices/${s.device}`)).status).toBe(404);
    await replacement.kill();
  });
});
