import fs from 'node:fs';
import path from 'node:path';
import { Agent } from '../agent/agent.js';
import { paths } from '../agent/config.js';
import type { ControlServer } from '../agent/control.js';
import { enroll } from '../agent/enroll.js';
import { addDevice, addToken } from '../relay/admin.js';
import { Relay } from '../relay/relay.js';
import { parseHostPort } from '../shared/enrollment.js';
import { isDropwireError } from '../shared/errors.js';
import { FolderLock } from '../shared/lock.js';
import { createLogger, type LogTarget } from '../shared/log.js';
import { writeFileAtomic } from '../shared/files.js';
import { serveAgentControl } from './agent-control.js';
import { untilSignal } from './signals.js';

const DEVICE = 'local';

/**
 * `dropwire up` (`npm start`): the whole loop on one machine, data in one folder, logs in files there.
 * One `up` per folder (DW_DATA_LOCKED). The agent runs as `dropwire agent --home DIR/agent` would: its
 * lock, its control socket and its log file in its home, so `status`, `logs` and `online` with
 * `--home DIR/agent` see it.
 */
export async function runUp(o: { dir: string; http: string }): Promise<void> {
  const dir = path.resolve(o.dir);
  const relayDir = path.join(dir, 'relay');
  const home = path.join(dir, 'agent');
  fs.mkdirSync(home, { recursive: true, mode: 0o700 });
  const locks = [FolderLock.acquire(dir, { what: 'dropwire up' })];
  try {
    // The agent's own lock on its home: a `dropwire agent --home DIR/agent` beside `up` is refused.
    locks.push(FolderLock.acquire(home, { what: 'agent', code: 'DW_AGENT_RUNNING' }));
    await upLocked(o, dir, relayDir, home);
  } finally {
    for (const l of locks.reverse()) l.release();
  }
}

async function upLocked(o: { http: string }, dir: string, relayDir: string, home: string): Promise<void> {
  const relayLog = createLogger('relay', path.join(dir, 'relay.log'));
  const logTarget: LogTarget = { to: 'file', file: paths(home).log, stdout: false };
  const agentLog = createLogger('agent', { file: logTarget.file, stdout: false });

  let relay: Relay;
  try {
    relay = await Relay.start({ dataDir: relayDir, listen: { host: '127.0.0.1', port: 0 }, http: parseHostPort(o.http, '--http'), log: relayLog });
  } catch (err) {
    if (!isDropwireError(err, 'DW_ADDRESS_IN_USE')) throw err;
    relay = await Relay.start({ dataDir: relayDir, listen: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, log: relayLog });
  }

  // Enroll the local agent once; later runs reuse it (and only follow the relay's new port).
  if (!fs.existsSync(path.join(home, 'config.json')) || !(await relay.store.getDevice(DEVICE))?.publicKey) {
    if (await relay.store.getDevice(DEVICE)) await relay.store.removeDevice(DEVICE, Date.now());
    const token = await addDevice(relayDir, DEVICE, { public: relay.info.agents });
    await enroll({ home, token });
  }
  const tokenFile = path.join(dir, 'sender.token');
  let secret = fs.existsSync(tokenFile) ? fs.readFileSync(tokenFile, 'utf8').trim() : '';
  if (!secret) {
    try {
      secret = (await addToken(relayDir, 'local')).token;
    } catch (err) {
      if (!isDropwireError(err, 'DW_TOKEN_EXISTS')) throw err;
      await relay.store.removeToken('local');
      secret = (await addToken(relayDir, 'local')).token;
    }
    writeFileAtomic(tokenFile, secret + '\n', 0o600);
  }

  const agent = new Agent({ home, log: agentLog, relay: relay.info.agents });
  const startedAt = Date.now();
  let control: ControlServer;
  try {
    control = await serveAgentControl({ agent, home, log: agentLog, target: logTarget, startedAt });
  } catch (err) {
    await agent.close();
    await relay.close();
    throw err;
  }
  agent.start();

  const api = `http://${relay.info.http}`;
  const inbox = path.join(home, 'inbox');
  process.stdout.write(
    [
      `dropwire is up.`,
      `  relay HTTP API   ${api}   (agents: ${relay.info.agents})`,
      `  local agent      '${DEVICE}', files land in ${inbox}`,
      `  logs             ${path.join(dir, 'relay.log')}, ${logTarget.file}`,
      `  inspect          dropwire status --home ${home}   (also: logs, online)`,
      ``,
      `Send a file:`,
      `  curl -sS -H "Authorization: Bearer ${secret}" --data-binary @package.json "${api}/v1/messages?to=${DEVICE}&filename=package.json"`,
      `Then see what happened to it (use the id from the answer):`,
      `  curl -sS -H "Authorization: Bearer ${secret}" "${api}/v1/messages/ID?wait=10"`,
      ``,
      `Ctrl-C stops both.`,
      ``,
    ].join('\n'),
  );
  await untilSignal();
  await control.close();
  await agent.close();
  await relay.close();
  process.stdout.write('dropwire stopped.\n');
}

