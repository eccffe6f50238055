import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { concat } from '../../src/protocol/bytes.js';
import { ProtocolCode } from '../../src/protocol/errors.js';
import { encodeFrame, FrameDecoder } from '../../src/protocol/frame.js';
import {
  decodeClientHello,
  decodeServerHello,
  encodeClientHello,
  encodeServerHello,
  HelloKind,
  HelloResult,
  type ClientHello,
  type ServerHello,
} from '../../src/protocol/hello.js';
import { MAX_DATA_PAYLOAD, MAX_FRAME, MAX_MESSAGE_BODY, MAX_MESSAGE_HEADER, SESSION_ID_LENGTH } from '../../src/protocol/limits.js';
import { encodeMessage, MessageDecoder, MessageType, type Message } from '../../src/protocol/messages.js';
import { decodeRecord, encodeRecord, RecordType, type Record as WireRecord } from '../../src/protocol/records.js';
import { DropwireError } from '../../src/shared/errors.js';
import { codeOf, hex, split } from '../helpers/protocol.js';

// --- helpers -----------------------------------------------------------------------------------

const enc = new TextEncoder();


const bytewise = (bytes: Uint8Array): Uint8Array[] => Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));

/** The three chunkings every decoder must not care about. */
function chunkings(bytes: Uint8Array, cuts: readonly number[]): [string, Uint8Array[]][] {
  return [
    ['whole', [bytes]],
    ['byte by byte', bytewise(bytes)],
    ['random splits', split(bytes, cuts)],
  ];
}

interface Decoded {
  items: unknown[];
  code: string | undefined;
  /** Bytes held at the end; only meaningful without an error. */
  buffered: number | undefined;
}

interface Decoder<T> {
  push(b: Uint8Array): void;
  next(): T | undefined;
  readonly buffered: number;
}

/** Pushes the chunks one by one, taking everything out after each push, as a transport does. */
function decodeAll<T>(decoder: Decoder<T>, chunks: readonly Uint8Array[], show: (x: T) => unknown): Decoded {
  const items: unknown[] = [];
  for (const c of chunks) {
    decoder.push(c);
    try {
      for (let x = decoder.next(); x !== undefined; x = decoder.next()) items.push(show(x));
    } catch (err) {
      if (!(err instanceof DropwireError)) throw err;
      return { items, code: err.code, buffered: undefined };
    }
  }
  return { items, code: undefined, buffered: decoder.buffered };
}

const showMessage = (m: Message): unknown => ({ type: m.type, header: m.header, body: hex(m.body) });

/** Decodes under every chunking, checks they agree, returns the common result. */
function sameWhateverTheChunking<T>(make: () => Decoder<T>, bytes: Uint8Array, cuts: readonly number[], show: (x: T) => unknown): Decoded {
  const [whole, ...rest] = chunkings(bytes, cuts);
  const want = decodeAll(make(), whole![1], show);
  for (const [name, chunks] of rest) expect(decodeAll(make(), chunks, show), name).toEqual(want);
  return want;
}

const cutsArb = fc.array(fc.nat(), { maxLength: 24 });

// --- arbitraries -------------------------------------------------------------------------------

const idArb = fc.string({ unit: 'binary', minLength: 1, maxLength: 24 });
const countArb = fc.maxSafeNat();
const sidArb = fc.stringMatching(/^[0-9a-z]{1,64}$/);
const sha256Arb = fc.uint8Array({ minLength: 32, maxLength: 32 }).map(hex);

