// release-notes: render RELEASE_NOTES.md into the first output artifact.
//
// Config: `version` (required), `title` (default "Release"), `changes`
// (entries separated by `;` or newlines). Exports `file` and `changes` (count).
//
// ./sluice.js is the SDK's helper module; its writeText goes through
// wasi:filesystem, since componentize-js has no `fs` module.
import { action, Failure, Outcome } from './sluice.js';

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

export const run = action((ctx) => {
  const version = ctx.require('version').trim();
  const title = ctx.config('title', '').trim() || 'Release';
  const changes = ctx
    .config('changes', '')
    .split(/[;\n]/)
    .map((c) => c.trim())
    .filter((c) => c.length > 0);
  if (ctx.outputs.length === 0) {
    throw Failure.config('release-notes needs an output artifact to write RELEASE_NOTES.md into');
  }
  const artifact = ctx.outputs[0];
  const path = `${ctx.outputDir(artifact)}/RELEASE_NOTES.md`;
  const text = render({ title, version, changes, executionId: ctx.executionId, pipeline: ctx.pipeline });
  ctx.progress(50, 'writing release notes');
  ctx.writeText(path, text); // a write error fails the job, naming the path
  ctx.info(`wrote ${path} (${changes.length} changes, ${text.length} bytes)`);
  ctx.progress(100, 'done');
  return new Outcome(
    `${title} ${version}: release notes with ${changes.length} change${changes.length === 1 ? '' : 's'} in ${artifact}`,
    { file: `${artifact}/RELEASE_NOTES.md`, changes: changes.length },
  );
});
