import { DropwireError } from '../shared/errors.js';

/** Exit codes of `dropwire online` (README). */
export const OnlineExit = { ONLINE: 0, OFFLINE: 1 } as const;

export async function runOnline(device: string, o: { api?: string; token?: string; json?: boolean }): Promise<void> {
  const api = o.api ?? process.env.DROPWIRE_API;
  const token = o.token ?? process.env.DROPWIRE_TOKEN;
  if (!api || !token) throw Object.assign(new DropwireError('DW_BAD_ARGUMENT', 'pass --api URL and --token TOKEN (or DROPWIRE_API, DROPWIRE_TOKEN)'), { exitCode: 2 });
  let res: Response;
  try {
    res = await fetch(`${api.replace(/\/$/, '')}/v1/devices/${encodeURIComponent(device)}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    throw Object.assign(new DropwireError('DW_RELAY_UNREACHABLE', `cannot reach the relay API at ${api}: ${(err as Error).message}`), { exitCode: 3 });
  }
  const body = (await res.json()) as { online?: boolean; lastSeen?: string | null; error?: { code: string; message: string } };
  if (!res.ok) throw Object.assign(new DropwireError(body.error?.code ?? 'DW_HTTP', body.error?.message ?? `HTTP ${res.status}`), { exitCode: 3 });
  if (o.json) console.log(JSON.stringify(body));
  else console.log(body.online ? `${device} is online` : `${device} is offline (last seen ${body.lastSeen ?? 'never'})`);
  if (!body.online) process.exitCode = OnlineExit.OFFLINE;
}