const headerArbs: { [T in MessageType]: fc.Arbitrary<Record<string, unknown>> } = {
  [MessageType.HELLO]: fc.record({ agent: fc.string({ unit: 'binary' }), partial: fc.array(fc.record({ id: idArb, have: countArb }), { maxLength: 3 }) }),
  [MessageType.FILE]: fc
    .tuple(countArb, countArb)
    .chain(([a, b]) =>
      fc.record({
        id: idArb,
        from: idArb,
        filename: idArb,
        size: fc.constant(Math.max(a, b)),
        sha256: sha256Arb,
        offset: fc.constant(Math.min(a, b)),
        createdAt: countArb,
      }),
    ),
  [MessageType.CHUNK]: fc.record({ id: idArb }),
  [MessageType.RECEIVED]: fc.record({ id: idArb }),
  [MessageType.RESULT]: fc.record(
    {
      id: idArb,
      status: fc.constantFrom('handled', 'failed', 'rejected'),
      code: fc.string(),
      detail: fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }),
    },
    { requiredKeys: ['id', 'status'] },
  ),
  [MessageType.CONFIRM]: fc.record({ ids: fc.array(idArb, { maxLength: 4 }) }),
  [MessageType.RESTART]: fc.record({ id: idArb, offset: countArb, code: fc.string() }),
  [MessageType.CANCEL]: fc.record({ id: idArb }),
  [MessageType.PRESENCE_QUERY]: fc.record({ qid: countArb, device: idArb }),
  [MessageType.PRESENCE]: fc.record({ qid: countArb, device: idArb, known: fc.boolean(), online: fc.boolean(), lastSeen: fc.option(countArb, { nil: null }) }),
  [MessageType.SEND]: fc.record(
    { sid: sidArb, to: idArb, filename: idArb, size: countArb, sha256: sha256Arb, sealed: fc.boolean() },
    { requiredKeys: ['sid', 'to', 'filename', 'size', 'sha256'] },
  ),
  [MessageType.SEND_ACK]: fc.record({ sid: sidArb, have: countArb }),
  [MessageType.SEND_CHUNK]: fc.record({ sid: sidArb }),
  [MessageType.SEND_END]: fc.oneof(fc.record({ sid: sidArb, id: idArb }), fc.record({ sid: sidArb, code: fc.constantFrom('DW_FORBIDDEN', 'DW_CHECKSUM'), message: fc.string() })),
  [MessageType.WATCH]: fc.record({ id: idArb }),
  [MessageType.STATUS]: fc.record(
    { id: idArb, status: fc.constantFrom('queued', 'handled', 'failed'), result: fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }) },
    { requiredKeys: ['id', 'status'] },
  ),
  [MessageType.REDIRECT]: fc.record({ rid: fc.uint8Array({ minLength: 16, maxLength: 16 }).map(hex), to: idArb, deadline: countArb }),
  [MessageType.REDIRECT_REFUSED]: fc.record({ rid: fc.uint8Array({ minLength: 16, maxLength: 16 }).map(hex), code: fc.constantFrom('DW_REDIRECT_REFUSED', 'DW_REDIRECT_TIMEOUT', 'DW_X') }),
  [MessageType.FILE_END]: fc.record({ id: idArb, sha256: sha256Arb }),
};

const messageArb = fc
  .constantFrom(...Object.values(MessageType))
  .chain((type) => fc.record({ type: fc.constant(type), header: headerArbs[type], body: fc.uint8Array({ maxLength: 300 }) }));

function encodeAll(messages: readonly { type: MessageType; header: Record<string, unknown>; body: Uint8Array }[]): Uint8Array {
  return concat(messages.flatMap((m) => encodeMessage(m.type, m.header as never, m.body)));
}

/** What the decoder must give back: the header as it went over the wire (JSON drops -0 and undefined). */
const expected = (m: { type: MessageType; header: Record<string, unknown>; body: Uint8Array }): unknown => ({
  type: m.type,
  header: JSON.parse(JSON.stringify(m.header)),
  body: hex(m.body),
});

function prefix(type: number, headerLength: number, bodyLength: number): Uint8Array {
  const p = new Uint8Array(7);
  const v = new DataView(p.buffer);
  p[0] = type;
  v.setUint16(1, headerLength);
  v.setUint32(3, bodyLength);
  return p;
}

// --- frames ------------------------------------------------------------------------------------

