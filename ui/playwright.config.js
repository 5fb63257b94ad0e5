// Playwright drives Debian's chromium (its own browser download cannot work offline); the
// test is started by crates/daemon/tests/ui_browser.rs against a real corrald and guest.
import { defineConfig } from '@playwright/test';

const artifacts = process.env.CORRAL_UI_ARTIFACTS ?? '../target/ui-artifacts';

export default defineConfig({
  testDir: 'tests',
  outputDir: `${artifacts}/results`,
  timeout: 300_000,
  expect: { timeout: 30_000 },
  workers: 1,
  retries: 0,
  reporter: [['list']],
  use: {
    headless: true,
    viewport: { width: 1280, height: 900 },
    launchOptions: {
      executablePath: process.env.CORRAL_CHROMIUM ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-dev-shm-usage'],
    },
    trace: 'retain-on-failure',
  },
});
