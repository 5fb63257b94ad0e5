// The serial console: xterm.js over the console WebSocket (binary frames both ways), loaded
// only on this page. It reconnects by itself, with the kept scrollback.
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { inProject } from './api.js';
import { h } from './dom.js';

export function vmConsole(project, name) {
  const box = h('div', { class: 'terminal', id: 'terminal' });
  const state = h('p', { 'aria-live': 'polite', id: 'console-state' }, 'Connecting…');
  // Who holds the console's only writer, as the server says (writer_events), live.
  const writer = h('p', { 'aria-live': 'polite', id: 'console-writer' }, 'Writer: –');
  const paste = h('button', { type: 'button', id: 'console-paste', title: 'Type the clipboard\'s text into the console (Ctrl+Shift+V in the terminal does the same)' }, 'Paste from clipboard');
  // Screen reader mode is the user's choice, off by default: in it xterm.js drops text that
  // arrives as input events without a key press (IMEs, dead keys and compose sequences of
  // non-US layouts, emoji pickers), which must reach the guest.
  const term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000 });
  const reader = h('input', { type: 'checkbox', id: 'console-reader' });
  reader.addEventListener('change', () => {
    term.options.screenReaderMode = reader.checked;
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  const encoder = new TextEncoder();
  let socket = null;
  let closed = false;
  let delay = 500;
  // Keys, IME compositions and dead keys of any layout arrive here as text; pastes too (xterm
  // reads the textarea's paste event). All of it goes to the guest as UTF-8.
  term.onData((data) => socket?.readyState === WebSocket.OPEN && socket.send(encoder.encode(data)));
  // The clipboard API where the browser allows it (a secure context, the user's consent);
  // term.paste() brackets the text when the guest's shell asked for bracketed paste.
  paste.addEventListener('click', async () => {
    try {
      term.paste(await navigator.clipboard.readText());
      term.focus();
    } catch (err) {
      state.textContent = `Paste refused by the browser (${err.message}): use Ctrl+Shift+V or the browser's menu in the terminal`;
    }
  });
  term.attachCustomKeyEventHandler((e) => {
    // Ctrl+Shift+V pastes, as in desktop terminals (Ctrl+V is the guest's: literal next).
    if (e.type === 'keydown' && e.ctrlKey && e.shiftKey && e.code === 'KeyV') {
      paste.click();
      return false;
    }
    return true;
  });
  // Writing first; while another client holds the console's only writer (the attach is
  // refused before the upgrade), read only, and try for the writer again on reconnecting.
  let write = true;
  const connect = () => {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const path = inProject(`/v1/vms/${encodeURIComponent(name)}/console/ws`, project);
    const scrollback = socket ? 'false' : 'true';
    const ws = new WebSocket(`${proto}://${location.host}${path}&write=${write}&scrollback=${scrollback}&writer_events=true`);
    socket = ws;
    let opened = false;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      opened = true;
      delay = 500;
      state.textContent = write ? 'Connected (writing)' : 'Read only: another client holds the writer';
      box.dataset.connected = 'true';
    };
    ws.onmessage = (m) => {
      if (typeof m.data !== 'string') return term.write(new Uint8Array(m.data));
      const e = JSON.parse(m.data);
      if (e.type !== 'writer') return;
      writer.textContent = e.you ? `Writer: you (${e.holder})` : e.holder ? `Writer: ${e.holder} (you are read only)` : 'Writer: nobody (reconnect to type)';
      writer.dataset.holder = e.holder ?? '';
      writer.dataset.you = String(e.you);
      // The writer left: take its place.
      if (!e.you && !e.holder && !write && !closed) {
        write = true;
        ws.close();
      }
    };
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
    el: h('section', {}, h('p', {}, h('a', { href: `#/vm/${project}/${name}` }, `← VM ${name}`)), h('h1', { tabindex: -1 }, `Serial console of ${name}`), state, h('div', { class: 'bar' }, writer, h('label', {}, reader, ' Screen reader mode (IME and dead-key input is lost in it)'), paste), box),
    close: () => {
      closed = true;
      window.removeEventListener('resize', resize);
      socket?.close();
      term.dispose();
    },
  };
}
