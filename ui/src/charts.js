// A VM's CPU and memory history as two small line charts in plain SVG, fed from
// GET /v1/vms/{name}/metrics/history every sample interval (only the samples since the last one).
import { api } from './api.js';
import { h } from './dom.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 360;
const H = 90;

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  el.append(...children);
  return el;
}

const bytes = (n) => {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const cores = (c) => `${(c * 100).toFixed(1)} % of a core`;

// One chart: a polyline over the samples' span, scaled to the largest value (at least `floor`).
function chart(id, title, value, format, floor) {
  const line = svg('polyline', { fill: 'none', stroke: '#0b5cad', 'stroke-width': 1.5, 'vector-effect': 'non-scaling-stroke' });
  const desc = svg('desc', { id: `${id}-desc` });
  const el = svg('svg', { id, viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-labelledby': `${id}-title ${id}-desc`, class: 'chart', 'data-points': 0 }, svg('title', { id: `${id}-title` }, title), desc, svg('rect', { x: 0, y: 0, width: W, height: H, fill: '#f7f9fb', stroke: '#ccc' }), line);
  const now = h('output', { for: id, class: 'chart-now' }, '–');
  const draw = (samples) => {
    el.setAttribute('data-points', samples.length);
    if (samples.length === 0) {
      line.setAttribute('points', '');
      desc.textContent = 'No samples yet (one every 10 s while the VM runs)';
      return;
    }
    const t0 = samples[0].time;
    const span = Math.max(samples[samples.length - 1].time - t0, 1);
    const max = Math.max(floor, ...samples.map(value));
    const points = samples.map((s) => {
      const x = samples.length === 1 ? W : ((s.time - t0) / span) * W;
      const y = H - 4 - (value(s) / max) * (H - 8);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    // A single sample is a short flat line, so it shows.
    if (samples.length === 1) points.unshift(`${W - 6},${points[0].split(',')[1]}`);
    line.setAttribute('points', points.join(' '));
    const last = value(samples[samples.length - 1]);
    now.textContent = format(last);
    desc.textContent = `${samples.length} samples over ${Math.round(span / 60)} min; now ${format(last)}, peak ${format(max)}`;
  };
  return { el: h('figure', { class: 'chart-box' }, h('figcaption', {}, title, ': ', now), el), draw };
}

// The charts of one VM and the poll that feeds them; `close` stops it.
export function vmCharts(path) {
  const cpu = chart('chart-cpu', 'CPU', (s) => s.cpu, cores, 0.05);
  const mem = chart('chart-memory', 'Memory (resident)', (s) => s.memory_bytes, bytes, 1);
  const note = h('p', { class: 'muted', id: 'chart-note' });
  let samples = [];
  let capacity = 8640;
  let timer = null;
  let closed = false;
  const poll = async () => {
    const since = samples.length ? samples[samples.length - 1].time : 0;
    let wait = 10_000;
    try {
      const body = await api('GET', `${path}${path.includes('?') ? '&' : '?'}since=${since}`);
      capacity = body.capacity;
      wait = body.interval_seconds * 1000;
      samples = samples.concat(body.samples).slice(-capacity);
      note.textContent = '';
    } catch (err) {
      note.textContent = `History unavailable: ${err.message}`;
    }
    cpu.draw(samples);
    mem.draw(samples);
    // Soon after a sample is due, or sooner while there is none yet.
    if (!closed) timer = setTimeout(poll, samples.length ? wait : 3000);
  };
  poll();
  return {
    el: h('div', { class: 'charts' }, cpu.el, mem.el, note),
    close: () => {
      closed = true;
      clearTimeout(timer);
    },
  };
}
