// Images, volumes, snapshots, networks and (when clustered) nodes: live tables, with what each
// kind's page can do.
import { api, ApiError, inProject, key } from './api.js';
import { h, say, confirmDialog, field, showError } from './dom.js';
import { live, release } from './watch.js';

const columns = {
  images: [['Format', (o) => o.spec.format ?? ''], ['Size', (o) => o.status?.size ?? ''], ['Digest', (o) => (o.status?.digest ?? '').slice(0, 19)]],
  volumes: [['Kind', (o) => o.spec.kind ?? ''], ['Image', (o) => o.spec.image ?? ''], ['Size', (o) => o.spec.size ?? o.status?.size ?? '']],
  snapshots: [['VM', (o) => o.spec.vm ?? '']],
  networks: [['Mode', (o) => o.spec.mode ?? 'user'], ['CIDR', (o) => o.spec.cidr ?? '']],
  nodes: [
    ['Ready', (o) => o.status?.conditions?.find((c) => c.type === 'Ready')?.status ?? 'Unknown'],
    ['Schedulable', (o) => (o.spec?.unschedulable ? 'cordoned' : 'yes')],
    ['CPUs', (o) => o.status?.allocatable?.cpus ?? ''],
    ['Accelerators', (o) => (o.status?.accelerators ?? []).join(', ')],
  ],
};

// Nodes belong to no project: their page has no Project column and their actions no ?project=.
const clusterScoped = new Set(['nodes']);

