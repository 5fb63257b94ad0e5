// The console in a real browser against a real corrald and a real guest (see
// crates/daemon/tests/ui_browser.rs, which passes the login link and the guest kit's files).
import { test, expect } from '@playwright/test';
import AxeBuilder from '@axe-core/playwright';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run through crates/daemon/tests/ui_browser.rs`);
  return v;
};
const artifacts = process.env.CORRAL_UI_ARTIFACTS ?? '../target/ui-artifacts';
const VM = 'web';

async function accessible(page, name) {
  const result = await new AxeBuilder({ page }).analyze();
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  console.log(`axe ${name}: ${result.violations.length} violations, ${bad.length} serious or critical`);
  expect(bad.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target).join(', ')})`), `axe on ${name}`).toEqual([]);
  await page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });
}

test.describe.configure({ mode: 'serial' });

test('manage a VM from the browser', async ({ page, context }) => {
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));

  await test.step('log in with the corral ui link', async () => {
    await page.goto(env('CORRAL_UI_LINK'));
    await expect(page).toHaveURL(/\/ui\/$/);
    await expect(page.getByRole('heading', { name: 'VMs' })).toBeVisible();
    await expect(page.locator('#who')).toContainText('admin');
    await accessible(page, 'vms-empty');
  });

  await test.step('a bad value shows the server\'s error at its field', async () => {
    await page.getByRole('link', { name: 'New VM' }).click();
    await page.getByLabel('Name', { exact: true }).fill('bad');
    await page.getByLabel('CPUs').fill('999');
    await page.getByLabel('Kernel path').fill(env('CORRAL_KERNEL'));
    await page.getByRole('button', { name: 'Create VM' }).click();
    const error = page.locator('#new-cpus-error');
    await expect(error).toContainText('spec.cpus');
    await expect(page.getByLabel('CPUs')).toHaveAttribute('aria-invalid', 'true');
    await accessible(page, 'create-error');
  });

  await test.step('create a VM from the form and see it reach Running without a reload', async () => {
    await page.getByLabel('CPUs').fill('1');
    await page.getByLabel('Name', { exact: true }).fill(VM);
    await page.getByLabel('Initrd path').fill(env('CORRAL_INITRD'));
    await page.getByLabel('Command line').fill(env('CORRAL_CMDLINE'));
    await page.getByLabel('Guest RAM introspection (RAM map)').check();
    const navigations = [];
    page.on('framenavigated', (f) => f === page.mainFrame() && navigations.push(f.url()));
    await page.getByRole('button', { name: 'Create VM' }).click();
    await expect(page.getByRole('heading', { name: `VM ${VM}` })).toBeVisible();
    await expect(page.locator('#vm-phase')).toHaveText('Running', { timeout: 180_000 });
    // Hash routes only: the document was never loaded again.
    expect(navigations.every((u) => u.includes('/ui/#'))).toBe(true);
    await accessible(page, 'vm-detail');
  });

  await test.step('type in the serial console and see the guest answer', async () => {
    await page.getByRole('link', { name: 'Serial console' }).click();
    await expect(page.locator('#terminal')).toHaveAttribute('data-connected', 'true');
    await expect(page.locator('.xterm-rows')).toContainText('CORRAL_BOOT_OK', { timeout: 120_000 });
    await page.locator('.xterm-helper-textarea').focus();
    // The guest's shell may still be starting: type until it answers.
    await expect(async () => {
      await page.keyboard.type('echo ui-$((6*7))-ok\n');
      await expect(page.locator('.xterm-rows')).toContainText('ui-42-ok', { timeout: 3000 });
    }).toPass({ timeout: 120_000 });
    await page.screenshot({ path: `${artifacts}/console.png` });
  });

  await test.step('the console says who holds the writer; a second tab reads only', async () => {
    await expect(page.locator('#console-writer')).toHaveAttribute('data-you', 'true');
    const holder = await page.locator('#console-writer').getAttribute('data-holder');
    expect(holder).not.toEqual('');
    const other = await context.newPage();
    await other.goto(page.url());
    await expect(other.locator('#console-writer')).toHaveText(`Writer: ${holder} (you are read only)`);
    await expect(other.locator('#console-state')).toContainText('Read only');
    await other.close();
  });

  await test.step('paste from the clipboard and type non-US characters', async () => {
    const origin = new URL(page.url()).origin;
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });
    await page.evaluate(() => navigator.clipboard.writeText('echo clip-$((2+3))-board\n'));
    await page.getByRole('button', { name: 'Paste from clipboard' }).click();
    await expect(page.locator('.xterm-rows')).toContainText('clip-5-board');
    // A paste event on xterm's textarea, as the browser's menu or Ctrl+V sends it.
    await page.locator('.xterm-helper-textarea').evaluate((t) => {
      const data = new DataTransfer();
      data.setData('text/plain', 'echo menu-$((3+4))-paste\n');
      t.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
    });
    await expect(page.locator('.xterm-rows')).toContainText('menu-7-paste');
    // Text as a German or French layout (or an IME) produces it: no US key codes.
    await page.locator('.xterm-helper-textarea').focus();
    await page.keyboard.insertText('echo é-ü-ß-$((4+5))');
    await page.keyboard.press('Enter');
    await expect(page.locator('.xterm-rows')).toContainText('é-ü-ß-9');
    // The guest printed those UTF-8 bytes itself: its console log has them.
    const log = await page.request.get(`${origin}/v1/vms/${VM}/console/log?project=default&tail=4096`);
    expect(log.status()).toBe(200);
    expect((await log.body()).toString('utf8')).toContain('é-ü-ß-9');
  });

  await test.step('the RAM map shows frames that change', async () => {
    await page.goto(page.url().replace(/\/console$/, '/memory'));
    const frames = page.locator('#ram-frames');
    await expect.poll(async () => Number(await frames.textContent()), { timeout: 60_000 }).toBeGreaterThan(2);
    const first = await page.locator('#ram-map').evaluate((c) => c.toDataURL());
    const blank = await page.evaluate(() => {
      const c = document.createElement('canvas');
      c.width = c.height = document.getElementById('ram-map').width;
      return c.toDataURL();
    });
    expect(first).not.toEqual(blank);
    const count = Number(await frames.textContent());
    await expect.poll(async () => Number(await frames.textContent())).toBeGreaterThan(count + 2);
    await accessible(page, 'ram-map');
  });

  await test.step('pause and resume', async () => {
    await page.goto(page.url().replace(/\/memory$/, ''));
    await expect(page.locator('#vm-phase')).toHaveText('Running');
    await page.getByRole('button', { name: 'Pause' }).click();
    await page.locator('#confirm-ok').click();
    await expect(page.locator('#vm-phase')).toHaveText('Paused', { timeout: 60_000 });
    await page.getByRole('button', { name: 'Resume' }).click();
    await page.locator('#confirm-ok').click();
    await expect(page.locator('#vm-phase')).toHaveText('Running', { timeout: 60_000 });
  });

  await test.step('CPU and memory charts and recent events on the VM page', async () => {
    // A sample every 10 s; the first needs two readings of the process.
    await expect.poll(async () => Number(await page.locator('#chart-memory').getAttribute('data-points')), { timeout: 60_000 }).toBeGreaterThanOrEqual(1);
    expect(Number(await page.locator('#chart-cpu').getAttribute('data-points'))).toBeGreaterThanOrEqual(1);
    await expect(page.locator('#chart-memory polyline')).toHaveAttribute('points', /\d/);
    await expect(page.locator('.chart-box figcaption').filter({ hasText: 'Memory' })).toContainText('MiB');
    await expect(page.locator('#vm-events')).toContainText('Paused');
    await expect(page.locator('#vm-events')).toContainText('Running');
    await accessible(page, 'vm-charts');
  });

  await test.step('the list shows it live, and the other pages are accessible', async () => {
    await page.getByRole('link', { name: 'VMs' }).first().click();
    await expect(page.locator(`tr[data-vm="${VM}"] .phase`)).toHaveText('Running');
    await accessible(page, 'vms');
    for (const kind of ['Images', 'Volumes', 'Snapshots', 'Networks']) {
      await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: kind }).click();
      await expect(page.getByRole('heading', { name: kind, level: 1 })).toBeVisible();
      await accessible(page, kind.toLowerCase());
    }
    await expect(page.getByRole('table', { name: 'Networks' })).toContainText('default');
  });

  await test.step('upload an image with a progress bar and see it Ready', async () => {
    await page.goto(`${new URL(page.url()).origin}/ui/#/images`);
    const bytes = Buffer.alloc(3 << 20);
    for (let i = 0; i < bytes.length; i += 1) bytes[i] = i % 251;
    await page.locator('#upload-file').setInputFiles({ name: 'Tiny Disk.raw', mimeType: 'application/octet-stream', buffer: bytes });
    await expect(page.locator('#upload-name')).toHaveValue('tiny-disk');
    await page.locator('#upload-format').selectOption('raw');
    await page.getByRole('button', { name: 'Upload', exact: true }).click();
    await expect(page.locator('#upload-percent')).toHaveText('100 %, stored', { timeout: 60_000 });
    expect(await page.locator('#upload-progress').evaluate((p) => [p.value, p.max])).toEqual([bytes.length, bytes.length]);
    const row = page.getByRole('table', { name: 'Images' }).getByRole('row').filter({ hasText: 'tiny-disk' });
    await expect(row).toContainText('Ready');
    await expect(row).toContainText(String(bytes.length));
    await accessible(page, 'images-uploaded');
    // A refusal shows the server's error at the field it names.
    await page.locator('#upload-name').fill('tiny-disk');
    await page.getByRole('button', { name: 'Upload', exact: true }).click();
    await expect(page.getByRole('form', { name: 'Upload an image' }).locator('.form-error')).toContainText('already exists');
  });

  await test.step('bulk pause and resume on the filtered list, with a result per VM', async () => {
    await page.goto(`${new URL(page.url()).origin}/ui/#/vms`);
    await page.locator('#vm-filter').fill(VM);
    await page.getByRole('button', { name: 'Pause shown' }).click();
    await expect(page.locator('#confirm-text')).toContainText(`default/${VM}`);
    await page.locator('#confirm-ok').click();
    await expect(page.locator(`.bulk-results li[data-vm="default/${VM}"]`)).toHaveText(`default/${VM}: pause requested`);
    await expect(page.locator(`tr[data-vm="${VM}"] .phase`)).toHaveText('Paused', { timeout: 60_000 });
    await page.getByRole('button', { name: 'Resume shown' }).click();
    await page.locator('#confirm-ok').click();
    await expect(page.locator(`tr[data-vm="${VM}"] .phase`)).toHaveText('Running', { timeout: 60_000 });
    await page.locator('#vm-filter').fill('');
  });

  await test.step('after a network drop the list catches up by itself, from its revision', async () => {
    const origin = new URL(page.url()).origin;
    const watches = [];
    page.on('request', (r) => /\/v1\/vms\?watch=true/.test(r.url()) && watches.push(r.url()));
    await expect(page.locator(`tr[data-vm="${VM}"]`)).toBeVisible();
    const before = Number(await page.locator('#vm-table').getAttribute('data-revision'));
    expect(before).toBeGreaterThan(0);
    const navigations = [];
    page.on('framenavigated', (f) => f === page.mainFrame() && navigations.push(f.url()));
    await context.setOffline(true);
    await expect.poll(() => page.evaluate(() => navigator.onLine)).toBe(false);
    // A change made elsewhere (through the API, outside the browser) while this one is offline.
    const cookie = (await context.cookies()).map((c) => `${c.name}=${c.value}`).join('; ');
    const made = await fetch(`${origin}/v1/vms?project=default`, {
      method: 'POST',
      headers: { cookie, origin, 'content-type': 'application/json' },
      body: JSON.stringify({ kind: 'Vm', metadata: { name: 'made-offline' }, spec: { power: 'stopped', memory: '128M', boot: { kernel: { kernel: env('CORRAL_KERNEL') } } } }),
    });
    expect(made.status, await made.text()).toBe(201);
    await expect(page.locator('tr[data-vm="made-offline"]')).toHaveCount(0);
    await context.setOffline(false);
    await expect(page.locator('tr[data-vm="made-offline"]')).toBeVisible();
    const resumed = watches.map((u) => new URL(u).searchParams.get('resourceVersion')).filter(Boolean).map(Number);
    expect(resumed.length, `watch requests: ${watches.join(', ')}`).toBeGreaterThan(0);
    expect(resumed.at(-1)).toBeGreaterThanOrEqual(before);
    expect(navigations, 'no reload').toEqual([]);
    await fetch(`${origin}/v1/vms/made-offline?project=default`, { method: 'DELETE', headers: { cookie, origin } });
    await expect(page.locator('tr[data-vm="made-offline"]')).toHaveCount(0);
  });

  await test.step('the nodes page cordons and uncordons this node', async () => {
    await page.goto(`${new URL(page.url()).origin}/ui/#/nodes`);
    await expect(page.getByRole('heading', { name: 'Nodes', level: 1 })).toBeVisible();
    await expect(page.getByRole('table', { name: 'Nodes' })).toContainText('yes');
    await accessible(page, 'nodes');
    await page.getByRole('button', { name: /^Cordon / }).click();
    await page.locator('#confirm-ok').click();
    await expect(page.getByRole('table', { name: 'Nodes' })).toContainText('cordoned');
    await page.getByRole('button', { name: /^Uncordon / }).click();
    await page.locator('#confirm-ok').click();
    await expect(page.getByRole('table', { name: 'Nodes' })).toContainText('yes');
  });

  await test.step('delete with confirmation', async () => {
    await page.goto(`${new URL(page.url()).origin}/ui/#/vm/default/${VM}`);
    await page.getByRole('button', { name: 'Delete' }).click();
    await page.locator('#confirm-ok').click();
    await expect(page.getByRole('heading', { name: 'VMs' })).toBeVisible();
    await expect(page.locator(`tr[data-vm="${VM}"]`)).toHaveCount(0, { timeout: 120_000 });
  });

  expect(errors, 'no script errors').toEqual([]);
});
