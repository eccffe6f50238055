import { Agent } from '../agent/agent.js';
import { agentHome } from '../agent/config.js';
import { enroll } from '../agent/enroll.js';
import { createLogger } from '../shared/log.js';
import { untilSignal } from './signals.js';

export async function runInit(token: string, o: { home?: string; name?: string; relay?: string }): Promise<void> {
  const home = agentHome(o.home);
  const r = await enroll({ home, token, ...(o.name ? { name: o.name } : {}), ...(o.relay ? { relay: o.relay } : {}) });
  console.log(`enrolled as '${r.name}' with the relay at ${r.relay}; agent folder ${r.home}`);
}

export async function runAgent(o: { home?: string; relay?: string }): Promise<void> {
  const home = agentHome(o.home);
  const log = createLogger('agent');
  const agent = new Agent({ home, log, ...(o.relay ? { relay: o.relay } : {}) });
  agent.start();
  await untilSignal();
  await agent.close();
}
