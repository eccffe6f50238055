/**
 * Links over real loopback TCP: bytes both ways, heartbeats and every deadline kind served by the shared
 * deadline heap (handshake, ack delay, ping, idle), and the burst compactor's policy.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { onTestFinished, describe, expect, it, vi } from 'vitest';
import { Connection } from '../../src/protocol/connection.js';
import { generateKeyPair } from '../../src/protocol/crypto.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import type { ProtocolError } from '../../src/protocol/errors.js';
import type { ConnectionTimers } from '../../src/protocol/limits.js';
import { Session } from '../../src/protocol/session.js';
import { Dialer } from '../../src/transport/dialer.js';
import { random } from '../../src/transport/identity.js';
import type { Link } from '../../src/transport/link.js';
import { Listener } from '../../src/transport/listener.js';
import { BURST_CONNECTIONS, BURST_QUIET_CONNECTIONS, BURST_WINDOW_MS, BurstCompactor, MINOR_EVERY_CONNECTIONS } from '../../src/transport/memory.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(5);
  }
}

interface Relay {
  listener: Listener;
  port: number;
  closes: string[];
  data: Uint8Array[];
  sessions: Session[];
}

async function relay(timers: Partial<ConnectionTimers>): Promise<Relay & { key: Uint8Array }> {
  const keys = generateKeyPair(nodeCrypto, random);
  const r: Relay = { listener: undefined as unknown as Listener, port: 0, closes: [], data: [], sessions: [] };
  r.listener = new Listener({
    host: '127.0.0.1',
    port: 0,
    compactAfterBurst: false,
    connection: () => Connection.responder({ crypto: nodeCrypto, random, staticKey: keys, now: Date.now(), timers }),
    events: {
      onOutput(out, link) {
        if (out.type === 'hello') {
          const s = new Session({ id: random(16) });
          r.sessions.push(s);
          link.connection.accept(s, Date.now());
          link.pump();
        } else if (out.type === 'data') r.data.push(out.bytes.slice());
      },
      onClose(err: ProtocolError) {
        r.closes.push(err.code);
      },
    },
  });
  r.port = (await r.listener.listen()).port;
  onTestFinished(() => r.listener.close());
  return { ...r, key: keys.publicKey };
}

function agent(port: number, relayKey: Uint8Array, timers: Partial<ConnectionTimers>): { session: Session; links: Link[]; data: Uint8Array[]; dialer: Dialer } {
  const session = new Session();
  const keys = generateKeyPair(nodeCrypto, random);
  const a = { session, links: [] as Link[], data: [] as Uint8Array[], dialer: undefined as unknown as Dialer };
  let ts = 0;
  a.dialer = new Dialer({
    host: '127.0.0.1',
    port,
    backoff: { initial: 20, max: 100 },
    connection: () =>
      Connection.initiator({ crypto: nodeCrypto, random, staticKey: keys, remoteStatic: relayKey, session, timestamp: ++ts, now: Date.now(), timers }),
    events: {
      onOutput(out, link) {
        if (out.type === 'established') a.links.push(link);
        else if (out.type === 'data') a.data.push(out.bytes.slice());
      },
      onClose() {},
    },
  });
  a.dialer.start();
  onTestFinished(() => a.dialer.close());
  return a;
}

describe('Link over loopback', () => {
  it('carries bytes both ways, acknowledges them after the ack delay, and keeps an idle pair alive with heartbeats', async () => {
    const timers = { pingInterval: 50, idleTimeout: 500 };
    const r = await relay(timers);
    const a = agent(r.port, r.key, timers);
    await until(() => a.links.length === 1 && r.sessions.length === 1);
    const big = new Uint8Array(300_000).map((_, i) => i * 7);
    a.session.write(big);
    a.links[0]!.pump();
    r.sessions[0]!.write(Uint8Array.of(1, 2, 3));
    [...r.listener.links][0]!.pump();
    await until(() => Buffer.concat(r.data).length === big.length && Buffer.concat(a.data).length === 3);
    expect(Buffer.concat(r.data).equals(big)).toBe(true);
    // ACKs are due 50 ms after the data (an earlier deadline than the idle one): the buffers empty.
    await until(() => a.session.buffered === 0 && r.sessions[0]!.buffered === 0);
    // Several idle timeouts long: heartbeats keep it up, nothing closes. PROTOCOL 4.5: one every 50 ms, an ACK
    // while something was received within 500 - 2 * 50 ms, else a PING, which the relay answers.
    const sent = [...r.listener.links][0]!.socket.bytesWritten;
    const beats = a.links[0]!.socket.bytesWritten;
    await sleep(1_200);
    expect(r.closes).toEqual([]);
    expect(a.links.length).toBe(1);
    expect(a.links[0]!.socket.bytesWritten - beats).toBeGreaterThanOrEqual(27 * 12); // heartbeats (27-byte frames)
    expect([...r.listener.links][0]!.socket.bytesWritten - sent).toBeGreaterThanOrEqual(27 * 2); // PONGs
  });

  it('ends connections at their own deadlines, however many wait at once', async () => {
    const r = await relay({ handshakeTimeout: 60 });
    const sockets: net.Socket[] = [];
    for (let i = 0; i < 40; i++) {
      const s = net.connect({ host: '127.0.0.1', port: r.port });
      s.on('error', () => {});
      sockets.push(s);
      onTestFinished(() => void s.destroy());
      if (i % 10 === 9) await sleep(30); // staggered deadlines
    }
    await until(() => r.closes.length === 40, 5_000);
    expect(new Set(r.closes)).toEqual(new Set(['DW_HANDSHAKE_TIMEOUT']));
    expect(r.listener.links.size).toBe(0);
  });

  it('closes on the idle deadline when the peer goes silent', async () => {
    const r = await relay({ idleTimeout: 120 });
    // The agent never PINGs within the relay's idle timeout.
    const a = agent(r.port, r.key, { pingInterval: 60_000, idleTimeout: 60_000 });
    await until(() => a.links.length >= 1);
    await until(() => r.closes.includes('DW_IDLE_TIMEOUT'), 3_000);
    a.dialer.close();
  });
});

const SS = ['/usr/bin/ss', '/bin/ss', '/usr/sbin/ss'].find((f) => fs.existsSync(f));
if (!SS) console.log('link.test: keep-alive check skipped: ss (iproute2) not installed');

describe.skipIf(!SS)('TCP keep-alive (PROTOCOL 4.5)', () => {
  it('is on for an agent on raw TCP (`ss -o` shows its timer), off at the relay', async () => {
    const r = await relay({});
    const a = agent(r.port, r.key, {});
    await until(() => a.links.length === 1 && r.listener.links.size === 1);
    const timers = (port: number): string =>
      execFileSync(SS!, ['-tnoH', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8' });
    const agentSide = timers((a.links[0]!.socket as net.Socket).localPort!);
    const relaySide = timers(r.port);
    // The kernel's keep-alive timer runs on the agent's socket (ss prints its time left in varying units).
    expect(agentSide).toContain('timer:(keepalive,');
    expect(relaySide).toContain(`:${r.port}`);
    expect(relaySide).not.toContain('keepalive');
  });
});

describe('BurstCompactor', () => {
  it('collects the young generation after every MINOR_EVERY_CONNECTIONS new connections', () => {
    let minors = 0;
    const b = new BurstCompactor(() => {}, () => minors++);
    for (let i = 0; i < MINOR_EVERY_CONNECTIONS - 1; i++) b.connected();
    expect(minors).toBe(0);
    b.connected();
    expect(minors).toBe(1);
    for (let i = 0; i < MINOR_EVERY_CONNECTIONS * 3; i++) b.connected();
    expect(minors).toBe(4);
    b.close();
  });

  it('compacts once after a burst has settled, not during it nor for small numbers', () => {
    vi.useFakeTimers();
    onTestFinished(() => void vi.useRealTimers());
    let compactions = 0;
    const b = new BurstCompactor(() => compactions++);
    for (let i = 0; i < BURST_CONNECTIONS - 1; i++) b.connected();
    vi.advanceTimersByTime(BURST_WINDOW_MS * 5);
    expect(compactions).toBe(0);
    b.connected();
    // Still busy: each window sees many new connections.
    for (let w = 0; w < 3; w++) {
      for (let i = 0; i < BURST_QUIET_CONNECTIONS; i++) b.connected();
      vi.advanceTimersByTime(BURST_WINDOW_MS);
    }
    expect(compactions).toBe(0);
    vi.advanceTimersByTime(BURST_WINDOW_MS);
    expect(compactions).toBe(1);
    vi.advanceTimersByTime(BURST_WINDOW_MS * 5);
    expect(compactions).toBe(1);
    // The count starts again.
    for (let i = 0; i < BURST_CONNECTIONS; i++) b.connected();
    vi.advanceTimersByTime(BURST_WINDOW_MS * 2);
    expect(compactions).toBe(2);
    b.close();
  });
});
