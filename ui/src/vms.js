// VMs: the live table, a VM's page (status, conditions, power actions, its spec as YAML), the
// create form and the live RAM map.
import yaml from 'js-yaml';
import { api, inProject, key } from './api.js';
import { h, say, confirmDialog, field, showError } from './dom.js';
import { live } from './watch.js';
import { vmCharts } from './charts.js';

const vmPath = (project, name, rest = '') => inProject(`/v1/vms/${encodeURIComponent(name)}${rest}`, project);

// Rows painted beyond the visible ones, above and below, so scrolling shows no gap.
const OVERSCAN = 15;

export function vmList() {
  const filter = h('input', { type: 'search', id: 'vm-filter', placeholder: 'name, project or phase' });
  const count = h('p', { 'aria-live': 'polite', class: 'count' });
  const body = h('tbody');
  const table = h(
    'table',
    { 'aria-label': 'VMs', id: 'vm-table' },
    h('thead', {}, h('tr', { 'aria-rowindex': 1 }, ...['Name', 'Project', 'Phase', 'Power', 'CPUs', 'Memory'].map((c) => h('th', { scope: 'col' }, c)))),
    body,
  );
  // Only the rows in view are in the DOM (1,000 VMs are 40 rows, not 7,000 cells); spacers
  // keep the scroll height, aria-rowcount and aria-rowindex tell assistive technology where
  // a row is in the whole table.
  const scroller = h('div', { class: 'table-scroll', tabindex: 0, role: 'region', 'aria-label': 'VM table (scrolls)' }, table);
  const spacer = () => h('tr', { 'aria-hidden': 'true', class: 'spacer' }, h('td', { colspan: 6 }));
  const above = spacer();
  const below = spacer();
  let rowHeight = 33;
  // A painted row per key, rebuilt only when its VM's revision changed.
  const rows = new Map();
  const vms = live('/v1/vms');
  // Every key, sorted: sorted again only when a VM came or went, not when one changed.
  let sorted = [];
  let sortedFor = -1;
  // What the filter shows now, as keys in order: bulk actions act on exactly these.
  let shown = [];
  let selection = [];
  const results = h('ul', { class: 'bulk-results', 'aria-label': 'Bulk action results' });
  const bulk = h(
    'div',
    { class: 'actions', role: 'group', 'aria-label': 'Bulk actions on the VMs shown' },
    ...bulkActions.map(([label, method, rest]) =>
      h('button', { type: 'button', class: method === 'DELETE' ? 'danger' : '', onclick: () => runBulk(label, method, rest, selection, results) }, `${label} shown`),
    ),
  );
  const rowFor = (k, vm) => {
    const stamp = vm.metadata.resource_version;
    let row = rows.get(k);
    if (!row || row.stamp !== stamp) {
      const phase = vm.status?.phase ?? 'Pending';
      const project = vm.metadata.project ?? 'default';
      const href = `#/vm/${encodeURIComponent(project)}/${encodeURIComponent(vm.metadata.name)}`;
      const tr = h('tr', { dataset: { vm: vm.metadata.name } }, h('th', { scope: 'row' }, h('a', { href }, vm.metadata.name)), h('td', {}, project), h('td', { class: `phase ${phase.toLowerCase()}` }, phase), h('td', {}, vm.spec.power ?? 'running'), h('td', {}, vm.spec.cpus ?? 1), h('td', {}, vm.spec.memory ?? ''));
      row = { tr, stamp };
      rows.set(k, row);
    }
    return row.tr;
  };
  const paint = () => {
    const view = scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(scroller.scrollTop / rowHeight) - OVERSCAN);
    const last = Math.min(shown.length, Math.ceil((scroller.scrollTop + view) / rowHeight) + OVERSCAN);
    const painted = [];
    const keep = new Set();
    for (let i = first; i < last; i += 1) {
      const k = shown[i];
      const tr = rowFor(k, vms.items.get(k));
      tr.setAttribute('aria-rowindex', i + 2);
      painted.push(tr);
      keep.add(k);
    }
    // Rows scrolled far away are built again when they come back.
    for (const k of rows.keys()) if (!keep.has(k)) rows.delete(k);
    above.style.height = `${first * rowHeight}px`;
    below.style.height = `${(shown.length - last) * rowHeight}px`;
    body.replaceChildren(above, ...painted, below);
    const measured = painted[0]?.getBoundingClientRect().height;
    if (measured && Math.abs(measured - rowHeight) > 0.5) {
      rowHeight = measured;
      requestAnimationFrame(paint);
    }
  };
  const draw = (l) => {
    if (sortedFor !== l.keysVersion) {
      sorted = [...l.items.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      sortedFor = l.keysVersion;
    }
    const q = filter.value.trim().toLowerCase();
    shown = q
      ? sorted.filter((k) => `${k} ${l.items.get(k).status?.phase ?? 'Pending'}`.toLowerCase().includes(q))
      : sorted;
    selection = shown.map((k) => { const i = k.indexOf('/'); return [k.slice(0, i), k.slice(i + 1)]; });
    count.textContent = `${shown.length} of ${l.items.size} VMs`;
    table.setAttribute('aria-rowcount', shown.length + 1);
    table.dataset.revision = l.revision ?? '';
    paint();
  };
  let scrolling = false;
  scroller.addEventListener('scroll', () => {
    if (scrolling) return;
    scrolling = true;
    requestAnimationFrame(() => {
      scrolling = false;
      paint();
    });
  });
  filter.addEventListener('input', () => draw(vms));
  const off = vms.subscribe(draw);
  return {
    title: 'VMs',
    el: h('section', {}, h('div', { class: 'bar' }, h('h1', { tabindex: -1 }, 'VMs'), h('a', { class: 'button', href: '#/vms/new' }, 'New VM')), field('vm-filter', 'Filter', filter), count, bulk, results, scroller),
    close: off,
  };
}

