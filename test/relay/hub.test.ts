import type { Socket } from 'node:net';
/**
 * The relay's hub against hand-driven agent sessions (real TCP on loopback, the real SQLite store): what an
 * agent reports is applied only to its own messages, whether or not the hub streamed them in this process.
 */
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { fromHex, toHex } from '../../src/protocol/bytes.js';
import { Connection } from '../../src/protocol/connection.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { encodeMessage, MessageDecoder, MessageType, type Headers, type Message } from '../../src/protocol/messages.js';
import { Session } from '../../src/protocol/session.js';
import { Relay } from '../../src/relay/relay.js';
import { silentLogger } from '../../src/shared/log.js';
import { Dialer } from '../../src/transport/dialer.js';
import { random } from '../../src/transport/identity.js';
import type { Link } from '../../src/transport/link.js';
import { tempDir, waitFor } from '../helpers/cli.js';
import type { KeyPair } from '../../src/protocol/crypto.js';
import { makeKeys } from '../helpers/protocol.js';
import type { SessionLimits } from '../../src/protocol/limits.js';
import { tokenHash } from '../../src/relay/http.js';

/** A bare agent session: HELLO on every new stream, collects FILEs, sends what the test tells it to. */
class RawAgent {
  readonly files: string[] = [];
  /** Bytes of each file received in CHUNKs, and the ids the relay sent CANCEL for. */
  readonly chunkBytes = new Map<string, number>();
  readonly cancels: string[] = [];
  /** Why each connection ended (a refusal's code, PROTOCOL 3.10), oldest first. */
  readonly closes: string[] = [];
  private readonly session = new Session();
  private readonly dialer: Dialer;
  private decoder = new MessageDecoder();
  private link: Link | undefined;
  private ts = 0;

  constructor(relay: Relay, keys: KeyPair) {
    const [host, port] = relay.info.agents.split(':');
    this.dialer = new Dialer({
      host: host!,
      port: Number(port),
      connection: () =>
        Connection.initiator({
          crypto: nodeCrypto,
          random,
          staticKey: keys,
          remoteStatic: fromHex(relay.info.publicKey),
          session: this.session,
          timestamp: (this.ts = Math.max(Date.now(), this.ts + 1)),
          now: Date.now(),
          timers: {},
        }),
      events: {
        onOutput: (out, link) => {
          if (out.type === 'established') {
            this.link = link;
            if (!out.resumed) {
              this.decoder = new MessageDecoder();
              this.send(MessageType.HELLO, { agent: 'test', partial: [] });
            }
          } else if (out.type === 'data') {
            this.decoder.push(out.bytes);
            for (let m: Message | undefined = this.decoder.next(); m; m = this.decoder.next()) {
              if (m.type === MessageType.FILE) this.files.push(m.header.id);
              if (m.type === MessageType.CHUNK) this.chunkBytes.set(m.header.id, (this.chunkBytes.get(m.header.id) ?? 0) + m.body.length);
              if (m.type === MessageType.CANCEL) this.cancels.push(m.header.id);
            }
          }
        },
        onClose: (err) => {
          this.link = undefined;
          this.closes.push(typeof err.cause === 'string' ? err.cause : err.code);
        },
      },
    });
    this.dialer.start();
  }

  send<T extends MessageType>(type: T, header: Headers[T]): void {
    for (const part of encodeMessage(type, header)) this.session.write(part);
    this.link?.pump();
  }

  /** Stops reading the socket (a slow host): the relay's writes back up. */
  pause(): void {
    (this.link?.socket as Socket | undefined)?.pause(); // a TCP link in these tests
  }

  resume(): void {
    (this.link?.socket as Socket | undefined)?.resume();
  }

  get connected(): boolean {
    return this.link !== undefined;
  }

