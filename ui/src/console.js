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
  const connect = () => {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const path = inProject(`/v1/vms/${encodeURIComponent(name)}/console/ws`, project);
    socket = new WebSocket(`${proto}://${location.host}${path}&write=true&scrollback=${socket ? 'false' : 'true'}`);
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => {
      delay = 500;
      state.textContent = 'Connected (writing)';
      box.dataset.connected = 'true';
    };
    socket.onmessage = (m) => term.write(new Uint8Array(m.data));
    socket.onclose = (e) => {
      box.dataset.connected = 'false';
      if (closed) return;
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