const bulkActions = [
  ['Start', 'POST', '/start'],
  ['Stop', 'POST', '/stop'],
  ['Pause', 'POST', '/pause'],
  ['Resume', 'POST', '/resume'],
  ['Delete', 'DELETE', ''],
];

// One request per VM, a few at a time; each VM's outcome is listed (ok, or the server's error).
async function runBulk(label, method, rest, selection, results) {
  const targets = [...selection];
  if (targets.length === 0) return say('No VM matches the filter');
  const names = targets.slice(0, 5).map(([p, n]) => `${p}/${n}`).join(', ') + (targets.length > 5 ? ` and ${targets.length - 5} more` : '');
  if (!(await confirmDialog(`${label} ${targets.length} VM(s): ${names}?`, label))) return;
  results.replaceChildren();
  const items = new Map(targets.map(([p, n]) => [`${p}/${n}`, h('li', { dataset: { vm: `${p}/${n}` } }, `${p}/${n}: …`)]));
  results.replaceChildren(...items.values());
  let ok = 0;
  const queue = [...targets];
  const worker = async () => {
    for (let t = queue.shift(); t; t = queue.shift()) {
      const [p, n] = t;
      const li = items.get(`${p}/${n}`);
      try {
        await api(method, vmPath(p, n, rest));
        li.textContent = `${p}/${n}: ${label.toLowerCase()} requested`;
        li.className = 'ok';
        ok += 1;
      } catch (err) {
        li.textContent = `${p}/${n}: ${err.message}`;
        li.className = 'failed';
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, targets.length) }, worker));
  say(`${label}: ${ok} of ${targets.length} VM(s) done`);
}

const actions = [
  ['Start', 'start', (vm) => vm.spec.power === 'stopped'],
  ['Stop', 'stop', (vm) => vm.spec.power !== 'stopped'],
  ['Pause', 'pause', (vm) => (vm.spec.power ?? 'running') === 'running'],
  ['Resume', 'resume', (vm) => vm.spec.power === 'paused'],
  ['Restart', 'restart', (vm) => (vm.spec.power ?? 'running') === 'running'],
];