describe('FrameDecoder (PROTOCOL 2)', () => {
  it('gives the same frames whatever the chunking, and holds a partial frame', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 600 }), { maxLength: 8 }), fc.uint8Array({ maxLength: 40 }), fc.nat(), cutsArb, (bodies, tail, tailCut, cuts) => {
        const partial = encodeFrame(tail).subarray(0, tailCut % (tail.length + 2)); // never a whole frame
        const bytes = concat([...bodies.map(encodeFrame), partial]);
        const got = sameWhateverTheChunking(() => new FrameDecoder(), bytes, cuts, hex);
        expect(got.items).toEqual(bodies.map(hex));
        expect(got.code).toBeUndefined();
        // The length prefix is consumed once both of its bytes are in.
        expect(got.buffered).toBe(partial.length < 2 ? partial.length : partial.length - 2);
      }),
    );
  });

  it('gives the same result for arbitrary bytes whatever the chunking, with any limit', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1500 }), fc.integer({ min: 0, max: MAX_FRAME }), cutsArb, (bytes, maxBody, cuts) => {
        const got = sameWhateverTheChunking(() => new FrameDecoder(maxBody), bytes, cuts, hex);
        if (got.code !== undefined) expect(got.code).toBe(ProtocolCode.FRAME_TOO_LARGE);
      }),
    );
  });

  it('carries frames of length 0 and of the maximum, whatever the chunking', () => {
    const max = new Uint8Array(MAX_FRAME).map((_, i) => i * 7);
    const bodies = [new Uint8Array(0), max, new Uint8Array(0)];
    const bytes = concat(bodies.map(encodeFrame));
    expect(bytes.length).toBe(2 + 2 + MAX_FRAME + 2);
    // Byte by byte is slow here (ChunkReader.take is quadratic in the number of chunks): one run only.
    fc.assert(
      fc.property(cutsArb, (cuts) => {
        expect(sameWhateverTheChunking(() => new FrameDecoder(), bytes, cuts, hex).items).toEqual(bodies.map(hex));
      }),
      { numRuns: 1 },
    );
    fc.assert(
      fc.property(cutsArb, (cuts) => {
        expect(decodeAll(new FrameDecoder(), split(bytes, cuts), hex).items).toEqual(bodies.map(hex));
      }),
      { numRuns: 30 },
    );
  });

  it('accepts a frame of exactly maxBody and waits for its body', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2000 }), (maxBody) => {
        const d = new FrameDecoder(maxBody);
        const frame = encodeFrame(new Uint8Array(maxBody).fill(1));
        d.push(frame.subarray(0, 2));
        if (maxBody === 0) {
          expect(d.next()?.length).toBe(0); // an empty frame is whole once its prefix is in
          return;
        }
        expect(d.next()).toBeUndefined();
        d.push(frame.subarray(2, -1));
        expect(d.next()).toBeUndefined();
        d.push(frame.subarray(-1));
        expect(d.next()?.length).toBe(maxBody);
      }),
    );
  });

  it('refuses an oversize length as soon as the prefix is read, before any of the body', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 50 }), { maxLength: 4 }),
        fc.integer({ min: 50, max: MAX_FRAME - 1 }).chain((maxBody) => fc.tuple(fc.constant(maxBody), fc.integer({ min: maxBody + 1, max: MAX_FRAME }))),
        ([...bodies], [maxBody, length]) => {
          const before = concat(bodies.map(encodeFrame));
          const d = new FrameDecoder(maxBody);
          const frames: Uint8Array[] = [];
          for (const b of bytewise(before)) {
            d.push(b);
            for (let f = d.next(); f; f = d.next()) frames.push(f);
          }
          expect(frames.map(hex)).toEqual(bodies.map(hex));
          d.push(Uint8Array.of(length >>> 8));
          expect(d.next()).toBeUndefined();
          d.push(Uint8Array.of(length & 0xff));
          expect(codeOf(() => d.next())).toBe(ProtocolCode.FRAME_TOO_LARGE);
          expect(d.buffered).toBe(0);
        },
      ),
    );
  });

  it('will not encode a body over MAX_FRAME', () => {
    expect(codeOf(() => encodeFrame(new Uint8Array(MAX_FRAME + 1)))).toBe(ProtocolCode.FRAME_TOO_LARGE);
  });
});

// --- messages ----------------------------------------------------------------------------------

