// Web console figures, in Debian's chromium: the time from opening the console to its first VM
// row (and to the whole table) with the VMs corrald has, and the latency from a CLI change
// (`corral vm create`) to its row in the DOM, p50 and p99. Driven by bench/ui.sh.
import { spawnSync } from 'node:child_process';
import { chromium } from 'playwright-core';

const [link, corral, kernel, samplesText] = process.argv.slice(2);
const samples = Number(samplesText ?? 30);
const browser = await chromium.launch({
  executablePath: process.env.CORRAL_CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const page = await browser.newPage();

// Log in (the link answers a cookie and a redirect), then measure a fresh load of the console.
await page.goto(link);
await page.locator('#vm-table tbody tr[data-vm]').first().waitFor();
const loads = [];
for (let i = 0; i < 5; i++) {
  const t0 = Date.now();
  await page.reload();
  await page.locator('#vm-table tbody tr[data-vm]').first().waitFor();
  const first = Date.now() - t0;
  const total = await page.locator('.count').textContent();
  loads.push(first);
  if (i === 0) console.log(`table: ${total}`);
}
loads.sort((a, b) => a - b);
console.log(`load to first VM row: median ${loads[2]} ms (of ${loads.join(', ')})`);

const latencies = [];
for (let i = 0; i < samples; i++) {
  const name = `lat-${Date.now().toString(36)}-${i}`;
  // The observer is in place before the command runs; it keeps the time the row appeared.
  await page.evaluate((name) => {
    window.rowSeen = new Promise((resolve) => {
      const observer = new MutationObserver(() => {
        if (document.querySelector(`tr[data-vm="${name}"]`)) {
          observer.disconnect();
          resolve(Date.now());
        }
      });
      observer.observe(document.body, { childList: true, subtree: true });
    });
  }, name);
  const t0 = Date.now();
  const run = spawnSync(corral, ['vm', 'create', name, '--kernel', kernel, '--no-start', '--memory', '64M'], {
    encoding: 'utf8',
  });
  if (run.status !== 0) throw new Error(`corral vm create: ${run.stderr}`);
  latencies.push((await page.evaluate(() => window.rowSeen)) - t0);
}
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.ceil((p / 100) * latencies.length) - 1)];
console.log(`CLI create → DOM row (${samples} samples): p50 ${pct(50)} ms, p99 ${pct(99)} ms, max ${latencies.at(-1)} ms`);
await browser.close();
