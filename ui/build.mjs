// Bundles the console into one directory (default dist/, or the first argument; corrald's
// build.rs passes its OUT_DIR) and prints the bundle's size gzipped, without and with xterm.js,
// which is split into its own chunk and loaded only by the console page.
import * as esbuild from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { gzipSync } from 'node:zlib';

const out = process.argv[2] ?? 'dist';
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const result = await esbuild.build({
  entryPoints: { app: 'src/main.js' },
  bundle: true,
  splitting: true,
  format: 'esm',
  minify: true,
  target: ['es2022'],
  outdir: out,
  entryNames: '[name]',
  chunkNames: 'chunk-[hash]',
  metafile: true,
  logLevel: 'warning',
  loader: { '.css': 'css' },
});
copyFileSync('src/index.html', join(out, 'index.html'));

let withXterm = 0;
let withoutXterm = 0;
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  const gz = gzipSync(readFileSync(file), { level: 9 }).length;
  const xterm = Object.keys(meta.inputs).some((i) => i.includes('@xterm/') && i.endsWith('.js'));
  withXterm += gz;
  if (!xterm) withoutXterm += gz;
}
const index = gzipSync(readFileSync(join(out, 'index.html'))).length;
const sizes = {
  gzipWithoutXterm: withoutXterm + index,
  gzipTotal: withXterm + index,
  files: Object.keys(result.metafile.outputs).map((f) => basename(f)),
};
writeFileSync(join(out, 'sizes.json'), JSON.stringify(sizes));
console.error(
  `corral ui: ${(sizes.gzipWithoutXterm / 1024).toFixed(1)} KiB gzipped without xterm.js, ` +
    `${(sizes.gzipTotal / 1024).toFixed(1)} KiB with it`,
);
