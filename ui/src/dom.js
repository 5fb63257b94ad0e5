// Small DOM helpers: elements from a tag, attributes and children; text is never parsed as
// HTML, so no object's name or message can inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function say(text) {
  const status = document.getElementById('status');
  status.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => (status.textContent = ''), 6000);
}

export function confirmDialog(text, action = 'Confirm') {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = action;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

// Shows an API error at the form field it names (`data-field="spec.memory"`), else at the
// form's own error line.
export function showError(form, err) {
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  for (const el of form.querySelectorAll('.field-error')) el.textContent = '';
  const general = form.querySelector('.form-error');
  if (!err) {
    if (general) general.textContent = '';
    return;
  }
  let target = null;
  if (err.field) {
    const parts = err.field.split('.');
    while (parts.length && !target) {
      target = form.querySelector(`[data-field="${CSS.escape(parts.join('.'))}"]`);
      parts.pop();
    }
  }
  if (target) {
    target.setAttribute('aria-invalid', 'true');
    const line = form.querySelector(`#${CSS.escape(target.id)}-error`);
    if (line) {
      line.textContent = err.message;
      target.focus();
      if (general) general.textContent = '';
      return;
    }
  }
  if (general) general.textContent = err.message;
}

export function field(id, label, input, hint) {
  input.id = id;
  input.setAttribute('aria-describedby', `${id}-error${hint ? ` ${id}-hint` : ''}`);
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, label),
    input,
    hint ? h('small', { id: `${id}-hint` }, hint) : null,
    h('span', { class: 'field-error', id: `${id}-error`, role: 'alert' }),
  );
}
