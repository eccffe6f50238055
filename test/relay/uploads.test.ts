/**
 * The relay's side of PROTOCOL 7.14-7.15 against a hand-driven sender session (real TCP on loopback, the real
 * SQLite store): refusals, the window, a bad SHA-256, one message per upload id, resume from the relay's disk,
 * and WATCH showing a device only its own messages.
 */
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { fromHex, toHex } from '../../src/protocol/bytes.js';
import { Connection } from '../../src/protocol/connection.js';
import type { KeyPair } from '../../src/protocol/crypto.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { SEND_WINDOW } from '../../src/protocol/limits.js';
import { encodeMessage, MessageDecoder, MessageType, type Headers, type Message } from '../../src/protocol/messages.js';
import { Session } from '../../src/protocol/session.js';
import { Relay } from '../../src/relay/relay.js';
import { silentLogger } from '../../src/shared/log.js';
import { Dialer } from '../../src/transport/dialer.js';
import { random } from '../../src/transport/identity.js';
import type { Link } from '../../src/transport/link.js';
import { tempDir, waitFor } from '../helpers/cli.js';
import { makeKeys } from '../helpers/protocol.js';

/** A sender session that sends no HELLO and records what the relay answers. */
class RawSender {
  readonly got: Message[] = [];
  readonly closes: string[] = [];
  private readonly session = new Session();
  private readonly dialer: Dialer;
  private decoder = new MessageDecoder();
  private link: Link | undefined;
  private ts = 0;
  streams = 0;

  constructor(relay: Relay, keys: KeyPair) {
    const [host, port] = relay.info.agents.split(':');
    this.dialer = new Dialer({
      host: host!,
      port: Number(port),
      backoff: { initial: 50, max: 200 },
      connection: () =>
        Connection.initiator({ crypto: nodeCrypto, random, staticKey: keys, remoteStatic: fromHex(relay.info.publicKey), session: this.session, timestamp: (this.ts = Math.max(Date.now(), this.ts + 1)), now: Date.now(), timers: {} }),
      events: {
        onOutput: (out, link) => {
          if (out.type === 'established') {
            this.link = link;
            if (!out.resumed) {
              this.decoder = new MessageDecoder();
              this.streams++;
            }
          } else if (out.type === 'data') {
            this.decoder.push(out.bytes);
            for (let m = this.decoder.next(); m; m = this.decoder.next()) this.got.push(m);
          }
        },
        onClose: (err) => {
          this.closes.push(typeof err.cause === 'string' ? err.cause : err.code);
          this.link = undefined;
          if (err.code === 'DW_PEER_CLOSED' || err.code === 'DW_SESSION_LOST') this.session.reset();
        },
      },
    });
    this.dialer.start();
  }

  send<T extends MessageType>(type: T, header: Headers[T], body?: Uint8Array): void {
    for (const part of encodeMessage(type, header, body)) this.session.write(part);
    this.link?.pump();
  }

