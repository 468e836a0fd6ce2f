// A minimal Sluice action in JavaScript. Rename, then edit run().
//
// ./sluice.js is the SDK's helper module (build.sh puts it next to this file):
// `ctx` holds the configuration, artifacts, logging and progress.
import { action, Failure, Outcome } from './sluice.js';

export const run = action((ctx) => {
  const who = ctx.config('who', 'world');
  if (!who.trim()) {
    // A Failure becomes err(failure) with its kind; other exceptions trap.
    throw Failure.config('`who` is empty');
  }
  ctx.info(`greeting ${who}`);
  if (ctx.outputs.length > 0) ctx.writeText(`${ctx.outputDir()}/greeting.txt`, `hello, ${who}\n`);
  return new Outcome(`hello, ${who}`, { who });
});
