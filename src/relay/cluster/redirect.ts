import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { toHex } from '../../protocol/bytes.js';
import { decodeHandoverState, encodeHandoverState, type SessionHandoverState } from '../../protocol/handover.js';
import { DropwireError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { Hub, RedirectEvents } from '../hub.js';
import type { Bus, BusMessage } from './bus.js';
import type { DeviceOwnership } from './handover.js';
import { keys } from './keys.js';

/** How long a redirect may take, by default, before both ends give it up (PROTOCOL 7.16). */
export const REDIRECT_TIMEOUT_MS = 10_000;
/** After the target took a request, how long the source waits for the retire that follows (a dead target). */
const TAKE_GRACE_MS = 5_000;
/** How long the session state stays in Redis for the target to read. */
const STATE_TTL_MS = 60_000;

/** How a redirect of one agent ended, as the source saw it. */
export type MoveOutcome = 'moved' | 'refused' | 'timeout' | 'unsupported' | 'gone' | 'failed';

export interface MoveResult {
  device: string;
  to: string;
  rid?: string;
  outcome: MoveOutcome;
  code?: string;
  ms: number;
}

/** Target: pending → taking, only for this device and node, before the deadline; else the refusal code. */
const TAKE = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 'DW_REDIRECT_UNKNOWN' end
local r = redis.call('HMGET', KEYS[1], 'device', 'to', 'state', 'deadline', 'session')
if r[1] ~= ARGV[1] or r[2] ~= ARGV[2] or r[5] ~= ARGV[4] then return 'DW_REDIRECT_MISMATCH' end
if r[3] ~= 'pending' then return 'DW_REDIRECT_CANCELLED' end
if tonumber(r[4]) <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'expired')
  return 'DW_REDIRECT_EXPIRED'
