import { DropwireError } from '../shared/errors.js';

/** Exit codes of `dropwire online` (README). */
export const OnlineExit = { ONLINE: 0, OFFLINE: 1 } as const;

function report(device: string, body: { online?: boolean; lastSeen?: string | null }, json: boolean | undefined): void {
  if (json) console.log(JSON.stringify(body));
  else console.log(body.online ? `${device} is online` : `${device} is offline (last seen ${body.lastSeen ?? 'never'})`);
  if (!body.online) process.exitCode = OnlineExit.OFFLINE;
}

/**
 * With a sender token, asks the relay's HTTP API; on an enrolled host (no token given), asks the running
 * agent, which asks the relay over its session.
 */
export async function runOnline(device: string, o: { api?: string; token?: string; json?: boolean; home?: string }): Promise<void> {
  const api = o.api ?? process.env.DROPWIRE_API;
  const token = o.token ?? process.env.DROPWIRE_TOKEN;
  if (!api || !token) {
    const { askAgent } = await import('../agent/control.js');
    const { resolveAgentHome } = await import('../service/locations.js');
    let a: Record<string, unknown>;
    try {
      a = await askAgent(resolveAgentHome(o.home), { op: 'online', device }, 8_000);
    } catch (err) {
      throw Object.assign(err as Error, { exitCode: 3 });
    }
    if (a.known === false) throw Object.assign(new DropwireError('DW_UNKNOWN_DEVICE', `no device named '${device}'`), { exitCode: 3 });
    return report(device, a as { online?: boolean; lastSeen?: string | null }, o.json);
  }
  let res: Response;
  try {
    res = await fetch(`${api.replace(/\/$/, '')}/v1/devices/${encodeURIComponent(device)}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    throw Object.assign(new DropwireError('DW_RELAY_UNREACHABLE', `cannot reach the relay API at ${api}: ${(err as Error).message}`), { exitCode: 3 });
  }
  const body = (await res.json()) as { online?: boolean; lastSeen?: string | null; error?: { code: string; message: string } };
  if (!res.ok) throw Object.assign(new DropwireError(body.error?.code ?? 'DW_HTTP', body.error?.message ?? `HTTP ${res.status}`), { exitCode: 3 });
  report(device, body, o.json);
}
