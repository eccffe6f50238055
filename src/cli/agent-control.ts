import type { Agent } from '../agent/agent.js';
import { ControlServer } from '../agent/control.js';
import type { Logger, LogTarget } from '../shared/log.js';
import { buildInfo } from '../shared/version.js';

/**
 * The control socket of a running agent (`status`, `online`, the `rule` commands' reload), the same for
 * `dropwire agent` and the agent `dropwire up` runs, so every command that asks an agent sees both.
 */
export function serveAgentControl(o: { agent: Agent; home: string; log: Logger; target: LogTarget; startedAt: number }): Promise<ControlServer> {
  const { agent, home, log, target, startedAt } = o;
  return ControlServer.listen({
    home,
    log,
    status: () => ({ ...agent.snapshot(), pid: process.pid, home, startedAt, version: buildInfo().version, commit: buildInfo().commit, log: target }),
    reload: () => agent.reloadConfig(),
    send: async (req, emit) => {
      const { runSendJob } = await import('../agent/send-job.js');
      const id = agent.identity;
      return runSendJob({ sender: agent.sender, presence: (d) => agent.presence(d), identity: { name: id.name, home: id.home } }, req, emit);
    },
    online: async (device) => {
      const a = await agent.presence(device);
      return { name: a.device, known: a.known, online: a.online, lastSeen: a.lastSeen === null ? null : new Date(a.lastSeen).toISOString() };
    },
  });
}
