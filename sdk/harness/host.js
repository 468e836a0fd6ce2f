// Stand-ins for the Sluice host's sluice:action imports, for try.sh.
import { env } from 'node:process';
import * as fs from 'node:fs';
import * as path from 'node:path';

// Guest path prefix -> host directory, as given to try.sh (run.mjs sets them).
let preopens = {};
export function setPreopens(map) { preopens = map; }

export const log = {
  write(level, message) { console.log(`[log ${level}] ${message}`); },
  progress(percent, message) { console.log(`[progress ${percent}%] ${message}`); },
};

// A secret is "granted" when SLUICE_TRY_SECRET_<NAME> is set (NAME upper-cased,
// - and . as _). An error result is a thrown value; jco passes it as `err`.
export const secrets = {
  get(name) {
    const value = env[`SLUICE_TRY_SECRET_${name.toUpperCase().replace(/[-.]/g, '_')}`];
    if (value === undefined) throw `secret ${name} not granted (try.sh: set SLUICE_TRY_SECRET_${name.toUpperCase()})`;
    return value;
  },
};

// Native commands need the host's confinement; the harness runs none.
export const process = {
  run(command) { throw { tag: 'not-allowed', val: `${command.program} (try.sh runs no native commands)` }; },
};

export const continuation = {
  resumeLater(token, delayMs) { console.log(`[continuation] resume in ${delayMs} ms with token ${token}`); },
};

// files.copy-tree, on the host as Sluice does it: executable bits kept, links
// inside the source kept as links, links leaving it refused with their path.
export const files = {
  copyTree(source, destination, only) {
    const from = hostPath(source);
    const to = hostPath(destination);
    const globs = only.map(globRegex);
    const stats = { files: 0n, bytes: 0n, symlinks: 0n };
    const walk = (rel) => {
      for (const entry of fs.readdirSync(path.join(from, rel), { withFileTypes: true })) {
        const r = rel ? `${rel}/${entry.name}` : entry.name;
        const src = path.join(from, r);
        if (entry.isDirectory()) { walk(r); continue; }
        if (globs.length && !globs.some((g) => g.test(r))) continue;
        const dst = path.join(to, r);
        fs.mkdirSync(path.dirname(dst), { recursive: true });
        if (entry.isSymbolicLink()) {
          const target = fs.readlinkSync(src);
          const resolved = path.resolve(path.dirname(src), target);
          if (path.isAbsolute(target) || !(resolved === from || resolved.startsWith(`${from}/`))) {
            throw `${source}/${r} is a symlink to ${target}, outside ${source}`;
          }
          fs.rmSync(dst, { force: true });
          fs.symlinkSync(target, dst);
          stats.symlinks += 1n;
        } else if (entry.isFile()) {
          fs.copyFileSync(src, dst);
          fs.chmodSync(dst, fs.statSync(src).mode & 0o111 ? 0o755 : 0o644);
          stats.files += 1n;
          stats.bytes += BigInt(fs.statSync(src).size);
        }
      }
    };
    fs.mkdirSync(to, { recursive: true });
    walk('');
    return stats;
  },
};

function hostPath(guest) {
  let best = null;
  for (const g of Object.keys(preopens)) {
    if ((guest === g || guest.startsWith(`${g}/`)) && (!best || g.length > best.length)) best = g;
  }
  if (best === null) throw `${guest} is not inside any directory given to try.sh`;
  return path.join(preopens[best], guest.slice(best.length));
}

// `*` stays within one path segment, `**` crosses them, `?` is one character.
function globRegex(glob) {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*' && glob[i + 1] === '*') {
      re += glob[i + 2] === '/' ? '(?:.*/)?' : '.*';
      i += glob[i + 2] === '/' ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

export const types = {};
