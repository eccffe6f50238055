import { createCipheriv, createDecipheriv, createHash, createHmac, createPublicKey, diffieHellman, generateKeyPairSync, type KeyObject } from 'node:crypto';
import net from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cliOk, setup, sha256, waitFor } from '../helpers/cli.js';

/**
 * An agent written from docs/PROTOCOL.md alone (issue 11.20): it imports nothing from src/, only Node's
 * crypto primitives, and follows the clauses cited. It enrolls with a token from `relay device add`,
 * receives a file, answers it, checks PING/PONG, drops the socket and resumes the session.
 */

// --- primitives (3.1) ---------------------------------------------------------------------------------
const sha = (...parts: Buffer[]): Buffer => createHash('sha256').update(Buffer.concat(parts)).digest();
const hmac = (key: Buffer, ...parts: Buffer[]): Buffer => createHmac('sha256', key).update(Buffer.concat(parts)).digest();
function hkdf(ck: Buffer, ikm: Buffer): [Buffer, Buffer] {
  const t = hmac(ck, ikm);
  const o1 = hmac(t, Buffer.from([1]));
  return [o1, hmac(t, o1, Buffer.from([2]))];
}
const nonce = (n: number) => {
  const b = Buffer.alloc(12);
  b.writeBigUInt64LE(BigInt(n), 4);
  return b;
};
function seal(k: Buffer, n: number, ad: Buffer, pt: Buffer): Buffer {
  const c = createCipheriv('chacha20-poly1305', k, nonce(n), { authTagLength: 16 });
  c.setAAD(ad, { plaintextLength: pt.length });
  return Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
}
function open(k: Buffer, n: number, ad: Buffer, ct: Buffer): Buffer {
  const d = createDecipheriv('chacha20-poly1305', k, nonce(n), { authTagLength: 16 });
  d.setAAD(ad, { plaintextLength: ct.length - 16 });
  d.setAuthTag(ct.subarray(ct.length - 16));
  return Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]);
}
interface X25519 {
  priv: KeyObject;
  pub: Buffer;
}
function x25519(): X25519 {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  return { priv: privateKey, pub: Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url') };
}
const dh = (a: X25519, pub: Buffer): Buffer =>
  diffieHellman({ privateKey: a.priv, publicKey: createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: pub.toString('base64url') }, format: 'jwk' }) });

const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};
const frame = (body: Buffer) => Buffer.concat([Buffer.from([body.length >> 8, body.length & 0xff]), body]);

// --- one connection: handshake (3.3-3.5) and records (4) ----------------------------------------------
interface Hello {
  kind: 0 | 1 | 2;
  timestamp: number;
  sessionId?: Buffer;
  received?: number;
  enroll?: { name: string; secret: string };
}

class DocConnection {
  private buf: Buffer = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private sendKey!: Buffer;
  private recvKey!: Buffer;
  private sendN = 0;
  private recvN = 0;
  closed = false;
  private readonly socket: net.Socket;
  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('close', () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('error', () => {});
  }

  static async dial(address: string): Promise<DocConnection> {
    const i = address.lastIndexOf(':');
    const socket = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    onTestFinished(() => {
      socket.destroy();
    });
    return new DocConnection(socket);
  }