export async function vmDetail(project, name) {
  const k = `${project}/${name}`;
  const vms = live('/v1/vms');
  const summary = h('dl', { class: 'summary' });
  const conditions = h('tbody');
  const buttons = h('div', { class: 'actions', role: 'group', 'aria-label': 'Power' });
  const editor = h('textarea', { rows: 18, spellcheck: 'false', dataset: { field: 'spec' } });
  const form = h('form', { 'aria-label': 'Edit spec' }, field('spec-yaml', 'Spec (YAML)', editor, 'Saved with the server\'s validation; an error names its field.'), h('p', { class: 'form-error', role: 'alert' }), h('button', { type: 'submit' }, 'Save spec'));
  let current = null;
  let edited = false;
  const charts = vmCharts(vmPath(project, name, '/metrics/history'));
  const events = h('ol', { id: 'vm-events', class: 'events', 'aria-label': 'Recent events' });
  const log = recentEvents(events);
  editor.addEventListener('input', () => (edited = true));
  const draw = (l) => {
    const vm = l.items.get(k);
    if (!vm) {
      summary.replaceChildren(h('dt', {}, 'State'), h('dd', { id: 'vm-phase' }, l.synced ? 'Deleted' : 'Loading'));
      buttons.replaceChildren();
      return;
    }
    current = vm;
    const st = vm.status ?? {};
    log(vm);
    const pairs = [['Phase', st.phase ?? 'Pending', 'vm-phase'], ['Power', vm.spec.power ?? 'running'], ['Message', st.message ?? ''], ['Accelerator', st.accelerator ?? ''], ['PID', st.pid ?? ''], ['Started', st.started_at ?? ''], ['Generation', `${vm.metadata.generation ?? ''} (observed ${st.observed_generation ?? '–'})`]];
    summary.replaceChildren(...pairs.flatMap(([t, d, id]) => [h('dt', {}, t), h('dd', { id }, String(d))]));
    conditions.replaceChildren(...(st.conditions ?? []).map((c) => h('tr', {}, h('th', { scope: 'row' }, c.type), h('td', {}, String(c.status)), h('td', {}, c.reason ?? ''), h('td', {}, c.message ?? ''), h('td', {}, c.last_transition ?? ''))));
    buttons.replaceChildren(
      ...actions.map(([label, verb, enabled]) => h('button', { type: 'button', disabled: !enabled(vm), onclick: () => power(project, name, label, verb) }, label)),
      h('button', { type: 'button', class: 'danger', onclick: () => remove(project, name) }, 'Delete'),
    );
    if (!edited) editor.value = yaml.dump(vm.spec, { lineWidth: 100 });
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    showError(form, null);
    let spec;
    try {
      spec = yaml.load(editor.value);
    } catch (err) {
      return showError(form, { field: 'spec', message: `spec: not YAML: ${err.message}` });
    }
    try {
      const body = { kind: 'Vm', metadata: { ...current.metadata }, spec };
      await api('PUT', vmPath(project, name), body);
      edited = false;
      say('Spec saved');
    } catch (err) {
      showError(form, err);
      markLine(editor, err.field);
    }
  });
  const off = vms.subscribe(draw);
  draw(vms);
  return {
    title: name,
    el: h(
      'section',
      {},
      h('p', {}, h('a', { href: '#/vms' }, '← VMs')),
      h('h1', { tabindex: -1 }, `VM ${name}`, h('span', { class: 'muted' }, ` in ${project}`)),
      h('nav', { 'aria-label': 'VM views', class: 'tabs' }, h('a', { href: `#/vm/${project}/${name}/console` }, 'Serial console'), h('a', { href: `#/vm/${project}/${name}/memory` }, 'RAM map')),
      buttons,
      summary,
      h('h2', {}, 'Usage'),
      charts.el,
      h('h2', {}, 'Recent events'),
      events,
      h('h2', {}, 'Conditions'),
      h('table', { 'aria-label': 'Conditions' }, h('thead', {}, h('tr', {}, ...['Type', 'Status', 'Reason', 'Message', 'Since'].map((c) => h('th', { scope: 'col' }, c)))), conditions),
      h('h2', {}, 'Spec'),
      form,
    ),
    close: () => {
      off();
      charts.close();
    },
  };
}

