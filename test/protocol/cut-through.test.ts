/** PROTOCOL 7.18: the cut-through test vectors byte for byte, and the decoder's checks on FILE_END. */
import { describe, expect, it } from 'vitest';
import { ProtocolCode } from '../../src/protocol/errors.js';
import { CAP_CUT_THROUGH, CAP_REDIRECT, encodeMessage, encodeMessageParts, MessageDecoder, MessageType } from '../../src/protocol/messages.js';
import { hex } from '../helpers/protocol.js';

const unhex = (s: string): string => s.replace(/\s+/g, '');
const join = (parts: Uint8Array[]): string => parts.map(hex).join('');
const SHA = '403bea5152c251c5bc7ef420d824d191605723f99392e83a0549ad58c6d46291'; // of `a;b\n1;2\n` (7.14)

describe('PROTOCOL 7.18: test vectors', () => {
  it('FILE without sha256, its CHUNK, FILE_END and a HELLO listing cut-through', () => {
    const file = encodeMessage(MessageType.FILE, { id: 'mx9b0c1d', from: 'erp', filename: 'z.csv', size: 8, offset: 0, createdAt: 1700000000000 });
    expect(join(file)).toBe(
      unhex(`02 00 5f 00 00 00 00 7b 22 69 64 22 3a 22 6d 78 39 62 30 63 31 64 22 2c 22 66 72 6f 6d 22 3a 22
             65 72 70 22 2c 22 66 69 6c 65 6e 61 6d 65 22 3a 22 7a 2e 63 73 76 22 2c 22 73 69 7a 65 22 3a 38
             2c 22 6f 66 66 73 65 74 22 3a 30 2c 22 63 72 65 61 74 65 64 41 74 22 3a 31 37 30 30 30 30 30 30
             30 30 30 30 30 7d`),
    );
    // A CHUNK made of the pieces an upload arrived in is the same bytes as one made of them joined.
    const chunk = encodeMessageParts(MessageType.CHUNK, { id: 'mx9b0c1d' }, [Buffer.from('a;b\n'), Buffer.from('1;2\n')]);
    expect(join(chunk)).toBe(join(encodeMessage(MessageType.CHUNK, { id: 'mx9b0c1d' }, Buffer.from('a;b\n1;2\n'))));
    expect(join(chunk).slice(0, 14)).toBe(unhex('03 00 11 00 00 00 08'));
    expect(join(chunk).length / 2).toBe(32);
    const end = encodeMessage(MessageType.FILE_END, { id: 'mx9b0c1d', sha256: SHA });
    expect(join(end)).toBe(
      unhex(`13 00 5d 00 00 00 00 7b 22 69 64 22 3a 22 6d 78 39 62 30 63 31 64 22 2c 22 73 68 61 32 35 36 22
             3a 22 34 30 33 62 65 61 35 31 35 32 63 32 35 31 63 35 62 63 37 65 66 34 32 30 64 38 32 34 64 31
             39 31 36 30 35 37 32 33 66 39 39 33 39 32 65 38 33 61 30 35 34 39 61 64 35 38 63 36 64 34 36 32
             39 31 22 7d`),
    );
    const hello = encodeMessage(MessageType.HELLO, { agent: 'dropwire/1.0.0', partial: [], caps: [CAP_REDIRECT, CAP_CUT_THROUGH] });
    expect(join(hello)).toBe(
      unhex(`01 00 49 00 00 00 00 7b 22 61 67 65 6e 74 22 3a 22 64 72 6f 70 77 69 72 65 2f 31 2e 30 2e 30 22
             2c 22 70 61 72 74 69 61 6c 22 3a 5b 5d 2c 22 63 61 70 73 22 3a 5b 22 72 65 64 69 72 65 63 74 22
             2c 22 63 75 74 2d 74 68 72 6f 75 67 68 22 5d 7d`),
    );
    const d = new MessageDecoder();
    for (const p of [...file, ...chunk, ...end, ...hello]) d.push(p);
    const f = d.next()!;
    expect(f).toMatchObject({ type: MessageType.FILE, header: { id: 'mx9b0c1d', size: 8, offset: 0 } });
    expect((f.header as { sha256?: string }).sha256).toBeUndefined();
    const c = d.next()!;
    expect(Buffer.from(c.body).toString()).toBe('a;b\n1;2\n');
    expect(d.next()).toMatchObject({ type: MessageType.FILE_END, header: { id: 'mx9b0c1d', sha256: SHA } });
    expect(d.next()).toMatchObject({ type: MessageType.HELLO, header: { caps: ['redirect', 'cut-through'] } });
  });

  it('FILE_END with a hash that is not 64 lowercase hex digits is DW_BAD_MESSAGE', () => {
    for (const sha256 of [SHA.toUpperCase(), SHA.slice(2), `${SHA}00`, 7]) {
      const d = new MessageDecoder();
      for (const p of encodeMessage(MessageType.FILE_END, { id: 'mx9b0c1d', sha256 } as never)) d.push(p);
      expect(() => d.next()).toThrow(expect.objectContaining({ code: ProtocolCode.BAD_MESSAGE }));
    }
  });
});