describe('MessageDecoder (PROTOCOL 6-7)', () => {
  it('gives the same messages whatever the chunking', () => {
    fc.assert(
      fc.property(fc.array(messageArb, { maxLength: 5 }), cutsArb, (messages, cuts) => {
        const got = sameWhateverTheChunking(() => new MessageDecoder(), encodeAll(messages), cuts, showMessage);
        expect(got).toEqual({ items: messages.map(expected), code: undefined, buffered: 0 });
      }),
    );
  });

  it('gives the same result for damaged streams and arbitrary bytes whatever the chunking', () => {
    const damaged = fc
      .tuple(fc.array(messageArb, { minLength: 1, maxLength: 3 }), fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { minLength: 1, maxLength: 4 }))
      .map(([messages, edits]) => {
        const b = encodeAll(messages);
        for (const [at, value] of edits) b[at % b.length] = value;
        return b;
      });
    fc.assert(
      fc.property(fc.oneof(damaged, fc.uint8Array({ maxLength: 400 })), cutsArb, (bytes, cuts) => {
        const got = sameWhateverTheChunking(() => new MessageDecoder(), bytes, cuts, showMessage);
        if (got.code !== undefined) expect([ProtocolCode.BAD_MESSAGE, ProtocolCode.MESSAGE_TOO_LARGE]).toContain(got.code);
      }),
    );
  });

  it('carries an empty body, and a header and a body of the maximum length', () => {
    const empty = { type: MessageType.CHUNK, header: { id: 'a' }, body: new Uint8Array(0) };
    const base = JSON.stringify({ id: 'big', pad: '' }).length;
    const header = { id: 'big', pad: 'p'.repeat(MAX_MESSAGE_HEADER - base) };
    const big = { type: MessageType.CHUNK, header, body: new Uint8Array(MAX_MESSAGE_BODY).map((_, i) => i) };
    expect(enc.encode(JSON.stringify(header)).length).toBe(MAX_MESSAGE_HEADER);
    const messages = [empty, big, empty];
    const bytes = encodeAll(messages);
    const want = messages.map(expected);
    expect(decodeAll(new MessageDecoder(), [bytes], showMessage).items).toEqual(want);
    fc.assert(
      fc.property(cutsArb, (cuts) => {
        expect(decodeAll(new MessageDecoder(), split(bytes, cuts), showMessage).items).toEqual(want);
      }),
      { numRuns: 20 },
    );
    // Byte by byte up to the big body, then the body in 64 KiB pieces (a 1 MiB body pushed byte by byte
    // takes minutes: ChunkReader.take is quadratic in the number of chunks).
    const headEnd = 7 + enc.encode(JSON.stringify(empty.header)).length + 7 + MAX_MESSAGE_HEADER;
    const bodyEnd = headEnd + MAX_MESSAGE_BODY;
    const pieces = [...bytewise(bytes.subarray(0, headEnd))];
    for (let i = headEnd; i < bodyEnd; i += 65536) pieces.push(bytes.subarray(i, Math.min(bodyEnd, i + 65536)));
    pieces.push(...bytewise(bytes.subarray(bodyEnd)));
    expect(decodeAll(new MessageDecoder(), pieces, showMessage).items).toEqual(want);
  });

  it('waits for a header and a body of exactly the maximum length', () => {
    const d = new MessageDecoder();
    d.push(prefix(MessageType.CHUNK, MAX_MESSAGE_HEADER, MAX_MESSAGE_BODY));
    expect(d.next()).toBeUndefined();
  });

  it('refuses an oversize header or body length as soon as the prefix is read, before any of it', () => {
    const oversize = fc.oneof(
      fc.tuple(fc.integer({ min: MAX_MESSAGE_HEADER + 1, max: 0xffff }), fc.integer({ min: 0, max: 0xffffffff })),
      fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: MAX_MESSAGE_BODY + 1, max: 0xffffffff })),
    );
    fc.assert(
      fc.property(fc.array(messageArb, { maxLength: 3 }), fc.constantFrom(...Object.values(MessageType)), oversize, (messages, type, [hl, bl]) => {
        const d = new MessageDecoder();
        const got: unknown[] = [];
        for (const b of bytewise(encodeAll(messages))) {
          d.push(b);
          for (let m = d.next(); m; m = d.next()) got.push(showMessage(m));
        }
        expect(got).toEqual(messages.map(expected));
        const p = prefix(type, hl, bl);
        for (let i = 0; i < 6; i++) {
          d.push(p.subarray(i, i + 1));
          expect(d.next()).toBeUndefined();
        }
        d.push(p.subarray(6));
        expect(codeOf(() => d.next())).toBe(ProtocolCode.MESSAGE_TOO_LARGE);
        expect(d.buffered).toBe(0);
      }),
    );
  });

  it('will not encode a header or body over the limits', () => {
    expect(codeOf(() => encodeMessage(MessageType.CHUNK, { id: 'x'.repeat(MAX_MESSAGE_HEADER) }))).toBe(ProtocolCode.MESSAGE_TOO_LARGE);
    expect(codeOf(() => encodeMessage(MessageType.CHUNK, { id: 'x' }, new Uint8Array(MAX_MESSAGE_BODY + 1)))).toBe(ProtocolCode.MESSAGE_TOO_LARGE);
  });
});

