import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SEND_WINDOW } from '../../src/protocol/limits.js';
import { MessageType, type Headers, type Message } from '../../src/protocol/messages.js';
import { Sender, type SendChannel } from '../../src/agent/send.js';
import { tempDir, waitFor } from '../helpers/cli.js';

/** A channel that records what the sender writes; the test plays the relay. */
function channel() {
  const written: { type: MessageType; header: Record<string, unknown>; bytes: number }[] = [];
  const ch: SendChannel = {
    ready: true,
    write: (type, header, body) => {
      written.push({ type, header: header as Record<string, unknown>, bytes: body?.length ?? 0 });
      return true;
    },
    drained: () => Promise.resolve(),
  };
  return { ch, written, sent: () => written.filter((w) => w.type === MessageType.SEND_CHUNK).reduce((a, w) => a + w.bytes, 0) };
}

const msg = <T extends MessageType>(type: T, header: Headers[T]) => ({ type, header, body: new Uint8Array(0), parts: [] }) as unknown as Message;

describe('Sender (PROTOCOL 7.14, agent side)', () => {
  it('never sends past the window the relay granted; resumes an offer from the relay\'s `have`', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'big.bin');
    const size = 3 * SEND_WINDOW + 12345;
    fs.writeFileSync(file, Buffer.alloc(size, 7));
    const c = channel();
    const s = new Sender(c.ch);
    const done = s.send({ file, to: 'office', sid: 'u1' });
    const offer = await waitFor(() => c.written.find((w) => w.type === MessageType.SEND), 5_000, 'SEND');
    expect(offer.header).toMatchObject({ sid: 'u1', to: 'office', filename: 'big.bin', size });
    s.onMessage(msg(MessageType.SEND_ACK, { sid: 'u1', have: 0 }));
    await waitFor(() => (c.sent() === SEND_WINDOW ? true : undefined), 5_000, 'one window sent');
    await new Promise((r) => setTimeout(r, 100));
    expect(c.sent()).toBe(SEND_WINDOW); // and no more without an ACK
    s.onMessage(msg(MessageType.SEND_ACK, { sid: 'u1', have: 1024 * 1024 }));
    await waitFor(() => (c.sent() === SEND_WINDOW + 1024 * 1024 ? true : undefined), 5_000, 'the window moved by the ACK');
    await new Promise((r) => setTimeout(r, 100));
    expect(c.sent()).toBe(SEND_WINDOW + 1024 * 1024);

    // A new stream: offered again; the relay has 2 MiB + 5: the chunks start there.
    const before = c.written.length;
    s.newStream();
    expect(c.written[before]).toMatchObject({ type: MessageType.SEND, header: { sid: 'u1' } });
    s.onMessage(msg(MessageType.SEND_ACK, { sid: 'u1', have: 2 * 1024 * 1024 + 5 }));
    await waitFor(() => (c.written.slice(before).filter((w) => w.type === MessageType.SEND_CHUNK).reduce((a, w) => a + w.bytes, 0) === SEND_WINDOW ? true : undefined), 5_000, 'a window from the resumed offset');
    s.onMessage(msg(MessageType.SEND_END, { sid: 'u1', id: 'm1' }));
    await expect(done).resolves.toBe('m1');
  });

  it('a refusal rejects with its code; DW_CHECKSUM offers the file again once', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'a.txt');
    fs.writeFileSync(file, 'a');
    const c = channel();
    const s = new Sender(c.ch);
    const refused = s.send({ file, to: 'office', sid: 'r1' });
    await waitFor(() => c.written.find((w) => w.type === MessageType.SEND), 5_000, 'SEND');
    s.onMessage(msg(MessageType.SEND_END, { sid: 'r1', code: 'DW_FORBIDDEN', message: 'no' }));
    await expect(refused).rejects.toMatchObject({ code: 'DW_FORBIDDEN' });
    const again = s.send({ file, to: 'office', sid: 'r2' });
    await waitFor(() => c.written.find((w) => w.type === MessageType.SEND && w.header.sid === 'r2'), 5_000, 'SEND r2');
    s.onMessage(msg(MessageType.SEND_END, { sid: 'r2', code: 'DW_CHECKSUM' }));
    expect(c.written.filter((w) => w.type === MessageType.SEND && w.header.sid === 'r2').length).toBe(2);
    s.onMessage(msg(MessageType.SEND_END, { sid: 'r2', code: 'DW_CHECKSUM' }));
    await expect(again).rejects.toMatchObject({ code: 'DW_CHECKSUM' });
  });
});
