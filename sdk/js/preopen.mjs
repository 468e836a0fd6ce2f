// Loaded with `node --import` before jco. componentize-js runs its build steps
// as Wasm under @bytecodealliance/preview2-shim; when npm installs that shim
// nested (node_modules/**/node_modules/@bytecodealliance/preview2-shim), those
// copies start with no preopens and the build cannot read the source or the
// WIT. Give every copy the whole filesystem, as the top-level one gets.
// SLUICE_JS_TOOLS names the node_modules parent (default: this file's dir).
import { readdirSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';

const root = join(process.env.SLUICE_JS_TOOLS ?? fileURLToPath(new URL('.', import.meta.url)), 'node_modules');
const shims = [];
function walk(dir, depth) {
  if (depth > 8 || !existsSync(dir)) return;
  const shim = join(dir, '@bytecodealliance', 'preview2-shim', 'dist', 'nodejs', 'filesystem.js');
  if (existsSync(shim)) shims.push(shim);
  for (const entry of readdirSync(dir)) {
    const sub = join(dir, entry);
    if (entry.startsWith('.') || !statSync(sub).isDirectory()) continue;
    if (entry.startsWith('@')) {
      for (const pkg of readdirSync(sub)) {
        const nested = join(sub, pkg, 'node_modules');
        if (existsSync(nested)) walk(nested, depth + 1);
      }
    } else {
      const nested = join(sub, 'node_modules');
      if (existsSync(nested)) walk(nested, depth + 1);
    }
  }
}
walk(root, 0);
for (const s of shims) {
  const mod = await import(pathToFileURL(s).href);
  if (typeof mod._setPreopens === 'function') mod._setPreopens({ '/': '/' });
}