end
redis.call('HSET', KEYS[1], 'state', 'taking')
return 'OK'`;

/** Source: pending → ARGV[1] (refused, timeout); returns the state it found. */
const CANCEL = `
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'pending' then redis.call('HSET', KEYS[1], 'state', ARGV[1]) end
return s or ''`;

/**
 * Seamless redirect between nodes (PROTOCOL 7.16, 7.17): the source side (`move`: request in Redis, REDIRECT to
 * the agent, refusal and time-out, handing the session out) and the target side (`take`: the HANDOVER checked
 * against the request, the session state brought over through Redis).
 */
export class Redirects {
  private hub: Hub | undefined;
  /** Source: requests under way, by request id. */
  private readonly moving = new Map<string, { device: string; to: string; started: number; settle: (r: MoveResult) => void }>();
  /** Target: requests waiting for the source's state, by request id. */
  private readonly taking = new Map<string, (ok: boolean) => void>();
  /** Target: the request each device came with, until its first count says what was sent again. */
  private readonly taken = new Map<string, string>();

  private readonly o: { redis: Redis; bus: Bus; node: string; ownership: DeviceOwnership; log: Logger };

  constructor(o: { redis: Redis; bus: Bus; node: string; ownership: DeviceOwnership; log: Logger }) {
    this.o = o;
    o.bus.on((m) => this.onBus(m));
  }

  attach(hub: Hub): void {
    this.hub = hub;
    hub.on('redirect.refused', (e: RedirectEvents['refused']) => void this.refused(e).catch((err: unknown) => this.o.log.warn({ err }, 'could not cancel a refused redirect')));
    hub.on('redirect.position', (e: RedirectEvents['position']) => {
      const rid = this.taken.get(e.device);
      this.taken.delete(e.device);
      this.o.log.info({ device: e.device, rid, received: e.received, resent: e.resent }, 'handed-over session continues from the agent\'s count');
      const m = this.o.redis.multi().incrby(keys.redirectResent, e.resent);
      if (rid) m.hset(keys.redirect(rid), 'resent', String(e.resent));
      m.exec().catch(() => {});
    });
  }

  // --- source -----------------------------------------------------------------------------------

  /** PROTOCOL 7.16 steps 1-2 and 6: moves the device's session to `to` (a node name at address `address`). */
  async move(device: string, to: string, address: string, timeoutMs = REDIRECT_TIMEOUT_MS): Promise<MoveResult> {
    const hub = this.hub;
    const started = Date.now();
    const live = hub?.liveDevices().find((d) => d.device === device);
    if (!hub || !live) return { device, to, outcome: 'gone', ms: 0 };
    if (!live.redirectable) return { device, to, outcome: 'unsupported', ms: 0 };
    // A node listening on every interface without --public has no address an agent elsewhere could dial.
    if (/^(0\.0\.0\.0|\[::\]|::):/.test(address)) {
      this.o.log.warn({ device, to, address }, 'redirect impossible: the target node has no public address (start it with --public HOST:PORT)');
      return { device, to, outcome: 'failed', code: 'DW_NODE_NO_ADDRESS', ms: 0 };
    }
    const session = hub.sessionId(device);
    if (!session) return { device, to, outcome: 'gone', ms: 0 };
    const rid = toHex(randomBytes(16));
    const deadline = started + timeoutMs;
    const key = keys.redirect(rid);
    await this.o.redis
      .multi()
      .hset(key, 'device', device, 'from', this.o.node, 'to', to, 'deadline', String(deadline), 'session', toHex(session), 'state', 'pending', 'createdAt', String(started))
      .pexpire(key, timeoutMs + STATE_TTL_MS)
      .exec();
    return new Promise<MoveResult>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = (r: MoveResult) => {
        if (!this.moving.has(rid)) return;
        this.moving.delete(rid);
        clearTimeout(timer);
        resolve(r);
      };
      this.moving.set(rid, { device, to, started, settle });
      const onTimeout = async () => {
        const before = (await this.o.redis.eval(CANCEL, 1, key, 'timeout').catch(() => 'pending')) as string;
        if (before === 'pending' || before === '') {
          this.o.log.warn({ device, to, rid }, 'redirect timed out; the agent stays here');
          this.o.bus.toNode(to, { t: 'redirect-cancel', rid, device, reason: 'timeout' });
          settle({ device, to, rid, outcome: 'timeout', code: 'DW_REDIRECT_TIMEOUT', ms: Date.now() - started });
        } else if (before === 'taking') {
          // The target took it just now: its retire is on the way (or the target died: give up then).
          timer = setTimeout(() => settle({ device, to, rid, outcome: 'failed', code: 'DW_REDIRECT_TIMEOUT', ms: Date.now() - started }), TAKE_GRACE_MS);
          timer.unref();
        } else if (before !== 'done') settle({ device, to, rid, outcome: 'failed', code: `DW_REDIRECT_${before.toUpperCase()}`, ms: Date.now() - started });
      };
      timer = setTimeout(() => void onTimeout(), timeoutMs);
      timer.unref();
      if (!hub.redirect(device, { rid, to: address, deadline })) {
        void this.o.redis.eval(CANCEL, 1, key, 'cancelled').catch(() => {});
        settle({ device, to, rid, outcome: 'gone', ms: 0 });
        return;
      }
      this.o.log.info({ device, to, rid, deadline }, 'redirect sent');
    });
  }

  /** PROTOCOL 7.17: the agent stays; the request is cancelled where the target looks for it. */
  private async refused(e: RedirectEvents['refused']): Promise<void> {
    const m = this.moving.get(e.rid);
    if (!m || m.device !== e.device) return;
    const before = (await this.o.redis.eval(CANCEL, 1, keys.redirect(e.rid), 'refused')) as string;
    if (before !== 'pending') return; // the target took it already: the hand-over goes on
    this.o.log.info({ device: e.device, to: m.to, rid: e.rid, code: e.code }, 'redirect refused by the agent; cancelled at the target');
    this.o.bus.toNode(m.to, { t: 'redirect-cancel', rid: e.rid, device: e.device, reason: 'refused' });
    m.settle({ device: e.device, to: m.to, rid: e.rid, outcome: 'refused', code: e.code, ms: Date.now() - m.started });
  }

  /** Step 6 (the target claimed the device for `requestId`): freeze, publish the state, tell the target. */
  handOut(device: string, requestId: string, by: string): void {
    void (async () => {
      let ok = false;
      try {
        const state = await this.hub?.handOut(device);
        if (state) {
          await this.o.redis.set(keys.handoverState(requestId), Buffer.from(encodeHandoverState(state)), 'PX', STATE_TTL_MS);
          ok = true;
        }
      } catch (err) {
        this.o.log.error({ err, device, rid: requestId }, 'could not hand a session out');
      }
      this.o.bus.toNode(by, { t: 'handover-state', rid: requestId, device, ok });
      const m = this.moving.get(requestId);
      if (m) m.settle({ device, to: m.to, rid: requestId, outcome: ok ? 'moved' : 'failed', ms: Date.now() - m.started });
    })();
  }

  // --- target ------------------------------------------------------------------------------------

  /** Steps 5-6 at the target: the request checked and taken, the device claimed, the state brought over. */
  async take(device: string, rid: string, sessionId: Uint8Array): Promise<SessionHandoverState> {
    const { redis, log } = this.o;
    const key = keys.redirect(rid);
    const code = (await redis.eval(TAKE, 1, key, device, this.o.node, String(Date.now()), toHex(sessionId))) as string;
    if (code !== 'OK') {
      log.warn({ device, rid, code }, 'HANDOVER refused');
      throw new DropwireError(code, `redirect ${rid}: ${code}`);
    }
    const deadline = Number(await redis.hget(key, 'deadline'));
    const arrived = new Promise<boolean>((resolve) => {
      const t = setTimeout(() => {
        this.taking.delete(rid);
        resolve(false);
      }, Math.max(1_000, deadline - Date.now()));
      t.unref();
      this.taking.set(rid, (ok) => {
        clearTimeout(t);
        this.taking.delete(rid);
        resolve(ok);
      });
    });
    await this.o.ownership.takeOver({ device, reason: 'redirect', requestId: rid });
    const ok = await arrived;
    const bytes = ok ? await redis.getBuffer(keys.handoverState(rid)) : null;
    if (!bytes) {
      await redis.hset(key, 'state', 'failed').catch(() => {});
      await this.o.ownership.release(device).catch(() => {});
      log.warn({ device, rid }, 'HANDOVER failed: the session state did not come from the source');
      throw new DropwireError('DW_REDIRECT_FAILED', `redirect ${rid}: the session state did not arrive`);
    }
    const state = decodeHandoverState(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    const from = await redis.hget(key, 'from');
    await redis.multi().hset(key, 'state', 'done', 'doneAt', String(Date.now()), 'unacked', String(state.bytes.length)).del(keys.handoverState(rid)).exec();
    this.taken.set(device, rid);
    if (from) this.o.bus.toNode(from, { t: 'redirect-done', rid, device });
    log.info({ device, rid, from, unacknowledged: state.bytes.length }, 'session taken over by HANDOVER');
    return state;
  }

  private onBus(m: BusMessage): void {
    if (m.t === 'handover-state') this.taking.get(m.rid)?.(m.ok);
    else if (m.t === 'redirect-cancel') this.o.log.info({ device: m.device, rid: m.rid, reason: m.reason }, 'redirect request cancelled by the source');
    else if (m.t === 'redirect-done') this.o.log.info({ device: m.device, rid: m.rid }, 'redirect complete: the target carries the session');
  }
}