  close(): void {
    this.dialer.close();
  }
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function startRelay(dataDir: string, log = silentLogger(), limits?: Partial<SessionLimits>): Promise<Relay> {
  const relay = await Relay.start({ dataDir, listen: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, log, ...(limits ? { limits } : {}) });
  cleanups.push(() => relay.close());
  return relay;
}

async function enrolled(relay: Relay, name: string): Promise<KeyPair> {
  const keys = makeKeys().device;
  await relay.store.createDevice({ name, publicKey: toHex(keys.publicKey), createdAt: Date.now() });
  return keys;
}

async function queue(relay: Relay, to: string, id: string): Promise<void> {
  const body = new TextEncoder().encode(`<order id="${id}"/>`);
  const now = Date.now();
  const { message } = await relay.store.enqueue({ id, to, from: 'shop', filename: `${id}.xml`, size: body.length, sha256: '0'.repeat(64), body, createdAt: now });
  relay.hub.notify(to, message, body);
}

const statusOf = async (relay: Relay, id: string) => (await relay.store.getMessage(id))?.status;

describe('hub: reports from agents', () => {
  it("applies a device's reports to its own messages only, streamed in this process or before a restart", async () => {
    const dir = tempDir();
    let relay = await startRelay(dir);
    const aKeys = await enrolled(relay, 'kitchen');
    const bKeys = await enrolled(relay, 'office');
    await queue(relay, 'office', 'm-office');

    // 'office' gets its file; 'kitchen' claims to have handled it.
    let office = new RawAgent(relay, bKeys);
    cleanups.push(() => office.close());
    await waitFor(() => (office.files.includes('m-office') ? true : undefined), 10_000, 'office got its file');
    const kitchen = new RawAgent(relay, aKeys);
    cleanups.push(() => kitchen.close());
    await queue(relay, 'kitchen', 'm-kitchen');
    await waitFor(() => (kitchen.files.includes('m-kitchen') ? true : undefined), 10_000, 'kitchen got its file');
    kitchen.send(MessageType.RESULT, { id: 'm-office', status: 'failed', code: 'DW_FORGED' });
    kitchen.send(MessageType.RESULT, { id: 'm-kitchen', status: 'handled' });
    await waitFor(async () => ((await statusOf(relay, 'm-kitchen')) === 'handled' ? true : undefined), 10_000, 'kitchen handled');
    expect(await statusOf(relay, 'm-office')).toBe('sent');
    expect((await relay.store.getHistory('m-office')).map((h) => h.status)).toEqual(['queued', 'sent']);

    // After a relay restart the hub has streamed nothing: reports are checked against the store.
    office.close();
    kitchen.close();
    await relay.close();
    relay = await startRelay(dir);
    const kitchen2 = new RawAgent(relay, aKeys);
    cleanups.push(() => kitchen2.close());
    office = new RawAgent(relay, bKeys);
    cleanups.push(() => office.close());
    await queue(relay, 'kitchen', 'm-kitchen-2');
    await waitFor(() => (kitchen2.files.includes('m-kitchen-2') ? true : undefined), 10_000, 'kitchen got its second file');
    kitchen2.send(MessageType.RESULT, { id: 'm-office', status: 'failed', code: 'DW_FORGED' });
    // Reports are applied in order per device: once this one is, the forged one before it was decided.
    kitchen2.send(MessageType.RESULT, { id: 'm-kitchen-2', status: 'handled' });
    await waitFor(async () => ((await statusOf(relay, 'm-kitchen-2')) === 'handled' ? true : undefined), 10_000, 'kitchen handled again');
    expect(await statusOf(relay, 'm-office')).toBe('sent');
    await waitFor(() => (office.files.includes('m-office') ? true : undefined), 10_000, 'office got its file again');
    office.send(MessageType.RESULT, { id: 'm-office', status: 'handled' });
    await waitFor(async () => ((await statusOf(relay, 'm-office')) === 'handled' ? true : undefined), 10_000, 'office handled');
  });

  it('drops a CONFIRM owed to a session that ended meanwhile, with no error and nothing lost', async () => {
    const dir = tempDir();
    const lines: Array<{ level: number; msg: string }> = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) });
    const relay = await startRelay(dir, log);
    const keys = await enrolled(relay, 'kitchen');
    await queue(relay, 'kitchen', 'm-1');
    const first = new RawAgent(relay, keys);
    cleanups.push(() => first.close());
    await waitFor(() => (first.files.includes('m-1') ? true : undefined), 10_000, 'the agent got its file');

    // Hold the RESULT's store write until the agent's session has been replaced by a new one.
    const setStatus = relay.store.setStatus.bind(relay.store);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let held = false;
    relay.store.setStatus = async (changes) => {
      if (changes.some((c) => c.status === 'handled')) {
        held = true;
        await gate;
      }
      return setStatus(changes);
    };
    first.send(MessageType.RESULT, { id: 'm-1', status: 'handled' });
    await waitFor(() => (held ? true : undefined), 10_000, 'the RESULT reached the store');
    // The host restarts its agent: the old session lingers at the relay until the new one retires it.
    first.close();
    const second = new RawAgent(relay, keys);
    cleanups.push(() => second.close());
    await waitFor(() => (second.files.includes('m-1') ? true : undefined), 10_000, 'the new session got the file again');
    release();
    await waitFor(async () => ((await statusOf(relay, 'm-1')) === 'handled' ? true : undefined), 10_000, 'the result was stored');
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(lines.some((l) => l.msg === 'message handled')).toBe(true);
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
  });
});

