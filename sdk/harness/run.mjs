// Driver for try.sh: node run.mjs <transpiled>/<name>.js <invocation json> [/guest=/host ...]

import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';
const [mod, inv, ...pre] = process.argv.slice(2);
const preopens = {};
for (const p of pre) { const [g, h] = p.split('='); preopens[g] = h; }
_setPreopens(preopens);
const m = await import(new URL(mod, `file://${process.cwd()}/`).href);
const base = { pipeline: 'p', stage: 's', action: 'a', executionId: 'exec-1', attempt: 1, config: [], inputs: [], outputs: [], mounts: [] };
try {
  const r = m.run({ ...base, ...JSON.parse(inv) });
  console.log('OK', JSON.stringify(r));
} catch (e) {
  console.log("ERR", JSON.stringify(e.payload ?? e), e.constructor?.name, e instanceof Error && !("payload" in e) ? e.stack : "");
}
