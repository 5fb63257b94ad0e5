// Corral's web console: hash routes onto views, each built from the public REST API, its
// watches and WebSockets.
import '@xterm/xterm/css/xterm.css';
import './style.css';
import { api, ApiError } from './api.js';
import { h, say } from './dom.js';
import { vmList, vmDetail, vmCreate, vmMemory } from './vms.js';
import { kindList } from './kinds.js';

const main = document.getElementById('main');
let cleanup = () => {};

const routes = [
  [/^#\/vms\/new$/, () => vmCreate()],
  [/^#\/vm\/([^/]+)\/([^/]+)\/console$/, (p, n) => import('./console.js').then((m) => m.vmConsole(p, n))],
  [/^#\/vm\/([^/]+)\/([^/]+)\/memory$/, (p, n) => vmMemory(p, n)],
  [/^#\/vm\/([^/]+)\/([^/]+)$/, (p, n) => vmDetail(p, n)],
  [/^#\/(images|volumes|snapshots|networks|nodes)$/, (kind) => kindList(kind)],
  [/^(#\/vms)?$/, () => vmList()],
];

async function render() {
  cleanup();
  cleanup = () => {};
  const hash = location.hash || '#/vms';
  for (const [re, view] of routes) {
    const m = re.exec(hash);
    if (!m) continue;
    const args = m.slice(1).map((s) => s && decodeURIComponent(s));
    try {
      const v = await view(...args);
      main.replaceChildren(v.el);
      cleanup = v.close ?? (() => {});
      document.title = `${v.title} · Corral`;
      for (const a of document.querySelectorAll('#nav a')) {
        if (hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page');
        else a.removeAttribute('aria-current');
      }
      (main.querySelector('h1') ?? main).focus?.();
    } catch (err) {
      main.replaceChildren(h('h1', { tabindex: -1 }, 'Error'), h('p', { role: 'alert' }, err.message));
    }
    return;
  }
  main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/vms' }, 'VMs')));
}

function login() {
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true });
  const error = h('p', { class: 'form-error', role: 'alert', id: 'login-error' });
  const form = h(
    'form',
    { class: 'login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title', tabindex: -1 }, 'Log in to Corral'),
    h('p', {}, 'Paste an API token (corral auth token create NAME), or run corral ui on this host for a link.'),
    h('label', { for: 'token' }, 'API token'),
    input,
    error,
    h('button', { type: 'submit' }, 'Log in'),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('POST', '/ui/session', { token: input.value });
      location.reload();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  main.replaceChildren(form);
  input.focus();
}

async function start() {
  try {
    const who = await api('GET', '/ui/session');
    document.getElementById('who').textContent = `${who.name} (${who.role})`;
    document.getElementById('nav').hidden = false;
    const logout = document.getElementById('logout');
    logout.hidden = false;
    showNodesWhenClustered();
    logout.addEventListener('click', async () => {
      await api('DELETE', '/ui/session');
      location.reload();
    });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return login();
    say(err.message);
  }
  window.addEventListener('hashchange', render);
  render();
}

// A single corrald registers itself as its one Node: the Nodes link appears when there are more,
// i.e. when clustered (#/nodes works either way).
async function showNodesWhenClustered() {
  try {
    const nodes = await api('GET', '/v1/nodes');
    const link = document.getElementById('nav-nodes');
    if (link) link.hidden = !(nodes.items?.length > 1);
  } catch {
    // Not allowed to read nodes, or no cluster: the link stays hidden.
  }
}

start();
