#!/usr/bin/env node
// Checked before anything that needs Node 24 is loaded (node:sqlite, …): an older Node gets one clear line.
const found = process.versions.node;
if (Number(found.split('.')[0]) < 24) {
  process.stderr.write(`dropwire needs Node.js 24 or newer (found ${found}); see README\n`);
  process.exitCode = 1;
} else {
  await import('../dist/src/cli/main.js');
}
