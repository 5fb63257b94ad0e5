// The serial console: xterm.js over the console WebSocket (binary frames both ways), loaded
// only on this page. It reconnects by itself, with the kept scrollback.
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { inProject } from './api.js';
import { h } from './dom.js';

export function vmConsole(project, name) {
  const box = h('div', { class: 'terminal', id: 'terminal' });
  const state = h('p', { 'aria-live': 'polite', id: 'console-state' }, 'Connecting…');
  const term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000, screenReaderMode: true });
  const fit = new FitAddon();
  term.loadAddon(fit);
  const encoder = new TextEncoder();
  let socket = null;
  let closed = false;
  let delay = 500;
  term.onData((data) => socket?.readyState === WebSocket.OPEN && socket.send(encoder.encode(data)));
  // Writing first; while another client holds the console's only writer (the attach is
  // refused before the upgrade), read only, and try for the writer again on reconnecting.
  let write = true;
  const connect = () => {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const path = inProject(`/v1/vms/${encodeURIComponent(name)}/console/ws`, project);
    const scrollback = socket ? 'false' : 'true';
    const ws = new WebSocket(`${proto}://${location.host}${path}&write=${write}&scrollback=${scrollback}`);
    socket = ws;
    let opened = false;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      opened = true;
      delay = 500;
      state.textContent = write ? 'Connected (writing)' : 'Read only: another client holds the writer';
      box.dataset.connected = 'true';
    };
    ws.onmessage = (m) => term.write(new Uint8Array(m.data));
    ws.onclose = (e) => {
      box.dataset.connected = 'false';
      if (closed) return;
      if (!opened && write) {
        write = false; // refused: most likely the writer is taken
        return connect();
      }
      write = true;
      state.textContent = `Disconnected (${e.code}${e.reason ? `: ${e.reason}` : ''}); reconnecting…`;
      setTimeout(() => !closed && connect(), delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  const resize = () => fit.fit();
  requestAnimationFrame(() => {
    term.open(box);
    fit.fit();
    term.focus();
    connect();
  });
  window.addEventListener('resize', resize);
  return {
    title: `Console of ${name}`,
    el: h('section', {}, h('p', {}, h('a', { href: `#/vm/${project}/${name}` }, `← VM ${name}`)), h('h1', { tabindex: -1 }, `Serial console of ${name}`), state, box),
    close: () => {
      closed = true;
      window.removeEventListener('resize', resize);
      socket?.close();
      term.dispose();
    },
  };
}
