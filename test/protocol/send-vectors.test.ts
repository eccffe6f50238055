import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { concat } from '../../src/protocol/bytes.js';
import { encodeMessage, MessageDecoder, MessageType } from '../../src/protocol/messages.js';

const DOC = fs.readFileSync(path.join(import.meta.dirname, '../../docs/PROTOCOL.md'), 'utf8');
const hexOf = (block: string) => block.trim().split(/\s+/).join('');

/** Every `Test vector (`TYPE {json}` [with body `text`]), N bytes:` followed by a hex block, in PROTOCOL 7.14-7.15. */
function vectors(): { type: keyof typeof MessageType; header: Record<string, unknown>; body: string; length: number; hex: string }[] {
  const re = /Test vector \(`([A-Z_]+) (\{.*?\})`(?: with body `([^`]*)`)?\), (\d+) bytes:\n\n```\n([0-9a-f \n]+)```/g;
  return [...DOC.matchAll(re)].map((m) => ({
    type: m[1] as keyof typeof MessageType,
    header: JSON.parse(m[2]!) as Record<string, unknown>,
    body: (m[3] ?? '').replace(/\\n/g, '\n'),
    length: Number(m[4]),
    hex: hexOf(m[5]!),
  }));
}

describe('PROTOCOL 7.14-7.15 test vectors, as written in docs/PROTOCOL.md', () => {
  const all = vectors();

  it('has a vector for every message added for sending', () => {
    expect(new Set(all.map((v) => v.type))).toEqual(new Set(['SEND', 'SEND_ACK', 'SEND_CHUNK', 'SEND_END', 'WATCH', 'STATUS']));
  });

  it.each(all.map((v) => [`${v.type} ${JSON.stringify(v.header)}`, v] as const))('%s encodes to the documented bytes and decodes back', (_, v) => {
    const body = new TextEncoder().encode(v.body);
    const bytes = concat(encodeMessage(MessageType[v.type], v.header as never, body));
    expect(Buffer.from(bytes).toString('hex')).toBe(v.hex);
    expect(bytes.length).toBe(v.length);
    const d = new MessageDecoder();
    d.push(bytes);
    const m = d.next()!;
    expect(m.type).toBe(MessageType[v.type]);
    expect(m.header).toEqual(v.header);
    expect(Buffer.from(m.body).toString()).toBe(v.body);
  });

  it('the sealed-file vector of PROTOCOL 12.5 is the one test/protocol/seal.test.ts checks', () => {
    const at = DOC.indexOf('**12.5 Test vector.**');
    const block = /```\n([0-9a-f \n]+)```/.exec(DOC.slice(at))![1]!;
    expect(hexOf(block)).toBe(
      '44575331219e4d800da968d2a5fcb009c784f4746c7138edb9ee4844b739e830b05cf4245a26552873069b47f3627ddcd655fa96787a6b2e79a69806',
    );
  });
});
