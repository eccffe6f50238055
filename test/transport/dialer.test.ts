import net from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import type { Connection } from '../../src/protocol/connection.js';
import { TCP_INITIATOR_TIMERS } from '../../src/protocol/limits.js';
import { Dialer } from '../../src/transport/dialer.js';
import { initiatorTimers } from '../../src/transport/stream.js';
import { waitFor } from '../helpers/cli.js';

async function countingServer(): Promise<{ port: number; accepted: () => number }> {
  let n = 0;
  const server = net.createServer((sock) => {
    n++;
    sock.destroy();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  onTestFinished(() => new Promise<void>((r) => server.close(() => r())));
  return { port: (server.address() as net.AddressInfo).port, accepted: () => n };
}

describe('Dialer', () => {
  it('a connection that cannot be made (the factory throws) is retried, not thrown out of the process', async () => {
    const { port, accepted } = await countingServer();
    const retries: { error: Error; delay: number }[] = [];
    const dialer = new Dialer({
      host: '127.0.0.1',
      port,
      backoff: { initial: 10, max: 10, jitter: 0 },
      connection: (): Connection => {
        throw Object.assign(new Error('database or disk is full'), { code: 'ERR_SQLITE_ERROR', errcode: 13 });
      },
      events: { onOutput: () => {}, onClose: () => {}, onRetry: (error, delay) => retries.push({ error, delay }) },
    });
    onTestFinished(() => dialer.close());
    dialer.start();
    await waitFor(() => (retries.length >= 3 ? true : undefined), 10_000, 'three attempts');
    expect(retries[0]!.error.message).toBe('database or disk is full');
    expect(accepted()).toBeGreaterThanOrEqual(3);
  });

  it('slowDown(ms) makes every wait about ms (with the jitter) until a connection is established', async () => {
    const { port } = await countingServer();
    const delays: number[] = [];
    const dialer = new Dialer({
      host: '127.0.0.1',
      port,
      backoff: { initial: 10, max: 10, jitter: 0.5 },
      connection: (): Connection => {
        throw new Error('refused');
      },
      events: { onOutput: () => {}, onClose: () => {}, onRetry: (_e, delay) => delays.push(delay) },
    });
    onTestFinished(() => dialer.close());
    dialer.slowDown(300_000);
    dialer.start();
    await waitFor(() => (delays.length >= 1 ? true : undefined), 10_000, 'first retry');
    expect(delays[0]).toBeGreaterThanOrEqual(150_000);
    expect(delays[0]).toBeLessThanOrEqual(300_000);
  });

  it("tells the connection factory the stream's transport; on raw TCP an agent takes the TCP timers (PROTOCOL 4.5)", async () => {
    const { port } = await countingServer();
    const asked: string[] = [];
    const dialer = new Dialer({
      host: '127.0.0.1',
      port,
      backoff: { initial: 10, max: 10, jitter: 0 },
      connection: (transport): Connection => {
        asked.push(transport);
        throw new Error('not this time');
      },
      events: { onOutput: () => {}, onClose: () => {} },
    });
    onTestFinished(() => dialer.close());
    dialer.start();
    await waitFor(() => (asked.length >= 1 ? true : undefined), 10_000, 'a connection asked for');
    expect(asked[0]).toBe('tcp');
    expect(initiatorTimers('tcp')).toEqual(TCP_INITIATOR_TIMERS);
    expect(initiatorTimers('tcp', { handshakeTimeout: 5_000 })).toEqual({ ...TCP_INITIATOR_TIMERS, handshakeTimeout: 5_000 });
    // Heartbeat timers set by the caller win as a whole; WebSocket keeps the defaults (proxies need PONGs).
    expect(initiatorTimers('tcp', { pingInterval: 50 })).toEqual({ pingInterval: 50 });
    expect(initiatorTimers('wss')).toEqual({});
    expect(initiatorTimers('ws', { idleTimeout: 900 })).toEqual({ idleTimeout: 900 });
  });
});
