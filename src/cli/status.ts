import { askAgent, AgentNotRunning } from '../agent/control.js';
import { resolveAgentHome } from '../service/locations.js';
import { DropwireError } from '../shared/errors.js';

/** `dropwire status` exit codes (README "Run it as a service"). */
export const StatusExit = { CONNECTED: 0, ERROR: 1, NOT_RUNNING: 3, NOT_CONNECTED: 4 } as const;

interface Snapshot {
  connected: boolean;
  relay: string;
  relays?: string[];
  transport?: string;
  device?: string;
  since?: number;
  sessions?: number;
  resumes?: number;
  reconnects?: number;
  handlersRunning?: number;
  lastError?: string;
  lastMessage?: { id: string; filename: string; status?: string; code?: string; at: number };
  pid?: number;
  home?: string;
  startedAt?: number;
  log?: { to: string; file?: string; unit?: string };
}

const iso = (ms: number | undefined) => (typeof ms === 'number' ? new Date(ms).toISOString() : null);

export async function runStatus(o: { json?: boolean; home?: string }): Promise<void> {
  const home = resolveAgentHome(o.home);
  let s: Snapshot;
  try {
    s = (await askAgent(home)) as unknown as Snapshot;
  } catch (err) {
    if (err instanceof AgentNotRunning) {
      if (o.json) console.log(JSON.stringify({ running: false, connected: false, home }));
      throw Object.assign(err, { exitCode: StatusExit.NOT_RUNNING });
    }
    throw err;
  }
  const view = {
    running: true,
    connected: s.connected,
    device: s.device ?? null,
    relay: s.relay,
    transport: s.transport ?? null,
    relays: s.relays ?? [s.relay],
    since: iso(s.since),
    sessions: s.sessions ?? 0,
    resumes: s.resumes ?? 0,
    reconnects: s.reconnects ?? 0,
    queue: s.handlersRunning ?? 0,
    lastMessage: s.lastMessage ? { ...s.lastMessage, at: iso(s.lastMessage.at) } : null,
    lastError: s.lastError ?? null,
    pid: s.pid ?? null,
    home: s.home ?? home,
    startedAt: iso(s.startedAt),
    log: s.log ?? null,
  };
  if (o.json) console.log(JSON.stringify(view));
  else console.log(readable(view));
  if (!s.connected) {
    throw Object.assign(new DropwireError('DW_NOT_CONNECTED', `the agent is running but not connected to ${s.relay}${s.lastError ? ` (last error ${s.lastError})` : ''}`), {
      exitCode: StatusExit.NOT_CONNECTED,
    });
  }
}

function readable(v: {
  connected: boolean;
  device: string | null;
  relay: string;
  transport: string | null;
  relays: string[];
  since: string | null;
  sessions: number;
  resumes: number;
  reconnects: number;
  queue: number;
  lastMessage: { id: string; filename: string; status?: string; code?: string; at: string | null } | null;
  lastError: string | null;
  pid: number | null;
  home: string;
  log: { to: string; file?: string; unit?: string } | null;
}): string {
  const last = v.lastMessage;
  const log = v.log ? (v.log.to === 'file' ? v.log.file : v.log.to === 'journal' ? `journal (${v.log.unit ?? 'dropwire-agent.service'})` : v.log.to) : '?';
  return [
    `agent       ${v.device ?? '?'} (pid ${v.pid ?? '?'}), folder ${v.home}`,
    `relay       ${v.relay}: ${v.connected ? `connected since ${v.since}` : 'NOT CONNECTED'}`,
    `transport   ${v.transport ?? 'none yet'}${v.relays.length > 1 ? ` (addresses: ${v.relays.join(', ')})` : ''}`,
    `sessions    ${v.sessions} started, ${v.resumes} resumed, ${v.reconnects} reconnect attempts`,
    `queue       ${v.queue} handler${v.queue === 1 ? '' : 's'} running or waiting`,
    `last        ${last ? `${last.filename} (${last.id}): ${last.status ?? 'received'}${last.code ? ` ${last.code}` : ''} at ${last.at}` : 'none yet'}`,
    `last error  ${v.lastError ?? 'none'}`,
    `log         ${log}`,
  ].join('\n');
}