describe('message headers are checked field by field (PROTOCOL 7)', () => {
  const valid: { [T in MessageType]: Record<string, unknown> } = {
    [MessageType.HELLO]: { agent: 'a1', partial: [{ id: 'f1', have: 10 }] },
    [MessageType.FILE]: { id: 'f1', from: 'site', filename: 'a.pdf', size: 10, sha256: 'ab'.repeat(32), offset: 0, createdAt: 1 },
    [MessageType.CHUNK]: { id: 'f1' },
    [MessageType.RECEIVED]: { id: 'f1' },
    [MessageType.RESULT]: { id: 'f1', status: 'handled', code: 'DW_X', detail: { exit: 0 } },
    [MessageType.CONFIRM]: { ids: ['f1', 'f2'] },
    [MessageType.RESTART]: { id: 'f1', offset: 0, code: 'DW_BAD_HASH' },
    [MessageType.CANCEL]: { id: 'f1' },
    [MessageType.PRESENCE_QUERY]: { qid: 1, device: 'shop' },
    [MessageType.PRESENCE]: { qid: 1, device: 'shop', known: true, online: false, lastSeen: null },
    [MessageType.SEND]: { sid: 'u1', to: 'office', filename: 'a.csv', size: 10, sha256: 'ab'.repeat(32), sealed: true },
    [MessageType.SEND_ACK]: { sid: 'u1', have: 0 },
    [MessageType.SEND_CHUNK]: { sid: 'u1' },
    [MessageType.SEND_END]: { sid: 'u1', id: 'm1' },
    [MessageType.WATCH]: { id: 'm1' },
    [MessageType.STATUS]: { id: 'm1', status: 'handled', result: { exitCode: 0 } },
    [MessageType.REDIRECT]: { rid: '00112233445566778899aabbccddeeff', to: '127.0.0.1:7391', deadline: 1700000010000 },
    [MessageType.REDIRECT_REFUSED]: { rid: '00112233445566778899aabbccddeeff', code: 'DW_REDIRECT_REFUSED' },
    [MessageType.FILE_END]: { id: 'f1', sha256: 'ab'.repeat(32) },
  };
  const notString = [undefined, null, 1, true, [], {}];
  const notId = [...notString, '', 'x'.repeat(1025)];
  const notCount = [undefined, null, -1, 1.5, 2 ** 53, '1', Infinity];
  const bad: [MessageType, string, unknown[]][] = [
    [MessageType.HELLO, 'agent', notString],
    [MessageType.HELLO, 'partial', [undefined, null, {}, 'x', [null], [1], [{ id: '', have: 1 }], [{ id: 'a', have: -1 }], [{ id: 'a' }], Array(10_001).fill({ id: 'a', have: 0 })]],
    ...(['id', 'from', 'filename'] as const).map((f): [MessageType, string, unknown[]] => [MessageType.FILE, f, notId]),
    // PROTOCOL 7.18: a FILE may leave `sha256` out (cut-through: it follows in FILE_END), never give a bad one.
    [MessageType.FILE, 'sha256', notId.filter((x) => x !== undefined)],
    [MessageType.FILE_END, 'id', notId],
    [MessageType.FILE_END, 'sha256', [...notString, 'AB'.repeat(32), 'ab'.repeat(31)]],
    ...(['size', 'offset', 'createdAt'] as const).map((f): [MessageType, string, unknown[]] => [MessageType.FILE, f, notCount]),
    [MessageType.FILE, 'offset', [11]], // past the size
    [MessageType.CHUNK, 'id', notId],
    [MessageType.RECEIVED, 'id', notId],
    [MessageType.CANCEL, 'id', notId],
    [MessageType.RESULT, 'id', notId],
    [MessageType.RESULT, 'status', [undefined, 'ok', 'HANDLED', 1]],
    [MessageType.RESULT, 'code', [null, 1, {}]],
    [MessageType.RESULT, 'detail', [null, [], 'x', 1]],
    [MessageType.CONFIRM, 'ids', [undefined, null, 'f1', [''], [1], ['x'.repeat(1025)]]],
    [MessageType.RESTART, 'id', notId],
    [MessageType.RESTART, 'offset', notCount],
    [MessageType.RESTART, 'code', notString],
    [MessageType.PRESENCE_QUERY, 'qid', notCount],
    [MessageType.PRESENCE_QUERY, 'device', notId],
    [MessageType.PRESENCE, 'qid', notCount],
    [MessageType.PRESENCE, 'device', notId],
    [MessageType.PRESENCE, 'known', [undefined, null, 1, 'true']],
    [MessageType.PRESENCE, 'online', [undefined, null, 1, 'true']],
    [MessageType.PRESENCE, 'lastSeen', [undefined, -1, 1.5, '1']],
    [MessageType.SEND, 'sid', [...notId, 'A1', 'a-1', 'x'.repeat(65)]],
    [MessageType.SEND, 'to', notId],
    [MessageType.SEND, 'filename', notId],
    [MessageType.SEND, 'size', notCount],
    [MessageType.SEND, 'sha256', [...notString, 'AB'.repeat(32), 'ab'.repeat(31)]],
    [MessageType.SEND, 'sealed', [null, 1, 'true']],
    [MessageType.SEND_ACK, 'sid', notId],
    [MessageType.SEND_ACK, 'have', notCount],
    [MessageType.SEND_CHUNK, 'sid', notId],
    [MessageType.SEND_END, 'sid', notId],
    [MessageType.SEND_END, 'id', [undefined, null, 1, '']],
    [MessageType.WATCH, 'id', notId],
    [MessageType.STATUS, 'id', notId],
    [MessageType.STATUS, 'status', notId],
    [MessageType.STATUS, 'result', [null, [], 'x', 1]],
    [MessageType.HELLO, 'caps', [null, 'redirect', [1], [''], {}]],
    [MessageType.REDIRECT, 'rid', [undefined, null, '', '00112233445566778899AABBCCDDEEFF', '0011', 1]],
    [MessageType.REDIRECT, 'to', notId],
    [MessageType.REDIRECT, 'deadline', notCount],
    [MessageType.REDIRECT_REFUSED, 'rid', [undefined, 'x'.repeat(32)]],
    [MessageType.REDIRECT_REFUSED, 'code', [undefined, null, 'refused', 'DW_', 1]],
  ];

  const decodeOne = (type: number, header: Uint8Array, body = new Uint8Array(0)) => {
    const d = new MessageDecoder();
    d.push(concat([prefix(type, header.length, body.length), header, body]));
    return d.next();
  };

  it('accepts the valid headers', () => {
    for (const [type, header] of Object.entries(valid)) {
      expect(decodeOne(Number(type), enc.encode(JSON.stringify(header)))).toMatchObject({ type: Number(type), header });
    }
  });

  it.each(bad)('type %i: a bad %s is DW_BAD_MESSAGE', (type, field, values) => {
    for (const value of values) {
      const header = { ...valid[type], [field]: value };
      if (value === undefined) delete header[field];
      const bytes = enc.encode(JSON.stringify(header));
      expect(codeOf(() => decodeOne(type, bytes)), `${field} = ${JSON.stringify(value)?.slice(0, 40)}`).toBe(ProtocolCode.BAD_MESSAGE);
    }
  });

  it('refuses headers that are not a UTF-8 JSON object', () => {
    for (const h of ['', '{', 'null', '[]', '1', '"x"', '{"id":"a"}x']) {
      expect(codeOf(() => decodeOne(MessageType.CHUNK, enc.encode(h))), h).toBe(ProtocolCode.BAD_MESSAGE);
    }
    expect(codeOf(() => decodeOne(MessageType.CHUNK, Uint8Array.of(0x7b, 0xff, 0x7d)))).toBe(ProtocolCode.BAD_MESSAGE);
  });

  it('refuses an unknown type on its prefix, before the header arrives', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }).filter((t) => !(Object.values(MessageType) as number[]).includes(t)), fc.nat({ max: 100 }), (type, hl) => {
        const d = new MessageDecoder();
        d.push(prefix(type, hl, 0));
        expect(codeOf(() => d.next())).toBe(ProtocolCode.BAD_MESSAGE);
      }),
    );
  });
});

