import { Agent } from '../agent/agent.js';
import { agentHome, paths } from '../agent/config.js';
import { resolveAgentHome } from '../service/locations.js';
import { agentAnswers, ControlServer } from '../agent/control.js';
import { isDiskFull, noSpaceLeft } from '../agent/disk.js';
import { DropwireError, isDropwireError } from '../shared/errors.js';
import { chooseLogTarget, createLogger, destinationOf } from '../shared/log.js';
import { untilSignal } from './signals.js';

/** `dropwire agent` exits with this (sysexits EX_CONFIG) when its config is missing or wrong: the unit's
 * `RestartPreventExitStatus=78` keeps systemd from restarting it in a loop until someone fixes the file. */
export const EXIT_CONFIG = 78;

export async function runInit(token: string, o: { home?: string; name?: string; relay?: string }): Promise<void> {
  const home = agentHome(o.home);
  const r = await (await import('../agent/enroll.js')).enroll({ home, token, ...(o.name ? { name: o.name } : {}), ...(o.relay ? { relay: o.relay } : {}) });
  console.log(`enrolled as '${r.name}' with the relay at ${r.relay}; agent folder ${r.home}`);
}

export async function runAgent(o: { home?: string; relay?: string }): Promise<void> {
  const home = resolveAgentHome(o.home);
  // Before anything opens the journal or writes the log: one agent per folder.
  if (await agentAnswers(home)) throw new DropwireError('DW_AGENT_RUNNING', `another agent is already running with the folder ${home}`);
  const target = chooseLogTarget(paths(home).log);
  const log = createLogger('agent', destinationOf(target));
  const startedAt = Date.now();
  let agent: Agent;
  try {
    agent = new Agent({ home, log, ...(o.relay ? { relay: o.relay } : {}) });
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
    control = await ControlServer.listen({
      home,
      log,
      status: () => ({ ...agent.snapshot(), pid: process.pid, home, startedAt, version: '0.1.0', log: target }),
      reload: () => agent.reloadConfig(),
      online: async (device) => {
        const a = await agent.presence(device);
        return { name: a.device, known: a.known, online: a.online, lastSeen: a.lastSeen === null ? null : new Date(a.lastSeen).toISOString() };
      },
    });
  } catch (err) {
    await agent.close();
    throw err;
  }
  agent.start();
  await untilSignal();
  await control.close();
  await agent.close();
}
