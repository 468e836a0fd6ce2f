// Driver for try.sh: node run.mjs <transpiled>/<name>.js <invocation json> [/guest=/host ...]
import { _setPreopens, types } from '@bytecodealliance/preview2-shim/filesystem';
import { setPreopens } from './host.js';

// wasi-libc (Rust std, CPython) asks for mutate-directory when it opens files;
// Node's shim refuses that flag, the Sluice host does not. Drop it here.
const openAt = types.Descriptor.prototype.openAt;
types.Descriptor.prototype.openAt = function (pathFlags, path, openFlags, descriptorFlags) {
  return openAt.call(this, pathFlags, path, openFlags, { ...descriptorFlags, mutateDirectory: false });
};

const [mod, inv, ...pre] = process.argv.slice(2);
const preopens = {};
for (const p of pre) {
  const at = p.indexOf('=');
  if (at <= 0) { console.error(`try.sh: preopen "${p}" must be /guest/path=/host/dir`); process.exit(2); }
  preopens[p.slice(0, at)] = p.slice(at + 1);
}
_setPreopens(preopens);
setPreopens(preopens);
let invocation;
try {
  invocation = JSON.parse(inv);
} catch (e) {
  console.error(`try.sh: the invocation is not JSON: ${e.message}`);
  process.exit(2);
}
let m;
try {
  m = await import(new URL(mod, `file://${process.cwd()}/`).href);
} catch (e) {
  console.log('TRAP', `the component did not load: ${e instanceof Error ? e.stack : e}`);
  process.exit(2);
}
const base = {
  pipeline: 'p', stage: 's', action: 'a', executionId: 'exec-1', attempt: 1,
  config: [], inputs: [], outputs: [], mounts: [], continuation: undefined,
};
try {
  const r = m.run({ ...base, ...invocation });
  console.log('OK', JSON.stringify(r));
} catch (e) {
  if (e && 'payload' in e) {
    console.log('ERR', JSON.stringify(e.payload));
    process.exit(1);
  }
  console.log('TRAP', e instanceof Error ? e.stack : String(e));
  process.exit(2);
}
