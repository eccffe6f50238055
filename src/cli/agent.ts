import fs from 'node:fs';
import { Agent } from '../agent/agent.js';
import { agentHome, paths } from '../agent/config.js';
import { resolveAgentHome } from '../service/locations.js';
import { agentAnswers, type ControlServer } from '../agent/control.js';
import { isDiskFull, noSpaceLeft } from '../agent/disk.js';
import { DropwireError, isDropwireError } from '../shared/errors.js';
import { FolderLock } from '../shared/lock.js';
import { chooseLogTarget, createLogger, destinationOf } from '../shared/log.js';
import { serveAgentControl } from './agent-control.js';
import { untilSignal } from './signals.js';
import type { ReachSettings } from '../agent/enroll.js';
import { parseTransportMode } from '../transport/address.js';

/** `dropwire agent` exits with this (sysexits EX_CONFIG) when its config is missing or wrong: the unit's
 * `RestartPreventExitStatus=78` keeps systemd from restarting it in a loop until someone fixes the file. */
export const EXIT_CONFIG = 78;

export async function runInit(token: string, o: { home?: string; name?: string } & ReachSettings): Promise<void> {
  const home = agentHome(o.home);
  const r = await (await import('../agent/enroll.js')).enroll({ home, token, ...(o.name ? { name: o.name } : {}), ...reachSettings(o) });
  console.log(`enrolled as '${r.name}' with the relay at ${r.relay} (${r.transport}); agent folder ${r.home}`);
}

/** The options that say how to reach the relay, as given. */
function reachSettings(o: ReachSettings): ReachSettings {
  return { ...(o.relay ? { relay: o.relay } : {}), ...(o.transport ? { transport: o.transport } : {}), ...(o.proxy ? { proxy: o.proxy } : {}), ...(o.ca ? { ca: o.ca } : {}) };
}

export async function runAgent(o: { home?: string } & ReachSettings): Promise<void> {
  const home = resolveAgentHome(o.home);
  // Before anything opens the journal or writes the log: one agent per folder. The lock is the OS's
  // (released when the process ends, however); the socket check also catches an agent without one.
  const lock = fs.existsSync(home) ? FolderLock.acquire(home, { what: 'agent', code: 'DW_AGENT_RUNNING' }) : undefined;
  if (await agentAnswers(home)) throw new DropwireError('DW_AGENT_RUNNING', `another agent is already running with the folder ${home}`);
  const target = chooseLogTarget(paths(home).log);
  const log = createLogger('agent', destinationOf(target));
  const startedAt = Date.now();
  let agent: Agent;
  try {
    const { transport, ...r } = reachSettings(o);
    agent = new Agent({ home, log, ...r, ...(transport ? { transport: parseTransportMode(transport) } : {}) });
  } catch (err) {
    if (isDropwireError(err, 'DW_BAD_CONFIG') || isDropwireError(err, 'DW_NOT_ENROLLED')) {
      log.fatal({ code: err.code }, `refusing to start: ${err.message}`);
      throw Object.assign(err, { exitCode: EXIT_CONFIG });
    }
    if (isDiskFull(err) || noSpaceLeft(home)) {
      // A running agent waits a full disk out; one that cannot even open its journal says why and exits
      // (a service manager starts it again).
      const full = new DropwireError('DW_DISK_FULL', `the disk of ${home} is full: the agent cannot open its journal (${(err as Error).message}); free some space`, { cause: err });
      log.fatal({ code: full.code }, full.message);
      throw full;
    }
    throw err;
  }
  let control: ControlServer;
  try {
    control = await serveAgentControl({ agent, home, log, target, startedAt });
  } catch (err) {
    await agent.close();
    throw err;
  }
  agent.start();
  await untilSignal();
  await control.close();
  await agent.close();
  lock?.release();
}