  /** The first answer of `type` for `sid` (or `id`) after `from` answers. */
  async answer<T extends MessageType>(type: T, key: string, from = 0): Promise<Headers[T]> {
    const m = await waitFor(() => this.got.slice(from).find((x) => x.type === type && ((x.header as { sid?: string }).sid ?? (x.header as { id?: string }).id) === key), 10_000, `${type} for ${key}`);
    return m.header as Headers[T];
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

async function setup(): Promise<{ relay: Relay; till: KeyPair; other: KeyPair }> {
  const relay = await Relay.start({ dataDir: tempDir(), listen: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, log: silentLogger() });
  cleanups.push(() => relay.close());
  const till = makeKeys().device;
  const other = makeKeys().device;
  const office = makeKeys().device;
  await relay.store.createDevice({ name: 'till', publicKey: toHex(till.publicKey), createdAt: 1, sendTo: 'office' });
  await relay.store.createDevice({ name: 'kiosk', publicKey: toHex(other.publicKey), createdAt: 1 });
  await relay.store.createDevice({ name: 'office', publicKey: toHex(office.publicKey), createdAt: 1 });
  return { relay, till, other };
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('relay: files agents send (PROTOCOL 7.14)', () => {
  it('refuses with codes: not allowed, unknown target, sealed to a size no envelope has', async () => {
    const { relay, till, other } = await setup();
    const kiosk = new RawSender(relay, other);
    const t = new RawSender(relay, till);
    cleanups.push(() => kiosk.close(), () => t.close());
    const body = new TextEncoder().encode('x');
    kiosk.send(MessageType.SEND, { sid: 'a1', to: 'office', filename: 'x', size: 1, sha256: sha(body) });
    expect(await kiosk.answer(MessageType.SEND_END, 'a1')).toMatchObject({ code: 'DW_FORBIDDEN' });
    t.send(MessageType.SEND, { sid: 'a2', to: 'office-2', filename: 'x', size: 1, sha256: sha(body) });
    expect(await t.answer(MessageType.SEND_END, 'a2')).toMatchObject({ code: 'DW_FORBIDDEN' });
    await relay.store.setSendTo('till', 'o*');
    t.send(MessageType.SEND, { sid: 'a3', to: 'office-2', filename: 'x', size: 1, sha256: sha(body) });
    expect(await t.answer(MessageType.SEND_END, 'a3')).toMatchObject({ code: 'DW_UNKNOWN_DEVICE' });
    t.send(MessageType.SEND, { sid: 'a4', to: 'office', filename: 'x', size: 40, sha256: sha(body), sealed: true });
    expect(await t.answer(MessageType.SEND_END, 'a4')).toMatchObject({ code: 'DW_BAD_SEAL' });
    expect(await relay.store.countPending('office')).toBe(0);
  });

  it('a wrong SHA-256 stores nothing (DW_CHECKSUM); one message per upload id however often it is offered', async () => {
    const { relay, till } = await setup();
    const t = new RawSender(relay, till);
    cleanups.push(() => t.close());
    const body = new TextEncoder().encode('order;1\n');
    t.send(MessageType.SEND, { sid: 'b1', to: 'office', filename: 'o.csv', size: body.length, sha256: sha(new TextEncoder().encode('other')) });
    expect(await t.answer(MessageType.SEND_ACK, 'b1')).toEqual({ sid: 'b1', have: 0 });
    t.send(MessageType.SEND_CHUNK, { sid: 'b1' }, body);
    expect(await t.answer(MessageType.SEND_END, 'b1')).toMatchObject({ code: 'DW_CHECKSUM' });
    expect(await relay.store.countPending('office')).toBe(0);

    let n = t.got.length;
    t.send(MessageType.SEND, { sid: 'b2', to: 'office', filename: 'o.csv', size: body.length, sha256: sha(body) });
    await t.answer(MessageType.SEND_ACK, 'b2', n);
    t.send(MessageType.SEND_CHUNK, { sid: 'b2' }, body);
    const first = await t.answer(MessageType.SEND_END, 'b2', n);
    expect(first.id).toMatch(/^[0-9a-z]+$/);
    n = t.got.length;
    t.send(MessageType.SEND, { sid: 'b2', to: 'office', filename: 'o.csv', size: body.length, sha256: sha(body) });
    await t.answer(MessageType.SEND_ACK, 'b2', n);
    t.send(MessageType.SEND_CHUNK, { sid: 'b2' }, body);
    expect((await t.answer(MessageType.SEND_END, 'b2', n)).id).toBe(first.id);
    expect(await relay.store.countPending('office')).toBe(1);
    expect(await relay.store.getMessage(first.id!)).toMatchObject({ from: 'till', to: 'office', filename: 'o.csv', size: body.length });
  });

  it('acknowledges as bytes reach its disk; a chunk past the size ends the session (DW_BAD_MESSAGE); the next offer resumes from the bytes it has', async () => {
    const { relay, till } = await setup();
    const t = new RawSender(relay, till);
    cleanups.push(() => t.close());
    const size = SEND_WINDOW + 3 * 1024 * 1024;
    const body = new Uint8Array(size).map((_, i) => (i * 7) & 0xff);
    t.send(MessageType.SEND, { sid: 'c1', to: 'office', filename: 'big.bin', size, sha256: sha(body) });
    expect(await t.answer(MessageType.SEND_ACK, 'c1')).toEqual({ sid: 'c1', have: 0 });
    // The whole window, in 256 KiB chunks: the relay acknowledges at least every MiB.
    for (let at = 0; at < SEND_WINDOW; at += 256 * 1024) t.send(MessageType.SEND_CHUNK, { sid: 'c1' }, body.subarray(at, at + 256 * 1024));
    await waitFor(() => t.got.some((m) => m.type === MessageType.SEND_ACK && (m.header as { have: number }).have === SEND_WINDOW) || undefined, 10_000, 'the window acknowledged');
    const acks = t.got.filter((m) => m.type === MessageType.SEND_ACK).map((m) => (m.header as { have: number }).have);
    expect(acks.length).toBeGreaterThanOrEqual(4);
    // A chunk that would go past the announced size: the stream cannot be trusted any more.
    const streams = t.streams;
    const MiB = 1024 * 1024;
    t.send(MessageType.SEND_CHUNK, { sid: 'c1' }, body.subarray(SEND_WINDOW, SEND_WINDOW + MiB));
    t.send(MessageType.SEND_CHUNK, { sid: 'c1' }, body.subarray(SEND_WINDOW + MiB, SEND_WINDOW + 2 * MiB));
    t.send(MessageType.SEND_CHUNK, { sid: 'c1' }, body.subarray(SEND_WINDOW + 2 * MiB, size - 1));
    t.send(MessageType.SEND_CHUNK, { sid: 'c1' }, new Uint8Array(2)); // one byte too many
    await waitFor(() => (t.streams > streams ? true : undefined), 15_000, 'a new session after the relay ended the old one');
    expect(t.closes).toContain('DW_BAD_MESSAGE');
    // The relay kept what reached its disk: the offer on the new stream resumes there.
    const n = t.got.length;
    t.send(MessageType.SEND, { sid: 'c1', to: 'office', filename: 'big.bin', size, sha256: sha(body) });
    const resumed = await t.answer(MessageType.SEND_ACK, 'c1', n);
    expect(resumed.have).toBeGreaterThanOrEqual(SEND_WINDOW);
    for (let at = resumed.have; at < size; at += 256 * 1024) t.send(MessageType.SEND_CHUNK, { sid: 'c1' }, body.subarray(at, Math.min(size, at + 256 * 1024)));
    const end = await t.answer(MessageType.SEND_END, 'c1', n);
    expect(end.id).toBeDefined();
    expect(await relay.store.getMessage(end.id!)).toMatchObject({ size, sha256: sha(body), from: 'till' });
  });

  it('WATCH: the status now and once more when final; another device\'s message is unknown', async () => {
    const { relay, till, other } = await setup();
    const t = new RawSender(relay, till);
    const kiosk = new RawSender(relay, other);
    cleanups.push(() => t.close(), () => kiosk.close());
    const body = new TextEncoder().encode('w');
    t.send(MessageType.SEND, { sid: 'd1', to: 'office', filename: 'w.txt', size: 1, sha256: sha(body) });
    await t.answer(MessageType.SEND_ACK, 'd1');
    t.send(MessageType.SEND_CHUNK, { sid: 'd1' }, body);
    const { id } = await t.answer(MessageType.SEND_END, 'd1');
    t.send(MessageType.WATCH, { id: id! });
    expect(await t.answer(MessageType.STATUS, id!)).toEqual({ id, status: 'queued' });
    kiosk.send(MessageType.WATCH, { id: id! });
    expect(await kiosk.answer(MessageType.STATUS, id!)).toEqual({ id, status: 'unknown' });
    const n = t.got.length;
    await relay.store.setStatus([{ id: id!, status: 'handled', at: Date.now(), result: { exitCode: 0 } }]);
    relay.hub.emit('status', { id, to: 'office', from: 'till', status: 'handled', at: Date.now() });
    expect(await t.answer(MessageType.STATUS, id!, n)).toEqual({ id, status: 'handled', result: { exitCode: 0 } });
  });
});

describe('relay: the upload window (PROTOCOL 7.14 step 3)', () => {
  it('a chunk more than SEND_WINDOW past the last SEND_ACK is DW_BAD_MESSAGE, decided as it arrives', async () => {
    const { EventEmitter } = await import('node:events');
    const { openMemoryStore } = await import('../../src/relay/store/memory.js');
    const { Blobs } = await import('../../src/relay/blobs.js');
    const { EventFeed } = await import('../../src/relay/events.js');
    const { Uploads } = await import('../../src/relay/uploads.js');
    const path = await import('node:path');
    const store = await openMemoryStore();
    cleanups.push(() => store.close());
    await store.createDevice({ name: 'till', createdAt: 1, sendTo: '*' });
    await store.createDevice({ name: 'office', createdAt: 1 });
    const hub = Object.assign(new EventEmitter(), { notify: () => {} });
    const uploads = new Uploads({ store, hub: hub as never, blobs: new Blobs(path.join(tempDir(), 'blobs')), feed: new EventFeed(), log: silentLogger(), maxBody: 1 << 30, newId: () => 'm1' });
    const answers: { type: MessageType; header: Record<string, unknown> }[] = [];
    const reply = { send: (type: MessageType, header: Record<string, unknown>) => (answers.push({ type, header }), true), live: true, drained: async () => {} };
    const m = (type: MessageType, header: Record<string, unknown>, parts: Uint8Array[] = []) => ({ type, header, parts, body: new Uint8Array(0) }) as unknown as Message;
    const size = 3 * SEND_WINDOW;
    uploads.onMessage('till', m(MessageType.SEND, { sid: 'w1', to: 'office', filename: 'w.bin', size, sha256: '0'.repeat(64) }), reply as never);
    await waitFor(() => answers.find((a) => a.type === MessageType.SEND_ACK), 5_000, 'SEND_ACK');
    const MiB = new Uint8Array(1024 * 1024);
    // Exactly the window, synchronously (no write has finished, so no SEND_ACK widened it): accepted.
    for (let i = 0; i < SEND_WINDOW / MiB.length; i++) uploads.onMessage('till', m(MessageType.SEND_CHUNK, { sid: 'w1' }, [MiB]), reply as never);
    // One byte more: refused on arrival.
    expect(() => uploads.onMessage('till', m(MessageType.SEND_CHUNK, { sid: 'w1' }, [new Uint8Array(1)]), reply as never)).toThrow(expect.objectContaining({ code: 'DW_BAD_MESSAGE' }));
    // A chunk for an upload the relay never acknowledged is refused too.
    expect(() => uploads.onMessage('till', m(MessageType.SEND_CHUNK, { sid: 'nope' }, [MiB]), reply as never)).toThrow(expect.objectContaining({ code: 'DW_BAD_MESSAGE' }));
  });
});
