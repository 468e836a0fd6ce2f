// A minimal Sluice action in JavaScript. Rename, then edit run().
import { write } from 'sluice:action/log@0.1.0';

function config(invocation, key, fallback) {
  for (const [k, v] of invocation.config) if (k === key) return v;
  return fallback;
}

export function run(invocation) {
  const who = config(invocation, 'who', 'world');
  if (!who) {
    // Throwing a `failure` record returns `err(failure)`.
    throw { kind: 'configuration-error', message: '`who` is empty' };
  }
  write('info', `greeting ${who}`);
  return { summary: `hello, ${who}`, variables: [['who', who]] };
}