// --- hellos ------------------------------------------------------------------------------------

/** UTF-8 of at most 255 bytes (63 code points of at most 4 bytes). */
const enrollFieldArb = fc.string({ unit: 'binary', maxLength: 63 });

const clientHelloArb: fc.Arbitrary<ClientHello> = fc
  .record({
    kind: fc.constantFrom(HelloKind.NEW, HelloKind.RESUME, HelloKind.ENROLL),
    timestamp: countArb,
    sessionId: fc.uint8Array({ minLength: SESSION_ID_LENGTH, maxLength: SESSION_ID_LENGTH }),
    received: countArb,
    name: enrollFieldArb,
    secret: enrollFieldArb,
  })
  .map(({ kind, name, secret, ...rest }) => ({ kind, ...rest, ...(kind === HelloKind.ENROLL ? { enroll: { name, secret } } : {}) }));

const serverHelloArb: fc.Arbitrary<ServerHello> = fc
  .record({
    result: fc.constantFrom(HelloResult.NEW, HelloResult.RESUMED, HelloResult.LOST, HelloResult.REFUSED),
    sessionId: fc.uint8Array({ minLength: SESSION_ID_LENGTH, maxLength: SESSION_ID_LENGTH }),
    received: countArb,
    code: fc.stringMatching(/^DW_[A-Z0-9_]{1,60}$/),
  })
  .map(({ result, code, ...rest }) => ({ result, ...rest, ...(result === HelloResult.REFUSED ? { code } : {}) }));

const extraArb = fc.uint8Array({ minLength: 1, maxLength: 8 });