/** A sender token for the relay's HTTP API, and a fetch through it. */
async function sender(relay: Relay): Promise<(method: string, path: string, body?: Uint8Array) => Promise<{ status: number; json: Record<string, unknown> }>> {
  const secret = `dwt_test_${Math.random().toString(36).slice(2)}`;
  await relay.store.createToken({ name: 'web', hash: tokenHash(secret), to: '*', createdAt: Date.now() });
  return async (method, path, body) => {
    const res = await fetch(`http://${relay.info.http}${path}`, { method, headers: { authorization: `Bearer ${secret}` }, ...(body ? { body } : {}) });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
}

describe('hub: cancel', () => {
  it('mid-stream: granted, no byte more of the file is written, the agent is told CANCEL and never has it whole', async () => {
    const relay = await startRelay(tempDir(), silentLogger(), { replayCapacity: 2 * 1024 * 1024, highWater: 512 * 1024, lowWater: 128 * 1024 });
    const keys = await enrolled(relay, 'kitchen');
    const api = await sender(relay);
    const agent = new RawAgent(relay, keys);
    cleanups.push(() => agent.close());
    await waitFor(() => (relay.hub.isOnline('kitchen') ? true : undefined), 10_000, 'online');
    agent.pause(); // a slow host: the stream backs up in the session and the socket
    const size = 32 * 1024 * 1024;
    const big = await api('POST', '/v1/messages?to=kitchen&filename=big.bin', new Uint8Array(size).fill(7));
    expect(big.status).toBe(202);
    const id = big.json.id as string;
    await waitFor(async () => ((await statusOf(relay, id)) === 'sent' ? true : undefined), 10_000, 'sent');
    await new Promise((r) => setTimeout(r, 300)); // the delivery loop now waits for the agent to drain
    const del = await api('DELETE', `/v1/messages/${id}`);
    expect([del.status, del.json.status]).toEqual([200, 'cancelled']);
    agent.resume();
    await waitFor(() => (agent.cancels.includes(id) ? true : undefined), 10_000, 'CANCEL');
    // The stream goes on with the next message; the cancelled file stays incomplete.
    const next = await api('POST', '/v1/messages?to=kitchen&filename=next.xml', new TextEncoder().encode('<next/>'));
    await waitFor(() => (agent.files.includes(next.json.id as string) ? true : undefined), 10_000, 'next file');
    const got = agent.chunkBytes.get(id) ?? 0;
    console.log(`cancelled mid-stream after ${(got / 1024 / 1024).toFixed(2)} of ${size / 1024 / 1024} MiB reached the agent`);
    expect(got).toBeGreaterThan(0);
    expect(got).toBeLessThan(size);
    expect(agent.files.filter((f) => f === id)).toHaveLength(1);
    expect(await statusOf(relay, id)).toBe('cancelled');
  });

  it('refused with 409 DW_TOO_LATE once all of the file was written (the host may hold it), also after a relay restart', async () => {
    const dir = tempDir();
    let relay = await startRelay(dir);
    const keys = await enrolled(relay, 'kitchen');
    let api = await sender(relay);
    const agent = new RawAgent(relay, keys);
    cleanups.push(() => agent.close());
    const body = new TextEncoder().encode('<order n="1"/>');
    const sent = await api('POST', '/v1/messages?to=kitchen&filename=o.xml', body);
    const id = sent.json.id as string;
    // The raw agent has every byte but has not said RECEIVED: a real one may be running the handler.
    await waitFor(() => (agent.chunkBytes.get(id) === body.length ? true : undefined), 10_000, 'all bytes');
    let del = await api('DELETE', `/v1/messages/${id}`);
    expect([del.status, (del.json.error as { code: string }).code]).toEqual([409, 'DW_TOO_LATE']);
    expect(await statusOf(relay, id)).toBe('sent');
    expect(agent.cancels).toEqual([]);
    agent.close();
    await relay.close();
    cleanups.pop();
    relay = await startRelay(dir);
    api = await sender2(relay);
    del = await api('DELETE', `/v1/messages/${id}`);
    expect([del.status, (del.json.error as { code: string }).code]).toEqual([409, 'DW_TOO_LATE']);
    expect(await statusOf(relay, id)).toBe('sent');
  });
});

/** The sender of a relay restarted on the same folder (the token is already stored). */
async function sender2(relay: Relay): Promise<(method: string, path: string) => Promise<{ status: number; json: Record<string, unknown> }>> {
  const secret = `dwt_test_again_${Math.random().toString(36).slice(2)}`;
  await relay.store.createToken({ name: 'web2', hash: tokenHash(secret), to: '*', createdAt: Date.now() });
  return async (method, path) => {
    const res = await fetch(`http://${relay.info.http}${path}`, { method, headers: { authorization: `Bearer ${secret}` } });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
}

describe('hub: a cluster node still joining', () => {
  it('refuses agents with DW_NODE_NOT_READY and answers /healthz 503 until it is ready; then they connect', async () => {
    const relay = await startRelay(tempDir());
    const keys = await enrolled(relay, 'kiosk');
    relay.hub.ready = false; // what a node is between listening and registering in the cluster (relay.ts)
    const health = await fetch(`http://${relay.info.http}/healthz`);
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ ready: false, error: { code: 'DW_NODE_NOT_READY' } });
    const agent = new RawAgent(relay, keys);
    cleanups.push(() => agent.close());
    await waitFor(() => (agent.closes.includes('DW_NODE_NOT_READY') ? true : undefined), 10_000, 'a refusal');
    expect(agent.connected).toBe(false);
    expect(relay.hub.isOnline('kiosk')).toBe(false);
    relay.hub.ready = true;
    await waitFor(() => (agent.connected ? true : undefined), 30_000, 'the agent connected once the node is ready');
    expect((await fetch(`http://${relay.info.http}/healthz`)).status).toBe(200);
  });
});
