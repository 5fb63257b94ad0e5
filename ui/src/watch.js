// A live collection of one kind: the REST watch (Server-Sent Events) from the list's revision,
// resumed from the last revision seen after any drop — the browser's EventSource reconnects by
// itself with Last-Event-ID; a network blip it gives up on, a laptop's sleep or a compacted
// history (410) starts a new watch from the last revision, or from a fresh list.
// Listeners are told once per animation frame, however many events arrived: 1,000 VMs
// changing at once cost one render.

import { key } from './api.js';

export class Live {
  constructor(path) {
    this.path = path;
    this.items = new Map();
    // Bumped when a key comes or goes (not when an object changes): lists re-sort on it.
    this.keysVersion = 0;
    this.revision = null;
    this.synced = false;
    this.listeners = new Set();
    this.scheduled = false;
    this.retry = 500;
    this.open();
    this.onOnline = () => this.reopen();
    // Without a network the stream is dead even if the browser has not noticed yet: close it
    // now and resume from the last revision when the network is back, so nothing is missed
    // and no event half-read on a dying connection counts.
    this.onOffline = () => {
      this.source?.close();
      this.source = null;
    };
    this.onVisible = () => document.visibilityState === 'visible' && this.stale() && this.reopen();
    window.addEventListener('online', this.onOnline);
    window.addEventListener('offline', this.onOffline);
    document.addEventListener('visibilitychange', this.onVisible);
  }

  url() {
    const rv = this.revision === null ? '' : `&resourceVersion=${this.revision}`;
    // Nodes belong to no project: their list takes no all_projects (and rejects it).
    const scope = this.path === '/v1/nodes' ? '' : '&all_projects=true';
    return `${this.path}?watch=true${scope}${rv}`;
  }

  open() {
    this.lastSeen = Date.now();
    const source = new EventSource(this.url());
    this.source = source;
    source.onmessage = (msg) => {
      this.lastSeen = Date.now();
      this.retry = 500;
      const e = JSON.parse(msg.data);
      if (e.type === 'ERROR') {
        if (e.code === 'Gone') this.revision = null; // history compacted: list again
        this.reopen();
        return;
      }
      if (e.type === 'BOOKMARK') {
        this.synced = true;
      } else if (e.type === 'DELETED') {
        if (this.items.delete(key(e.object))) this.keysVersion += 1;
      } else {
        const k = key(e.object);
        if (!this.items.has(k)) this.keysVersion += 1;
        this.items.set(k, e.object);
      }
      this.revision = e.revision;
      this.changed();
    };
    source.onerror = () => {
      // CLOSED: the browser gave up (a 410, a refused login): start again ourselves.
      if (source.readyState === EventSource.CLOSED) {
        this.revision = null;
        this.items.clear();
        this.keysVersion += 1;
        this.synced = false;
        setTimeout(() => this.source === source && this.reopen(), this.retry);
        this.retry = Math.min(this.retry * 2, 10000);
      }
    };
  }

  // Heartbeats come every 15 s: a stream silent for much longer died without notice.
  stale() {
    return Date.now() - this.lastSeen > 40000;
  }

  reopen() {
    this.source?.close();
    if (this.revision === null) {
      this.items.clear();
      this.keysVersion += 1;
      this.synced = false;
    }
    this.open();
  }

  changed() {
    // Until the first batch is in (its BOOKMARK), a render would show a partial list and
    // be redone frame after frame.
    if (this.scheduled || !this.synced) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      for (const f of this.listeners) f(this);
    });
  }

  subscribe(f) {
    this.listeners.add(f);
    if (this.synced) f(this);
    return () => this.listeners.delete(f);
  }

  close() {
    this.source?.close();
    this.source = null;
    window.removeEventListener('online', this.onOnline);
    window.removeEventListener('offline', this.onOffline);
    document.removeEventListener('visibilitychange', this.onVisible);
  }
}

const shared = new Map();
const users = new Map();
// Kept while the console is open: the VM list and VM pages both follow it.
const KEPT = '/v1/vms';

// One live collection per kind while a page uses it. Others are closed when their page goes:
// over HTTP/1.1 a browser opens at most six connections to a host, and every open stream
// holds one.
export function live(path) {
  if (!shared.has(path)) shared.set(path, new Live(path));
  users.set(path, (users.get(path) ?? 0) + 1);
  return shared.get(path);
}

export function release(path) {
  const left = (users.get(path) ?? 1) - 1;
  users.set(path, left);
  if (left <= 0 && path !== KEPT) {
    shared.get(path)?.close();
    shared.delete(path);
  }
}

setInterval(() => {
  if (!navigator.onLine) return;
  for (const l of shared.values()) if (l.stale()) l.reopen();
}, 20000);
