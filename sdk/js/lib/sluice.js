// sluice.js: write a Sluice action in JavaScript as one function of a Context.
//
// The JavaScript counterpart of the Rust SDK's `Context` (sdk/rust). sdk/js/build.sh
// stages this file next to the plugin's app.js, so app.js can write:
//
//   import { action, Outcome, Failure } from './sluice.js';
//
//   export const run = action((ctx) => {
//     const who = ctx.config('who', 'world');
//     ctx.info(`greeting ${who}`);
//     return new Outcome(`hello, ${who}`, { who });
//   });
//
// `run` returns an Outcome (or a plain summary string) or throws a Failure;
// `action` turns that into the contract's result. Any other exception traps the
// action; its message goes to the action's stderr.
//
// componentize-js has no `fs` module: files are read and written through
// wasi:filesystem, which the `action-js` world imports (sdk/js/wit/).
import { write, progress as reportProgress } from 'sluice:action/log@0.1.0';
import { get as getSecret } from 'sluice:action/secrets@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

const KINDS = ['job-failed', 'configuration-error', 'permission-error', 'revision-unavailable'];
const TRUE = ['true', 'yes', '1', 'on'];
const FALSE = ['false', 'no', '0', 'off'];
// The QuickJS backend passes u64 as a Number and has no TextEncoder; StarlingMonkey
// passes u64 as a BigInt.
const BIG = typeof TextEncoder !== 'undefined';

/** A failed action: throw it from `run`. */
export class Failure extends Error {
  /** `kind`: job-failed (the default), configuration-error, permission-error, revision-unavailable. */
  constructor(message, kind = 'job-failed') {
    super(message);
    if (!KINDS.includes(kind)) throw new Error(`unknown failure kind ${kind}; use one of ${KINDS.join(', ')}`);
    this.kind = kind;
  }
  /** The job itself failed: a build broke, a test failed. */
  static job(message) { return new Failure(message, 'job-failed'); }
  /** The configuration is missing or wrong; retrying will not help. */
  static config(message) { return new Failure(message, 'configuration-error'); }
  /** A capability the action needs was not granted. */
  static permission(message) { return new Failure(message, 'permission-error'); }
}

/** A successful result: a one-line summary and output variables (`#{namespace.key}`). */
export class Outcome {
  constructor(summary, variables = {}) {
    this.summary = summary;
    this.variables = Object.entries(variables).map(([k, v]) => [k, String(v)]);
  }
  /** Add (or replace) an output variable; returns the outcome for chaining. */
  variable(key, value) {
    this.variables = this.variables.filter(([k]) => k !== key);
    this.variables.push([key, String(value)]);
    return this;
  }
}

/** What the action was told, and its window onto the host. */
export class Context {
  constructor(invocation) {
    this.invocation = invocation;
    this.pipeline = invocation.pipeline;
    this.stage = invocation.stage;
    this.action = invocation.action;
    this.executionId = invocation.executionId;
    this.attempt = invocation.attempt;
    this.inputs = [...invocation.inputs];
    this.outputs = [...invocation.outputs];
    this.mounts = [...invocation.mounts];
    this.continuation = invocation.continuation ?? null;
    /** Writable scratch space, deleted after the action. */
    this.workspace = '/workspace';
  }

  // --- configuration ------------------------------------------------------

  /** The value of `key`, or `fallback` when the pipeline did not set it. */
  config(key, fallback = undefined) {
    for (const [k, v] of this.invocation.config) if (k === key) return v;
    return fallback;
  }

  /** The value of `key`; a configuration-error naming it when unset or empty. */
  require(key) {
    const value = this.config(key);
    if (value === undefined || value.trim() === '') throw Failure.config(`config \`${key}\` is required`);
    return value;
  }

  /** `key` as an integer, or `fallback` when unset. */
  configInt(key, fallback) {
    const value = this.config(key);
    if (value === undefined) return fallback;
    if (!/^\s*-?\d+\s*$/.test(value)) throw Failure.config(`config \`${key}\` must be an integer, not "${value}"`);
    return parseInt(value, 10);
  }

  /** `key` as a boolean (true/false, yes/no, 1/0, on/off), or `fallback`. */
  configBool(key, fallback) {
    const value = this.config(key);
    if (value === undefined) return fallback;
    const v = value.trim().toLowerCase();
    if (TRUE.includes(v)) return true;
    if (FALSE.includes(v)) return false;
    throw Failure.config(`config \`${key}\` must be true or false, not "${value}"`);
  }

  // --- artifacts ----------------------------------------------------------

  /** `/in/<name>`, read-only; without a name, the first input artifact. */
  inputDir(name) { return `/in/${artifact(this.inputs, name, 'input')}`; }