export function kindList(kind) {
  const title = kind[0].toUpperCase() + kind.slice(1);
  const body = h('tbody');
  const table = h(
    'table',
    { 'aria-label': title },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), ...(clusterScoped.has(kind) ? [] : [h('th', { scope: 'col' }, 'Project'), h('th', { scope: 'col' }, 'Phase')]), ...columns[kind].map(([c]) => h('th', { scope: 'col' }, c)), h('th', { scope: 'col' }, 'Actions'))),
    body,
  );
  const items = live(`/v1/${kind}`);
  const off = items.subscribe((l) => {
    const rows = [...l.items.values()].sort((a, b) => key(a).localeCompare(key(b))).map((o) => {
      const project = o.metadata.project ?? 'default';
      const actions = [];
      if (kind === 'nodes') {
        const verb = o.spec?.unschedulable ? 'uncordon' : 'cordon';
        const label = verb === 'cordon' ? 'Cordon' : 'Uncordon';
        actions.push(h('button', { type: 'button', 'aria-label': `${label} ${o.metadata.name}`, onclick: () => act('POST', `/v1/nodes/${encodeURIComponent(o.metadata.name)}/${verb}`, null, `${label} node ${o.metadata.name}?`, label) }, label));
        return h('tr', {}, h('th', { scope: 'row' }, o.metadata.name), ...columns[kind].map(([, f]) => h('td', {}, String(f(o)))), h('td', {}, actions));
      }
      if (kind === 'snapshots') {
        actions.push(h('button', { type: 'button', onclick: () => act('POST', `/v1/snapshots/${o.metadata.name}/restore`, project, `Restore snapshot ${o.metadata.name} into VM ${o.spec.vm}?`, 'Restore') }, 'Restore'));
      }
      actions.push(h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${o.metadata.name}`, onclick: () => act('DELETE', `/v1/${kind}/${o.metadata.name}`, project, `Delete ${o.metadata.name} of project ${project}?`, 'Delete') }, 'Delete'));
      return h('tr', {}, h('th', { scope: 'row' }, o.metadata.name), h('td', {}, project), h('td', {}, o.status?.phase ?? ''), ...columns[kind].map(([, f]) => h('td', {}, String(f(o)))), h('td', {}, actions));
    });
    body.replaceChildren(...rows);
  });
  const extra = kind === 'images' ? h('div', {}, fileUpload(), upload()) : kind === 'snapshots' ? takeSnapshot() : null;
  const close = () => {
    off();
    release(`/v1/${kind}`);
  };
  return { title, el: h('section', {}, h('h1', { tabindex: -1 }, title), extra, table), close };
}

async function act(method, path, project, question, verb) {
  if (!(await confirmDialog(question, verb))) return;
  try {
    await api(method, project === null ? path : inProject(path, project));
    say(`${verb}: done`);
  } catch (err) {
    say(err.message);
  }
}

// Uploads a file from this computer: XMLHttpRequest streams it as the request body (fetch()
// reports no upload progress) to PUT /v1/images/{name}/upload, which writes it into the image
// store as it arrives; the bar follows the bytes sent.
function fileUpload() {
  const file = h('input', { type: 'file', required: true, dataset: { field: 'body' } });
  const name = h('input', { required: true, dataset: { field: 'metadata.name' } });
  const project = h('input', { value: 'default', dataset: { field: 'project' } });
  const format = h('select', { dataset: { field: 'format' } }, ...[['', 'Detect'], ['qcow2', 'qcow2'], ['raw', 'raw'], ['kernel', 'kernel'], ['initrd', 'initrd']].map(([v, l]) => h('option', { value: v }, l)));
  const progress = h('progress', { id: 'upload-progress', max: 1, value: 0, 'aria-label': 'Upload progress' });
  const percent = h('output', { id: 'upload-percent', for: 'upload-progress' });
  const button = h('button', { type: 'submit' }, 'Upload');
  const form = h('form', { class: 'inline', 'aria-label': 'Upload an image' }, field('upload-file', 'Image file', file), field('upload-name', 'Uploaded image name', name), field('upload-project', 'Project', project), field('upload-format', 'Format', format), button, h('div', { class: 'field' }, progress, percent), h('p', { class: 'form-error', role: 'alert' }));
  // The file's name, made a valid image name, unless one was typed.
  file.addEventListener('change', () => {
    const f = file.files[0];
    if (f && !name.value) name.value = f.name.toLowerCase().replace(/\.[^.]*$/, '').replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63);
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    showError(form, null);
    const f = file.files[0];
    let path = inProject(`/v1/images/${encodeURIComponent(name.value)}/upload`, project.value);
    path += `&filename=${encodeURIComponent(f.name)}`;
    if (format.value) path += `&format=${format.value}`;
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', path);
    xhr.setRequestHeader('content-type', 'application/octet-stream');
    progress.max = f.size || 1;
    progress.value = 0;
    percent.textContent = '0 %';
    button.disabled = true;
    xhr.upload.onprogress = (p) => {
      if (!p.lengthComputable) return;
      progress.max = p.total;
      progress.value = p.loaded;
      percent.textContent = `${Math.floor((100 * p.loaded) / p.total)} %`;
    };
    xhr.onload = () => {
      button.disabled = false;
      if (xhr.status === 201) {
        percent.textContent = '100 %, stored';
        say(`Image ${name.value} uploaded`);
        return;
      }
      let err = null;
      try {
        err = JSON.parse(xhr.responseText).error;
      } catch {
        // Not the API's JSON: the status says it.
      }
      percent.textContent = 'failed';
      showError(form, new ApiError(xhr.status, err?.code ?? 'Error', err?.message ?? `${xhr.status} ${xhr.statusText}`));
    };
    xhr.onerror = () => {
      button.disabled = false;
      percent.textContent = 'failed';
      showError(form, { message: 'The upload was cut off (network error, or the server refused it before the end: too large?)' });
    };
    xhr.send(f);
  });
  return form;
}

// Imports an image from a URL the daemon downloads; the table shows its phase as it goes.
function upload() {
  const name = h('input', { required: true, dataset: { field: 'metadata.name' } });
  const url = h('input', { type: 'url', required: true, dataset: { field: 'spec.source' } });
  const project = h('input', { value: 'default', dataset: { field: 'project' } });
  const form = h('form', { class: 'inline', 'aria-label': 'Import an image' }, field('image-name', 'Image name', name), field('image-url', 'URL', url), field('image-project', 'Project', project), h('button', { type: 'submit' }, 'Import'), h('p', { class: 'form-error', role: 'alert' }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      showError(form, null);
      await api('POST', inProject('/v1/images', project.value), { kind: 'Image', metadata: { name: name.value }, spec: { source: { url: url.value } } });
      say(`Importing image ${name.value}`);
    } catch (err) {
      showError(form, err);
    }
  });
  return form;
}

function takeSnapshot() {
  const name = h('input', { required: true, dataset: { field: 'metadata.name' } });
  const vm = h('input', { required: true, dataset: { field: 'spec.vm' } });
  const project = h('input', { value: 'default', dataset: { field: 'project' } });
  const form = h('form', { class: 'inline', 'aria-label': 'Take a snapshot' }, field('snap-name', 'Snapshot name', name), field('snap-vm', 'VM', vm), field('snap-project', 'Project', project), h('button', { type: 'submit' }, 'Take snapshot'), h('p', { class: 'form-error', role: 'alert' }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      showError(form, null);
      await api('POST', inProject('/v1/snapshots', project.value), { kind: 'Snapshot', metadata: { name: name.value }, spec: { vm: vm.value } });
      say(`Snapshot ${name.value} requested`);
    } catch (err) {
      showError(form, err);
    }
  });
  return form;
}
