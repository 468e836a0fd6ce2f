// Stand-ins for the Sluice host's sluice:action imports, for try.sh.
import { env } from 'node:process';

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

export const types = {};