// The VM's recent events, newest first: its conditions' transitions as the server recorded
// them, then every change of phase, power or condition this page sees on the watch.
function recentEvents(list) {
  const seen = new Map();
  const entries = [];
  let phase = null;
  const add = (time, text) => {
    entries.push({ time, text });
    entries.sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0));
    entries.length = Math.min(entries.length, 30);
  };
  return (vm) => {
    const st = vm.status ?? {};
    const now = new Date().toISOString();
    for (const c of st.conditions ?? []) {
      const id = `${c.type}=${c.status}@${c.last_transition ?? ''}`;
      if (seen.has(c.type) && seen.get(c.type) === id) continue;
      seen.set(c.type, id);
      add(c.last_transition ?? now, `${c.type} ${c.status}${c.reason ? ` (${c.reason})` : ''}${c.message ? `: ${c.message}` : ''}`);
    }
    const p = `${st.phase ?? 'Pending'}`;
    if (phase !== null && p !== phase) add(now, `Phase ${phase} → ${p}${st.message ? `: ${st.message}` : ''}`);
    phase = p;
    list.replaceChildren(...entries.map((e) => h('li', {}, h('time', { datetime: e.time }, e.time.replace('T', ' ').replace(/\.\d+Z$|Z$/, ' UTC')), ' ', e.text)));
    if (entries.length === 0) list.replaceChildren(h('li', { class: 'muted' }, 'None yet'));
  };
}

// Selects the YAML line of the field an error names (`spec.memory` → the `memory:` line).
function markLine(editor, fieldPath) {
  if (!fieldPath?.startsWith('spec.')) return;
  const leaf = fieldPath.split('.').pop().replace(/\[\d+\]$/, '');
  const m = new RegExp(`^\\s*${leaf}:`, 'm').exec(editor.value);
  if (m) editor.setSelectionRange(m.index, m.index + m[0].length);
}

async function power(project, name, label, verb) {
  if (!(await confirmDialog(`${label} VM ${name}?`, label))) return;
  try {
    await api('POST', vmPath(project, name, `/${verb}`));
    say(`${label}: requested`);
  } catch (err) {
    say(err.message);
  }
}

async function remove(project, name) {
  if (!(await confirmDialog(`Delete VM ${name} of project ${project}? Its QEMU is stopped.`, 'Delete'))) return;
  try {
    await api('DELETE', vmPath(project, name));
    say(`VM ${name} is being deleted`);
    location.hash = '#/vms';
  } catch (err) {
    say(err.message);
  }
}

