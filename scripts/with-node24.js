#!/usr/bin/env node
// `npm start` and `npm test` run through this. On Node 24 or newer it just runs the command. On an older
// Node it uses Node 24 from the npm registry, installed once into ~/.cache/dropwire-node
// (DROPWIRE_NODE_CACHE) exactly as .ci/run does, says so in one line, and runs the command with that
// Node first on PATH. Written for old Nodes: nothing here may need more than Node 14.
import { spawn, spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';

const NEED = 24;
const win = process.platform === 'win32';
const [command, ...extra] = process.argv.slice(2);
if (!command) {
  process.stderr.write('usage: node scripts/with-node24.js "COMMAND" [ARGS…]\n');
  process.exit(2);
}

const major = (v) => Number(String(v).replace(/^v/, '').split('.')[0]);
let env = process.env;
if (major(process.versions.node) < NEED) {
  const cache = process.env.DROPWIRE_NODE_CACHE || path.join(os.homedir(), '.cache', 'dropwire-node');
  const bin = path.join(cache, 'node_modules', '.bin');
  const cached = () => {
    const r = spawnSync(path.join(bin, win ? 'node.cmd' : 'node'), ['--version'], { encoding: 'utf8', shell: win });
    return r.status === 0 && major(r.stdout.trim()) >= NEED ? r.stdout.trim() : '';
  };
  let version = cached();
  let how = 'from';
  if (!version) {
    const r = spawnSync(win ? 'npm.cmd' : 'npm', ['install', '--prefix', cache, '--no-save', '--no-audit', '--no-fund', `node@${NEED}`], {
      stdio: ['ignore', 'ignore', 'pipe'],
      encoding: 'utf8',
      shell: win,
    });
    version = r.status === 0 ? cached() : '';
    if (!version) {
      process.stderr.write(r.stderr || (r.error ? String(r.error) + '\n' : ''));
      process.stderr.write(`dropwire needs Node.js ${NEED} or newer (found ${process.versions.node}), and installing node@${NEED} into ${cache} failed; see README\n`);
      process.exit(1);
    }
    how = 'fetched from the npm registry into';
  }
  process.stderr.write(`dropwire: Node ${process.versions.node} is older than ${NEED}; using Node ${version.replace(/^v/, '')} ${how} ${cache}\n`);
  env = { ...process.env, PATH: bin + path.delimiter + (process.env.PATH || '') };
}

// The command is one shell string ("npm run build && vitest run"); arguments after it (`npm test -- FILE`)
// are appended, quoted for the shell.
const quote = (a) => (win ? `"${a.replace(/"/g, '""')}"` : `'${a.replace(/'/g, `'\\''`)}'`);
const line = [command, ...extra.map(quote)].join(' ');
// On POSIX the command gets its own process group, and signals reach it only through here, once: a
// Ctrl-C comes both from the terminal and from npm (which passes it on), and a second SIGINT would
// cut a graceful stop short. A signal repeated within a second is the same one.
const child = spawn(line, { stdio: 'inherit', env, shell: true, detached: !win });
const last = {};
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (win) {
      if (sig !== 'SIGINT') child.kill(sig); // Ctrl-C reaches every process of the console by itself
      return;
    }
    const now = Date.now();
    if (now - (last[sig] || 0) < 1000) return;
    last[sig] = now;
    try {
      process.kill(-child.pid, sig);
    } catch {
      // already gone
    }
  });
}
child.on('exit', (code, signal) => {
  if (signal) process.exitCode = 128 + (os.constants.signals[signal] || 1);
  else process.exitCode = code === null ? 1 : code;
});
