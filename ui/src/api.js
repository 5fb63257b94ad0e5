// The REST API as the console uses it: same-origin fetches carrying the session cookie, and
// errors as {status, code, message, field} — field is the path the server's message names
// ("spec.memory: …"), so a form can show the message at that field.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
    const m = /^([a-z_][\w.[\]]*):\s/i.exec(message);
    this.field = m ? m[1] : null;
  }
}

export async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  const data = text ? safeJson(text) : null;
  if (!res.ok) {
    const err = data?.error ?? {};
    throw new ApiError(res.status, err.code ?? 'Error', err.message ?? `${res.status} ${res.statusText}`);
  }
  return data;
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return { text };
  }
}

export const inProject = (path, project) =>
  `${path}${path.includes('?') ? '&' : '?'}project=${encodeURIComponent(project ?? 'default')}`;

export const key = (obj) => `${obj.metadata.project ?? 'default'}/${obj.metadata.name}`;