  /** `/out/<name>`, initially empty; without a name, the first output artifact. */
  outputDir(name) { return `/out/${artifact(this.outputs, name, 'output')}`; }

  /** `/mnt/<name>`: a granted host directory. */
  mountDir(name) { return `/mnt/${artifact(this.mounts, name, 'mount')}`; }

  /** The UTF-8 text of `path`. A missing file is a configuration-error naming it. */
  readText(path) { return decodeUtf8(this.readBytes(path)); }

  /** The bytes of `path` (a Uint8Array), with the errors of `readText`. */
  readBytes(path) {
    let fd;
    try {
      const { dir, rest } = resolve(path);
      fd = dir.openAt({}, rest, {}, { read: true });
    } catch (e) {
      if (e instanceof Failure) throw e;
      if (fsCode(e) === 'no-entry') throw Failure.config(`${path} does not exist`);
      throw Failure.job(`cannot read ${path}: ${fsCode(e)}`);
    }
    const chunks = [];
    let total = 0;
    for (;;) {
      const [data, end] = fd.read(BIG ? 65536n : 65536, BIG ? BigInt(total) : total);
      chunks.push(data);
      total += data.length;
      if (end || data.length === 0) break;
    }
    const bytes = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) { bytes.set(c, at); at += c.length; }
    return bytes;
  }

  /** Write `text` (UTF-8) to `path`, creating its parent directories. */
  writeText(path, text) {
    try {
      const { dir, rest } = resolve(path);
      const parts = rest.split('/');
      for (let i = 1; i < parts.length; i++) {
        try { dir.createDirectoryAt(parts.slice(0, i).join('/')); } catch (e) { if (fsCode(e) !== 'exist') throw e; }
      }
      const fd = dir.openAt({}, rest, { create: true, truncate: true }, { write: true });
      const bytes = encodeUtf8(text);
      let off = 0;
      while (off < bytes.length) {
        const n = Number(fd.write(bytes.subarray(off), BIG ? BigInt(off) : off));
        if (n <= 0) throw new Error('short write');
        off += n;
      }
    } catch (e) {
      if (e instanceof Failure) throw e;
      throw Failure.job(`cannot write ${path}: ${fsCode(e)}`);
    }
  }

  // --- secrets, logging, progress -------------------------------------------

  /** The granted secret `name`; a permission-error otherwise. Asking for a
   *  secret that was not granted fails the action even if this is caught. */
  secret(name) {
    try {
      return getSecret(name);
    } catch (e) {
      throw Failure.permission(String(e && e.payload !== undefined ? e.payload : e));
    }
  }

  trace(message) { write('trace', message); }
  debug(message) { write('debug', message); }
  info(message) { write('info', message); }
  warn(message) { write('warn', message); }
  error(message) { write('error', message); }

  /** Report progress (clamped to 0-100) with a short message, shown live. */
  progress(percent, message) { reportProgress(Math.max(0, Math.min(100, Math.round(percent))), message); }
}

/**
 * The `run` export for app.js: calls `fn(ctx)` once per attempt. A returned
 * Outcome (or summary string) becomes `ok`; a thrown Failure is logged at error
 * level and becomes `err` with its kind.
 */
export function action(fn) {
  return function run(invocation) {
    const ctx = new Context(invocation);
    let result;
    try {
      result = fn(ctx);
    } catch (e) {
      if (!(e instanceof Failure)) throw e;
      ctx.error(e.message);
      // componentize-js turns a thrown `failure` record into `err(failure)`.
      throw { kind: e.kind, message: e.message };
    }
    if (typeof result === 'string') result = new Outcome(result);
    if (!(result instanceof Outcome)) throw new Error('run must return an Outcome or a string');
    return { summary: result.summary, variables: result.variables };
  };
}

function artifact(names, name, what) {
  if (name === undefined) {
    if (names.length === 0) throw Failure.config(`this action needs an ${what} artifact; add \`${what}s = [...]\` in the pipeline`);
    return names[0];
  }
  if (!names.includes(name)) throw Failure.config(`\`${name}\` is not one of this action's ${what}s (${names.join(', ') || 'none'})`);
  return name;
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
  if (!best) throw Failure.config(`${path} is not inside any directory this action can see`);
  return best;
}

// wasi:filesystem errors arrive as a ComponentError whose payload is the error-code.
function fsCode(e) {
  return e && e.payload !== undefined ? String(e.payload) : String(e && e.message ? e.message : e);
}

function encodeUtf8(text) {
  if (typeof TextEncoder !== 'undefined') return new TextEncoder().encode(text);
  const bin = unescape(encodeURIComponent(text));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

function decodeUtf8(bytes) {
  if (typeof TextDecoder !== 'undefined') return new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  let bin = '';
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
  return decodeURIComponent(escape(bin));
}