  /** The next frame body (2.1), or undefined once the socket closed. */
  async readFrame(ms = 10_000): Promise<Buffer | undefined> {
    const end = Date.now() + ms;
    for (;;) {
      if (this.buf.length >= 2) {
        const len = this.buf.readUInt16BE(0);
        if (this.buf.length >= 2 + len) {
          const body = this.buf.subarray(2, 2 + len);
          this.buf = this.buf.subarray(2 + len);
          return body;
        }
      }
      if (this.closed) return undefined;
      if (Date.now() > end) throw new Error('no frame in time');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  /** Noise IK as initiator (3.3); returns the server hello (3.5). */
  async handshake(s: X25519, rs: Buffer, hello: Hello): Promise<{ result: number; sessionId: Buffer; received: number; code?: string }> {
    let h: Buffer = Buffer.from('Noise_IK_25519_ChaChaPoly_SHA256', 'ascii');
    let ck: Buffer = h;
    h = sha(h, Buffer.from('dropwire/1'));
    h = sha(h, rs);
    const e = x25519();
    h = sha(h, e.pub); // e
    let k: Buffer;
    [ck, k] = hkdf(ck, dh(e, rs)); // es
    const encS = seal(k, 0, h, s.pub); // s
    h = sha(h, encS);
    [ck, k] = hkdf(ck, dh(s, rs)); // ss
    // 3.4: version, kind, timestamp, session id, received, [name, secret]
    const parts = [Buffer.from([1, hello.kind]), u64(hello.timestamp), hello.sessionId ?? Buffer.alloc(16), u64(hello.received ?? 0)];
    if (hello.enroll) {
      const name = Buffer.from(hello.enroll.name, 'utf8');
      const secret = Buffer.from(hello.enroll.secret, 'utf8');
      parts.push(Buffer.from([name.length]), name, Buffer.from([secret.length]), secret);
    }
    const encHello = seal(k, 0, h, Buffer.concat(parts));
    h = sha(h, encHello);
    // 1.2 and 3.3: the magic and message 1 in one write.
    this.socket.write(Buffer.concat([Buffer.from([0x44, 0x57, 0x00, 0x01]), frame(Buffer.concat([e.pub, encS, encHello]))]));

    const m2 = await this.readFrame();
    if (!m2) throw new Error('the relay closed during the handshake');
    const re = m2.subarray(0, 32);
    h = sha(h, re); // e
    [ck, k] = hkdf(ck, dh(e, re)); // ee
    [ck, k] = hkdf(ck, dh(s, re)); // se
    const sh = open(k, 0, h, m2.subarray(32));
    [this.sendKey, this.recvKey] = hkdf(ck, Buffer.alloc(0)); // Split: the initiator sends with k1
    const result = sh[1]!;
    return {
      result,
      sessionId: Buffer.from(sh.subarray(2, 18)),
      received: Number(sh.readBigUInt64BE(18)),
      ...(result === 3 ? { code: sh.subarray(27, 27 + sh[26]!).toString('ascii') } : {}),
    };
  }

  /** 4.1, 4.2: one record. */
  sendRecord(type: number, payload: Buffer): void {
    this.socket.write(frame(seal(this.sendKey, this.sendN++, Buffer.alloc(0), Buffer.concat([Buffer.from([type]), payload]))));
  }

  async readRecord(ms?: number): Promise<{ type: number; payload: Buffer } | undefined> {
    const f = await this.readFrame(ms);
    if (!f) return undefined;
    const pt = open(this.recvKey, this.recvN++, Buffer.alloc(0), f);
    return { type: pt[0]!, payload: pt.subarray(1) };
  }

  destroy(): void {
    this.socket.destroy();
  }
}

// --- the session (5) and messages (6, 7) ----------------------------------------------------------------
const T = { HELLO: 1, FILE: 2, CHUNK: 3, RECEIVED: 4, RESULT: 5, CONFIRM: 6 } as const;
const R = { DATA: 1, ACK: 2, PING: 3, PONG: 4, CLOSE: 5 } as const;

function message(type: number, header: object): Buffer {
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const p = Buffer.alloc(7);
  p[0] = type;
  p.writeUInt16BE(h.length, 1);
  p.writeUInt32BE(0, 3);
  return Buffer.concat([p, h]);
}

class DocAgent {
  conn!: DocConnection;
  sessionId: Buffer = Buffer.alloc(16);
  /** Bytes of the relay's stream delivered (5.1), and of ours written. */
  received = 0;
  sent = 0;
  private stream: Buffer = Buffer.alloc(0);
  private file: { id: string; size: number; sha256: string; bytes: Buffer[] } | undefined;
  readonly files: { id: string; body: Buffer }[] = [];
  readonly confirmed: string[] = [];
  lastPong: number | undefined;

  write(bytes: Buffer): void {
    this.sent += bytes.length;
    this.conn.sendRecord(R.DATA, bytes);
  }

  /** Reads records until `until()` holds, handling DATA (messages), PONG and ACK. */
  async pump(until: () => boolean, ms = 20_000): Promise<void> {
    const end = Date.now() + ms;
    while (!until()) {
      if (Date.now() > end) throw new Error('timed out');
      const r = await this.conn.readRecord(end - Date.now());
      if (!r) throw new Error('connection closed');
      if (r.type === R.DATA) {
        this.received += r.payload.length;
        this.stream = Buffer.concat([this.stream, r.payload]);
        this.onStream();
        this.conn.sendRecord(R.ACK, u64(this.received)); // 5.4
      } else if (r.type === R.PONG) this.lastPong = Number(r.payload.readBigUInt64BE(0));
      else if (r.type === R.CLOSE) throw new Error(`relay closed: ${r.payload.subarray(1).toString()}`);
    }
  }

  private onStream(): void {
    for (;;) {
      if (this.stream.length < 7) return;
      const type = this.stream[0]!;
      const hl = this.stream.readUInt16BE(1);
      const bl = this.stream.readUInt32BE(3);
      if (this.stream.length < 7 + hl + bl) return;
      const header = JSON.parse(this.stream.subarray(7, 7 + hl).toString('utf8')) as Record<string, unknown>;
      const body = Buffer.from(this.stream.subarray(7 + hl, 7 + hl + bl));
      this.stream = this.stream.subarray(7 + hl + bl);
      if (type === T.FILE) {
        this.file = { id: header.id as string, size: header.size as number, sha256: header.sha256 as string, bytes: [] };
        this.maybeComplete();
      } else if (type === T.CHUNK && this.file && this.file.id === header.id) {
        this.file.bytes.push(body);
        this.maybeComplete();
      } else if (type === T.CONFIRM) this.confirmed.push(...(header.ids as string[]));
    }
  }

  /** 7.12: a complete file with a matching SHA-256 is "on disk": RECEIVED, then its RESULT. */
  private maybeComplete(): void {
    const f = this.file!;
    const body = Buffer.concat(f.bytes);
    if (body.length < f.size) return;
    expect(sha256(body)).toBe(f.sha256);
    this.files.push({ id: f.id, body });
    this.file = undefined;
    this.write(message(T.RECEIVED, { id: f.id }));
    this.write(message(T.RESULT, { id: f.id, status: 'handled', detail: { by: 'doc-agent' } }));
  }
}

describe('an agent written from docs/PROTOCOL.md alone (issue 11.20)', () => {
  it('enrolls with the token, receives and answers a file, gets PONGs, and resumes after a dropped socket', async () => {
    const s = await setup();
    const token = await cliOk(['relay', 'device', 'add', 'doc-agent', '--data', s.data]);
    // 3.11: "dw1." + base64url(JSON).
    expect(token.startsWith('dw1.')).toBe(true);
    const t = JSON.parse(Buffer.from(token.slice(4), 'base64url').toString('utf8')) as { r: string | string[]; k: string; n: string; s: string; e: number };
    const address = typeof t.r === 'string' ? t.r : t.r[0]!;
    const rs = Buffer.from(t.k, 'hex');
    const me = x25519();
    let ts = Date.now();

    // 3.10 / 3.11: ENROLL, then close; the device is enrolled.
    const enrollConn = await DocConnection.dial(address);
    const enrolled = await enrollConn.handshake(me, rs, { kind: 2, timestamp: ts++, enroll: { name: t.n, secret: t.s } });
    expect(enrolled).toMatchObject({ result: 0, received: 0 });
    enrollConn.destroy();
    // A second ENROLL with the same token from another key is refused with the precise code (3.10).
    const thief = await DocConnection.dial(address);
    expect(await thief.handshake(x25519(), rs, { kind: 2, timestamp: Date.now(), enroll: { name: t.n, secret: t.s } })).toMatchObject({ result: 3, code: 'DW_ENROLL_USED' });
    thief.destroy();

    // 5.2, 7.11: a NEW session, then HELLO.
    const agent = new DocAgent();
    agent.conn = await DocConnection.dial(address);
    const hello = await agent.conn.handshake(me, rs, { kind: 0, timestamp: ts++ });
    expect(hello.result).toBe(0);
    agent.sessionId = hello.sessionId;
    agent.write(message(T.HELLO, { agent: 'doc-agent/1', partial: [] }));
    await waitFor(async () => ((await s.api.get('/v1/devices/doc-agent')).json.online === true ? true : undefined), 10_000, 'online');

    // 7.12: a file arrives, is received and handled; the relay confirms the RESULT (7.8).
    const body1 = Buffer.from('<order n="1"/>\n'.repeat(5000));
    const m1 = await s.api.send('doc-agent', 'order-1.xml', body1);
    expect(m1.status).toBe(202);
    await agent.pump(() => agent.confirmed.includes(m1.json.id as string));
    expect(agent.files[0]!.body.equals(body1)).toBe(true);
    const done1 = await s.api.until(m1.json.id as string, ['handled']);
    expect(done1.result).toMatchObject({ by: 'doc-agent' });

    // 4.5: PING carries our count of the relay's stream; the PONG carries the relay's count of ours.
    agent.conn.sendRecord(R.PING, u64(agent.received));
    await agent.pump(() => agent.lastPong !== undefined);
    expect(agent.lastPong).toBe(agent.sent);

    // 5.5: the socket drops; a RESUME with our count continues the same session.
    agent.conn.destroy();
    await new Promise((r) => setTimeout(r, 200));
    agent.conn = await DocConnection.dial(address);
    const resumed = await agent.conn.handshake(me, rs, { kind: 1, timestamp: ts++, sessionId: agent.sessionId, received: agent.received });
    expect(resumed.result).toBe(1); // RESUMED
    expect(resumed.sessionId.equals(agent.sessionId)).toBe(true);
    expect(resumed.received).toBe(agent.sent);
    const body2 = Buffer.from('second order, after the resume\n');
    const m2 = await s.api.send('doc-agent', 'order-2.xml', body2);
    await agent.pump(() => agent.confirmed.includes(m2.json.id as string));
    expect(agent.files.map((f) => f.id)).toEqual([m1.json.id, m2.json.id]);
    expect((await s.api.until(m2.json.id as string, ['handled'])).status).toBe('handled');
    agent.conn.destroy();
  });
});
