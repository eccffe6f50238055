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

/** A bare agent session: HELLO on every new stream, collects FILEs, sends what the test tells it to. */
class RawAgent {
  readonly files: string[] = [];
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
            }
          }
        },
        onClose: () => {
          this.link = undefined;
        },
      },
    });
    this.dialer.start();
  }

  send<T extends MessageType>(type: T, header: Headers[T]): void {
    for (const part of encodeMessage(type, header)) this.session.write(part);
    this.link?.pump();
  }

  close(): void {
    this.dialer.close();
  }
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function startRelay(dataDir: string, log = silentLogger()): Promise<Relay> {
  const relay = await Relay.start({ dataDir, listen: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, log });
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
