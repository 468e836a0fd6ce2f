// Stand-in for the Sluice host's sluice:action imports, for local tests.
export const log = {
  write(level, message) { console.log(`[log ${level}] ${message}`); },
  progress(percent, message) { console.log(`[progress ${percent}%] ${message}`); },
};
export const secrets = { get(name) { throw `secret ${name} not granted`; } };
export const process = { run() { throw { tag: 'not-allowed', val: 'none' }; } };
export const types = {};