describe('hellos (PROTOCOL 3.4-3.5)', () => {
  it('client hellos round-trip', () => {
    fc.assert(
      fc.property(clientHelloArb, (h) => {
        expect(decodeClientHello(encodeClientHello(h))).toEqual(h);
      }),
    );
  });

  it('server hellos round-trip', () => {
    fc.assert(
      fc.property(serverHelloArb, (h) => {
        expect(decodeServerHello(encodeServerHello(h))).toEqual(h);
      }),
    );
  });

  it('a truncated or extended client hello is DW_BAD_HELLO', () => {
    fc.assert(
      fc.property(clientHelloArb, extraArb, (h, extra) => {
        const b = encodeClientHello(h);
        for (let n = 0; n < b.length; n++) expect(codeOf(() => decodeClientHello(b.subarray(0, n))), `${n} bytes`).toBe(ProtocolCode.BAD_HELLO);
        expect(codeOf(() => decodeClientHello(concat([b, extra])))).toBe(ProtocolCode.BAD_HELLO);
      }),
      { numRuns: 50 },
    );
  });

  it('a truncated or extended server hello is DW_BAD_HELLO', () => {
    fc.assert(
      fc.property(serverHelloArb, extraArb, (h, extra) => {
        const b = encodeServerHello(h);
        for (let n = 0; n < b.length; n++) expect(codeOf(() => decodeServerHello(b.subarray(0, n))), `${n} bytes`).toBe(ProtocolCode.BAD_HELLO);
        expect(codeOf(() => decodeServerHello(concat([b, extra])))).toBe(ProtocolCode.BAD_HELLO);
      }),
      { numRuns: 50 },
    );
  });

  it('bad versions, kinds, results, counters, fields and codes are DW_BAD_HELLO', () => {
    const c = encodeClientHello({ kind: HelloKind.ENROLL, timestamp: 1, sessionId: new Uint8Array(16), received: 0, enroll: { name: 'n', secret: 's' } });
    const s = encodeServerHello({ result: HelloResult.REFUSED, sessionId: new Uint8Array(16), received: 0, code: 'DW_NO' });
    const edit = (b: Uint8Array, at: number, ...values: number[]) => {
      const out = b.slice();
      out.set(values, at);
      return out;
    };
    const cases: [string, () => unknown][] = [
      ['client version 0', () => decodeClientHello(edit(c, 0, 0))],
      ['client version 2', () => decodeClientHello(edit(c, 0, 2))],
      ['client kind 4', () => decodeClientHello(edit(c, 1, 4))],
      ['HANDOVER without its 16-byte request id', () => decodeClientHello(edit(c, 1, 3))],
      ['HANDOVER request id missing when encoding', () => encodeClientHello({ kind: HelloKind.HANDOVER, timestamp: 1, sessionId: new Uint8Array(16), received: 0 })],
      ['timestamp > 2^53', () => decodeClientHello(edit(c, 2, 0x00, 0x20, 0, 0, 0, 0, 0, 0))],
      ['received > 2^53', () => decodeClientHello(edit(c, 26, 0xff))],
      ['enroll name not UTF-8', () => decodeClientHello(edit(c, 35, 0xff))],
      ['enroll name length past the end', () => decodeClientHello(edit(c, 34, 200))],
      ['server version 0', () => decodeServerHello(edit(s, 0, 0))],
      ['server result 4', () => decodeServerHello(edit(s, 1, 4))],
      ['server received > 2^53', () => decodeServerHello(edit(s, 18, 0xff))],
      ['refusal code lowercase', () => decodeServerHello(edit(s, 27, 0x64))],
      ['refusal code "DW_"', () => decodeServerHello(concat([s.subarray(0, 26), Uint8Array.of(3), enc.encode('DW_')]))],
      ['enroll field of 256 bytes', () => encodeClientHello({ kind: HelloKind.ENROLL, timestamp: 1, sessionId: new Uint8Array(16), received: 0, enroll: { name: 'x'.repeat(256), secret: '' } })],
      ['ENROLL without fields', () => encodeClientHello({ kind: HelloKind.ENROLL, timestamp: 1, sessionId: new Uint8Array(16), received: 0 })],
    ];
    for (const [name, fn] of cases) expect(codeOf(fn), name).toBe(ProtocolCode.BAD_HELLO);
    // The limits themselves are fine.
    const long = { kind: HelloKind.ENROLL, timestamp: Number.MAX_SAFE_INTEGER, sessionId: new Uint8Array(16), received: Number.MAX_SAFE_INTEGER, enroll: { name: 'x'.repeat(255), secret: 'é'.repeat(127) } } as const;
    expect(decodeClientHello(encodeClientHello(long))).toEqual(long);
  });

  it('a leading U+FEFF in an enroll field survives the round trip', () => {
    const h: ClientHello = { kind: HelloKind.ENROLL, timestamp: 1, sessionId: new Uint8Array(16), received: 0, enroll: { name: '\ufeffhost', secret: 's' } };
    expect(decodeClientHello(encodeClientHello(h))).toEqual(h);
  });
});