export function vmCreate() {
  const input = (attrs) => h('input', attrs);
  const name = input({ required: true, dataset: { field: 'metadata.name' } });
  const project = input({ value: 'default', dataset: { field: 'project' } });
  const cpus = input({ type: 'number', value: 1, dataset: { field: 'spec.cpus' } });
  const memory = input({ value: '256M', dataset: { field: 'spec.memory' } });
  const source = h('select', { dataset: { field: 'spec.boot' } }, h('option', { value: 'kernel' }, 'Kernel and initrd'), h('option', { value: 'volume' }, 'Existing volume'), h('option', { value: 'image' }, 'Image (a new volume from it)'));
  const kernel = input({ dataset: { field: 'spec.boot.kernel.kernel' }, placeholder: '/path/to/vmlinuz' });
  const initrd = input({ dataset: { field: 'spec.boot.kernel.initrd' } });
  const cmdline = input({ value: 'console=ttyS0', dataset: { field: 'spec.boot.kernel.cmdline' } });
  const volume = input({ dataset: { field: 'spec.boot.volume.volume' } });
  const image = input({ dataset: { field: 'spec.image' } });
  const introspection = input({ type: 'checkbox', dataset: { field: 'spec.introspection' } });
  const groups = {
    kernel: h('fieldset', {}, h('legend', {}, 'Kernel boot'), field('new-kernel', 'Kernel path', kernel), field('new-initrd', 'Initrd path', initrd), field('new-cmdline', 'Command line', cmdline)),
    volume: h('fieldset', { hidden: true }, h('legend', {}, 'Volume boot'), field('new-volume', 'Volume', volume)),
    image: h('fieldset', { hidden: true }, h('legend', {}, 'Image boot'), field('new-image', 'Image', image)),
  };
  source.addEventListener('change', () => {
    for (const [k, g] of Object.entries(groups)) g.hidden = k !== source.value;
  });
  const form = h(
    'form',
    { 'aria-labelledby': 'new-title', class: 'create' },
    h('h1', { id: 'new-title', tabindex: -1 }, 'New VM'),
    field('new-name', 'Name', name),
    field('new-project', 'Project', project),
    field('new-cpus', 'CPUs', cpus),
    field('new-memory', 'Memory', memory, 'e.g. 256M or 2G'),
    field('new-source', 'Boot from', source),
    ...Object.values(groups),
    field('new-introspection', 'Guest RAM introspection (RAM map)', introspection),
    h('p', { class: 'form-error', role: 'alert' }),
    h('button', { type: 'submit' }, 'Create VM'),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    showError(form, null);
    const spec = { cpus: Number(cpus.value), memory: memory.value, introspection: introspection.checked };
    try {
      if (source.value === 'kernel') {
        spec.boot = { kernel: { kernel: kernel.value, initrd: initrd.value || null, cmdline: cmdline.value || null } };
      } else if (source.value === 'volume') {
        spec.boot = { volume: { volume: volume.value } };
      } else {
        const disk = `${name.value}-disk`;
        await api('POST', inProject('/v1/volumes', project.value), { kind: 'Volume', metadata: { name: disk }, spec: { kind: 'disk', image: image.value } });
        spec.boot = { volume: { volume: disk } };
      }
      await api('POST', inProject('/v1/vms', project.value), { kind: 'Vm', metadata: { name: name.value }, spec });
      location.hash = `#/vm/${encodeURIComponent(project.value)}/${encodeURIComponent(name.value)}`;
    } catch (err) {
      showError(form, err);
    }
  });
  return { title: 'New VM', el: form };
}

// The live RAM map: the Hilbert-curve frames of the memory stream drawn on a canvas.
export function vmMemory(project, name) {
  const canvas = h('canvas', { width: 256, height: 256, role: 'img', 'aria-label': `RAM map of ${name}`, id: 'ram-map' });
  const info = h('p', { 'aria-live': 'polite', id: 'ram-info' }, 'Connecting…');
  const frames = h('output', { id: 'ram-frames' }, '0');
  const ctx = canvas.getContext('2d');
  let socket = null;
  let closed = false;
  let count = 0;
  let side = 256;
  const connect = () => {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    socket = new WebSocket(`${proto}://${location.host}${vmPath(project, name, '/memory/stream')}&side=256&fps=10`);
    socket.binaryType = 'arraybuffer';
    socket.onmessage = (m) => {
      if (typeof m.data === 'string') {
        side = JSON.parse(m.data).side;
        canvas.width = canvas.height = side;
        info.textContent = `${side}×${side}, each pixel a run of guest pages along a Hilbert curve`;
        return;
      }
      const rgb = new Uint8Array(m.data);
      const img = ctx.createImageData(side, side);
      for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
        img.data[j] = rgb[i];
        img.data[j + 1] = rgb[i + 1];
        img.data[j + 2] = rgb[i + 2];
        img.data[j + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      frames.textContent = String(++count);
    };
    socket.onclose = (e) => {
      if (closed) return;
      info.textContent = `Stream closed (${e.code}${e.reason ? `: ${e.reason}` : ''}); reconnecting…`;
      setTimeout(() => !closed && connect(), 2000);
    };
  };
  connect();
  return {
    title: `RAM of ${name}`,
    el: h('section', {}, h('p', {}, h('a', { href: `#/vm/${project}/${name}` }, `← VM ${name}`)), h('h1', { tabindex: -1 }, `RAM map of ${name}`), info, canvas, h('p', {}, 'Frames: ', frames)),
    close: () => {
      closed = true;
      socket?.close();
    },
  };
}
