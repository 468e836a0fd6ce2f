// release-notes: render RELEASE_NOTES.md into the first output artifact.
//
// Config: `version` (required), `title` (default "Release"), `changes`
// (entries separated by `;` or newlines). Exports `file` and `changes` (count).
//
// componentize-js has no `fs` module, so the file is written through
// wasi:filesystem, which the `action-js` world imports (see ../wit/).
import { write, progress } from 'sluice:action/log@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

function config(invocation, key, fallback) {
  for (const [k, v] of invocation.config) if (k === key) return v;
  return fallback;
}

function failure(kind, message) {
  write('error', message);
  return { kind, message };
}

// The preopened directory holding an absolute guest path, and the rest of it.
// Sluice preopens each artifact on its own: /in/<name>, /out/<name>, ...
function resolve(path) {
  let best = null;
  for (const [dir, root] of getDirectories()) {
    const prefix = root.endsWith('/') ? root : `${root}/`;
    if ((path === root || path.startsWith(prefix)) && (!best || root.length > best.root.length)) {
      best = { dir, root, rest: path === root ? '.' : path.slice(prefix.length) };
    }
  }
  if (!best) throw new Error(`${path} is not inside any directory this action can see`);
  return best;
}

// UTF-8 bytes of a string (the QuickJS backend has no TextEncoder).
function utf8(text) {
  if (typeof TextEncoder !== 'undefined') return new TextEncoder().encode(text);
  const bin = unescape(encodeURIComponent(text));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

function writeFile(path, text) {
  const { dir, rest } = resolve(path);
  const fd = dir.openAt({}, rest, { create: true, truncate: true }, { write: true });
  const bytes = utf8(text);
  let off = 0;
  while (off < bytes.length) {
    // u64 is a BigInt under StarlingMonkey but a Number under QuickJS (which also lacks TextEncoder).
    const at = typeof TextEncoder === "undefined" ? off : BigInt(off);
    const n = Number(fd.write(bytes.subarray(off), at));
    if (n <= 0) throw new Error(`short write to ${path}`);
    off += n;
  }
}

function fsError(e) {
  // wasi:filesystem errors arrive as a ComponentError whose payload is the error-code.
  return e && e.payload !== undefined ? String(e.payload) : String(e && e.message ? e.message : e);
}

function render({ title, version, changes, executionId, pipeline }) {
  const lines = [`# ${title} ${version}`, ''];
  if (changes.length) {
    lines.push('## Changes', '');
    for (const c of changes) lines.push(`- ${c}`);
  } else {
    lines.push('No changes listed.');
  }
  lines.push('', `_Pipeline \`${pipeline}\`, execution \`${executionId}\`._`, '');
  return lines.join('\n');
}

export function run(invocation) {
  const version = (config(invocation, 'version', '') ?? '').trim();
  if (!version) throw failure('configuration-error', 'config `version` is required');
  const title = (config(invocation, 'title', '') ?? '').trim() || 'Release';
  const changes = (config(invocation, 'changes', '') ?? '')
    .split(/[;\n]/)
    .map((c) => c.trim())
    .filter((c) => c.length > 0);
  if (invocation.outputs.length === 0) {
    throw failure('configuration-error', 'release-notes needs an output artifact to write RELEASE_NOTES.md into');
  }
  const artifact = invocation.outputs[0];
  const path = `/out/${artifact}/RELEASE_NOTES.md`;
  const text = render({ title, version, changes, executionId: invocation.executionId, pipeline: invocation.pipeline });
  progress(50, 'writing release notes');
  try {
    writeFile(path, text);
  } catch (e) {
    throw failure('job-failed', `cannot write ${path}: ${fsError(e)}`);
  }
  write('info', `wrote ${path} (${changes.length} changes, ${text.length} bytes)`);
  progress(100, 'done');
  return {
    summary: `${title} ${version}: release notes with ${changes.length} change${changes.length === 1 ? '' : 's'} in ${artifact}`,
    variables: [
      ['file', `${artifact}/RELEASE_NOTES.md`],
      ['changes', String(changes.length)],
    ],
  };
}