// --- records -----------------------------------------------------------------------------------

const recordArb: fc.Arbitrary<WireRecord> = fc.oneof(
  fc.uint8Array({ minLength: 1, maxLength: 600 }).map((bytes) => ({ type: RecordType.DATA, bytes })),
  fc.record({ type: fc.constantFrom(RecordType.ACK, RecordType.PING, RecordType.PONG), received: countArb }),
  fc.stringMatching(/^DW_[A-Z0-9_]{0,61}$/).map((code) => ({ type: RecordType.CLOSE, code })),
);

const showRecord = (r: WireRecord): unknown => (r.type === RecordType.DATA ? { type: r.type, bytes: hex(r.bytes) } : r);

describe('records (PROTOCOL 4.2)', () => {
  it('round-trip', () => {
    fc.assert(
      fc.property(recordArb, (r) => {
        expect(showRecord(decodeRecord(encodeRecord(r)))).toEqual(showRecord(r));
      }),
    );
    const max = new Uint8Array(MAX_DATA_PAYLOAD).fill(3);
    expect(decodeRecord(encodeRecord({ type: RecordType.DATA, bytes: max }))).toMatchObject({ type: RecordType.DATA, bytes: max });
  });

  it('truncated or extended counter and CLOSE records are DW_BAD_RECORD', () => {
    fc.assert(
      fc.property(recordArb.filter((r) => r.type !== RecordType.DATA), extraArb, (r, extra) => {
        const b = encodeRecord(r);
        for (let n = 0; n < b.length; n++) expect(codeOf(() => decodeRecord(b.subarray(0, n))), `${n} bytes`).toBe(ProtocolCode.BAD_RECORD);
        expect(codeOf(() => decodeRecord(concat([b, extra])))).toBe(ProtocolCode.BAD_RECORD);
      }),
      { numRuns: 50 },
    );
  });

  it('empty, oversize, unknown, out-of-range and malformed records are DW_BAD_RECORD', () => {
    const cases: [string, Uint8Array][] = [
      ['empty', new Uint8Array(0)],
      ['DATA without payload', Uint8Array.of(RecordType.DATA)],
      ['DATA over the limit', new Uint8Array(2 + MAX_DATA_PAYLOAD).fill(RecordType.DATA, 0, 1)],
      ['ACK past 2^53', Uint8Array.of(RecordType.ACK, 0, 0x20, 0, 0, 0, 0, 0, 0)],
      ['CLOSE lowercase', concat([Uint8Array.of(RecordType.CLOSE, 4), enc.encode('DW_x')])],
      ['CLOSE without DW_', concat([Uint8Array.of(RecordType.CLOSE, 2), enc.encode('OK')])],
    ];
    for (const [name, b] of cases) expect(codeOf(() => decodeRecord(b)), name).toBe(ProtocolCode.BAD_RECORD);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }).filter((t) => t < RecordType.DATA || t > RecordType.CLOSE), fc.uint8Array({ maxLength: 20 }), (type, rest) => {
        expect(codeOf(() => decodeRecord(concat([Uint8Array.of(type), rest])))).toBe(ProtocolCode.BAD_RECORD);
      }),
    );
  });

  it('arbitrary bytes decode or fail with DW_BAD_RECORD, nothing else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), (b) => {
        try {
          decodeRecord(b);
        } catch (err) {
          expect(err).toBeInstanceOf(DropwireError);
          expect((err as DropwireError).code).toBe(ProtocolCode.BAD_RECORD);
        }
      }),
    );
  });
});

describe('input buffering stays linear', () => {
  it('a 256 KiB message fed one byte at a time decodes (take() does not go quadratic)', () => {
    const body = new Uint8Array(256 * 1024).map((_, i) => i & 0xff);
    const wire = Buffer.concat(encodeMessage(MessageType.CHUNK, { id: 'abc' }, body));
    const d = new MessageDecoder();
    for (let i = 0; i < wire.length; i++) d.push(wire.subarray(i, i + 1));
    const m = d.next();
    expect(m?.type).toBe(MessageType.CHUNK);
    expect(Buffer.from(m!.body).equals(Buffer.from(body))).toBe(true);
    expect(d.buffered).toBe(0);
  });
});
