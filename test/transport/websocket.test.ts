/**
 * The WebSocket transport over real loopback sockets: the same links, sessions and resumption as TCP, the
 * stream split across messages any way, text and wrong paths refused; wss with a test CA; and the pure
 * parts of reaching the relay (address lists, the order tried, NO_PROXY).
 */
import http from 'node:http';
import net from 'node:net';
import https from 'node:https';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { WebSocket } from 'ws';
import { Connection } from '../../src/protocol/connection.js';
import { generateKeyPair } from '../../src/protocol/crypto.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import type { ProtocolError } from '../../src/protocol/errors.js';
import { HelloKind } from '../../src/protocol/hello.js';
import { Session } from '../../src/protocol/session.js';
import { candidates, parseRelayAddress, parseRelayList } from '../../src/transport/address.js';
import { Dialer } from '../../src/transport/dialer.js';
import { random } from '../../src/transport/identity.js';
import type { Link } from '../../src/transport/link.js';
import { Listener } from '../../src/transport/listener.js';
import { bypassed, proxyFor } from '../../src/transport/proxy.js';
import { RelayReach } from '../../src/transport/reach.js';
import { CONNECT_PATH, MAX_WS_MESSAGE, WebSocketAcceptor, WS_UNSUPPORTED_DATA } from '../../src/transport/websocket.js';
import { tempDir } from '../helpers/cli.js';
import { freePort, hasOpenssl, makeCa, serverCert } from '../helpers/reach.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(5);
  }
}

interface WsRelay {
  listener: Listener;
  url: string;
  key: Uint8Array;
  closes: string[];
  data: Uint8Array[];
  sessions: Map<string, Session>;
  established: { resumed: boolean; transport: string }[];
}

/** A responder on an HTTP(S) server's /v1/connect that keeps sessions by id, so agents can resume. */
async function wsRelay(o: { tls?: { cert: Buffer; key: Buffer } } = {}): Promise<WsRelay> {
  const keys = generateKeyPair(nodeCrypto, random);
  const r: WsRelay = { listener: undefined as unknown as Listener, url: '', key: keys.publicKey, closes: [], data: [], sessions: new Map(), established: [] };
  r.listener = new Listener({
    host: '127.0.0.1',
    port: 0,
    compactAfterBurst: false,
    connection: () => Connection.responder({ crypto: nodeCrypto, random, staticKey: keys, now: Date.now(), timers: {} }),
    events: {
      onOutput(out, link) {
        if (out.type === 'hello') {
          const id = Buffer.from(out.hello.sessionId).toString('hex');
          let s = out.hello.kind === HelloKind.RESUME ? r.sessions.get(id) : undefined;
          if (!s) {
            s = new Session({ id: random(16) });
            r.sessions.set(Buffer.from(s.id).toString('hex'), s);
          }
          link.connection.accept(s, Date.now());
          link.pump();
        } else if (out.type === 'established') r.established.push({ resumed: out.resumed, transport: link.transport });
        else if (out.type === 'data') r.data.push(out.bytes.slice());
      },
      onClose(err: ProtocolError) {
        r.closes.push(err.code);
      },
    },
  });
  const acceptor = new WebSocketAcceptor((stream) => r.listener.adopt(stream, o.tls ? 'wss' : 'ws'));
  const handler: http.RequestListener = (_req, res) => res.writeHead(404).end();
  const server = o.tls ? https.createServer(o.tls, handler) : http.createServer(handler);
  server.on('upgrade', (req, socket, head) => acceptor.upgrade(req, socket as import('node:net').Socket, head));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as import('node:net').AddressInfo).port;
  r.url = `${o.tls ? 'wss' : 'ws'}://127.0.0.1:${port}${CONNECT_PATH}`;
  onTestFinished(async () => {
    acceptor.close();
    await r.listener.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  return r;
}

function wsAgent(reach: RelayReach, relayKey: Uint8Array) {
  const session = new Session();
  const keys = generateKeyPair(nodeCrypto, random);
  const a = { session, links: [] as Link[], data: [] as Uint8Array[], resumed: 0, dialer: undefined as unknown as Dialer, opened: [] as string[] };
  let ts = 0;
  a.dialer = new Dialer({
    host: '',
    port: 0,
    backoff: { initial: 20, max: 100 },
    connect: (signal) => reach.open(signal),
    connection: () => Connection.initiator({ crypto: nodeCrypto, random, staticKey: keys, remoteStatic: relayKey, session, timestamp: ++ts, now: Date.now(), timers: {} }),
    events: {
      onOpen(opened) {
        a.opened.push(`${opened.transport} ${opened.address}`);
      },
      onOutput(out, link) {
        if (out.type === 'established') {
          a.links.push(link);
          if (out.resumed) a.resumed++;
        } else if (out.type === 'data') a.data.push(out.bytes.slice());
      },
      onClose() {},
    },
  });
  a.dialer.start();
  onTestFinished(() => a.dialer.close());
  return a;
}

describe('WebSocket transport', () => {
  it('carries the session both ways over ws://…/v1/connect, and resumes it on a new WebSocket after the old one dies', async () => {
    const r = await wsRelay();
    const a = wsAgent(new RelayReach({ relays: [r.url], mode: 'wss' }), r.key);
    await until(() => a.links.length === 1 && r.sessions.size === 1);
    expect(a.links[0]!.transport).toBe('ws');
    expect(r.established).toEqual([{ resumed: false, transport: 'ws' }]);
    const big = new Uint8Array(3_000_000).map((_, i) => (i * 7) & 0xff);
    a.session.write(big);
    a.links[0]!.pump();
    const relaySession = [...r.sessions.values()][0]!;
    relaySession.write(Uint8Array.of(1, 2, 3));
    [...r.listener.links][0]!.pump();
    await until(() => Buffer.concat(r.data).length >= 1_000_000);
    // Kill the WebSocket mid-stream (no close handshake): the session resumes on a new one, bytes exact.
    [...r.listener.links][0]!.socket.destroy();
    await until(() => Buffer.concat(r.data).length === big.length && Buffer.concat(a.data).length === 3, 15_000);
    expect(Buffer.concat(r.data).equals(big)).toBe(true);
    expect(a.resumed).toBeGreaterThanOrEqual(1);
    expect(r.sessions.size).toBe(1);
    expect(r.established.slice(1).every((e) => e.resumed && e.transport === 'ws')).toBe(true);
  });

  it('accepts the stream split into one-byte messages (message boundaries carry no meaning)', async () => {
    const r = await wsRelay();
    const ws = new WebSocket(r.url, { perMessageDeflate: false });
    onTestFinished(() => ws.terminate());
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const keys = generateKeyPair(nodeCrypto, random);
    const conn = Connection.initiator({ crypto: nodeCrypto, random, staticKey: keys, remoteStatic: r.key, session: new Session(), timestamp: 1, now: Date.now(), timers: {} });
    let established = false;
    const flush = () => {
      for (let out = conn.poll(Date.now(), true); out; out = conn.poll(Date.now(), true)) {
        if (out.type === 'write') for (const b of out.bytes) ws.send(Uint8Array.of(b), { binary: true });
        else if (out.type === 'established') established = true;
      }
    };
    ws.on('message', (d: Buffer) => {
      // And the answer fed back one byte at a time.
      for (const b of d) conn.receive(Uint8Array.of(b), Date.now());
      flush();
    });
    flush();
    await until(() => established && r.established.length === 1);
    expect(r.closes).toEqual([]);
  });

  it('PROTOCOL 11.7: the magic in the frame 82 83 00 00 00 00 44 57 00, the rest of message 1 in a second frame, read as one stream', async () => {
    const r = await wsRelay();
    const u = new URL(r.url);
    const sock = net.connect({ host: u.hostname, port: Number(u.port) });
    onTestFinished(() => void sock.destroy());
    await new Promise((resolve) => sock.once('connect', resolve));
    sock.write(`GET ${CONNECT_PATH} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    const head = await new Promise<string>((resolve) => sock.once('data', (d: Buffer) => resolve(d.toString('latin1'))));
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    expect(head).toContain('Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
    const conn = Connection.initiator({ crypto: nodeCrypto, random, staticKey: generateKeyPair(nodeCrypto, random), remoteStatic: r.key, session: new Session(), timestamp: 1, now: Date.now(), timers: {} });
    const out = conn.poll(Date.now(), true);
    expect(out?.type).toBe('write');
    const bytes = Buffer.from((out as { bytes: Uint8Array }).bytes);
    expect(bytes.length).toBe(136); // magic + frame(msg1), as in Appendix A
    sock.write(Buffer.from('828300000000445700', 'hex'));
    const rest = bytes.subarray(3);
    sock.write(Buffer.concat([Buffer.from([0x82, 0x80 | 126, rest.length >> 8, rest.length & 0xff, 0, 0, 0, 0]), rest]));
    await until(() => r.established.length === 1);
    expect(r.closes).toEqual([]);
  });

  it('refuses text messages (close 1003), messages over MAX_WS_MESSAGE (1009) and upgrades on other paths (404)', async () => {
    const r = await wsRelay();
    const ws = new WebSocket(r.url, { perMessageDeflate: false });
    onTestFinished(() => ws.terminate());
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const closed = new Promise<number>((resolve) => ws.once('close', (code: number) => resolve(code)));
    ws.send('DW\u0000\u0001'); // the magic, but as text
    expect(await closed).toBe(WS_UNSUPPORTED_DATA);
    await until(() => r.closes.length === 1);
    // A message over MAX_WS_MESSAGE: 1009, the connection ends.
    const big = new WebSocket(r.url, { perMessageDeflate: false });
    onTestFinished(() => big.terminate());
    await new Promise((resolve, reject) => big.once('open', resolve).once('error', reject));
    const bigClosed = new Promise<number>((resolve) => big.once('close', (code: number) => resolve(code)));
    big.send(new Uint8Array(MAX_WS_MESSAGE + 1));
    expect(await bigClosed).toBe(1009);
    await until(() => r.closes.length === 2);
    const wrong = r.url.replace(CONNECT_PATH, '/v1/other');
    await expect(new RelayReach({ relays: [wrong], mode: 'wss' }).open()).rejects.toMatchObject({ code: 'DW_BAD_WEBSOCKET' });
  });

  it.skipIf(!hasOpenssl())('wss: trusted with --ca (a test CA), refused with a coded error without it', async () => {
    const dir = tempDir();
    const ca = makeCa(dir);
    const cert = serverCert(ca);
    const r = await wsRelay({ tls: { cert: fs.readFileSync(cert.cert), key: fs.readFileSync(cert.key) } });
    await expect(new RelayReach({ relays: [r.url], mode: 'wss' }).open()).rejects.toMatchObject({ code: 'DW_TLS_UNTRUSTED' });
    const a = wsAgent(new RelayReach({ relays: [r.url], mode: 'wss', caFile: ca.caCert }), r.key);
    await until(() => a.links.length === 1);
    expect(a.links[0]!.transport).toBe('wss');
    expect(r.established[0]!.transport).toBe('wss');
  });

  it('falls over to the next address when one is closed, and remembers the one that worked', async () => {
    const r = await wsRelay();
    const closed = await freePort();
    const memory = path.join(tempDir(), 'route.json');
    const reach = new RelayReach({ relays: [`127.0.0.1:${closed}`, r.url], mode: 'auto', memoryFile: memory });
    const fallbacks: string[] = [];
    const reach2 = new RelayReach({ relays: [`127.0.0.1:${closed}`, r.url], mode: 'auto', memoryFile: memory, onFallback: (from, to, e) => fallbacks.push(`${from.kind}->${to.kind} ${e.code}`) });
    expect(reach.plan.map((a) => a.kind)).toEqual(['tcp', 'ws']);
    const a = wsAgent(reach, r.key);
    await until(() => a.links.length === 1);
    expect(a.opened).toEqual([`ws ${r.url}`]);
    reach.worked(r.url); // what the agent does on `established`
    expect(JSON.parse(fs.readFileSync(memory, 'utf8')).address).toBe(r.url);
    // A new process reads the memory: the WebSocket first, TCP not tried.
    const fresh = new RelayReach({ relays: [`127.0.0.1:${closed}`, r.url], mode: 'auto', memoryFile: memory });
    expect(fresh.plan[0]!.text).toBe(r.url);
    // Without the memory, the closed TCP port is tried and reported before the WebSocket.
    fs.rmSync(memory);
    const opened = await reach2.open();
    opened.stream.destroy();
    expect(fallbacks).toEqual(['tcp->ws DW_RELAY_UNREACHABLE']);
  });
});

describe('relay addresses', () => {
  it('parses HOST:PORT, ws:// and wss:// (default ports), lists, and refuses anything else with DW_BAD_ADDRESS', () => {
    expect(parseRelayAddress('relay.example.com:7390')).toMatchObject({ kind: 'tcp', host: 'relay.example.com', port: 7390 });
    expect(parseRelayAddress('[::1]:7390')).toMatchObject({ kind: 'tcp', host: '::1', port: 7390, text: '[::1]:7390' });
    expect(parseRelayAddress('wss://relay.example.com/v1/connect')).toMatchObject({ kind: 'wss', port: 443, url: 'wss://relay.example.com/v1/connect' });
    expect(parseRelayAddress('ws://10.0.0.1:8080/v1/connect')).toMatchObject({ kind: 'ws', port: 8080 });
    expect(parseRelayList('a:1, wss://b/v1/connect,,c:3').map((a) => a.text)).toEqual(['a:1', 'wss://b/v1/connect', 'c:3']);
    for (const bad of ['relay.example.com', 'https://relay/v1/connect', 'wss://user:pw@relay/v1/connect', 'a:99999', '']) {
      expect(() => parseRelayList(bad)).toThrow(expect.objectContaining({ code: 'DW_BAD_ADDRESS' }));
    }
  });

  it('orders candidates: shuffled hosts, per host TCP then WSS (443 unless the list names a URL), by mode', () => {
    const list = parseRelayList('a:7390,b:7390,wss://b:8443/v1/connect');
    const seq = [0.9, 0.1, 0.5];
    let i = 0;
    const random = () => seq[i++ % seq.length]!;
    const auto = candidates(list, 'auto', { random }).map((a) => a.text);
    // Every TCP address is followed by its host's WebSocket URL.
    expect(auto.length).toBe(4);
    for (const host of ['a', 'b']) {
      const t = auto.indexOf(`${host}:7390`);
      expect(auto[t + 1]).toBe(host === 'a' ? 'wss://a/v1/connect' : 'wss://b:8443/v1/connect');
    }
    expect(candidates(list, 'tcp').map((a) => a.text).sort()).toEqual(['a:7390', 'b:7390']);
    expect(candidates(list, 'wss').map((a) => a.text).sort()).toEqual(['wss://a/v1/connect', 'wss://b:8443/v1/connect']);
    expect(candidates(list, 'auto', { preferred: 'wss://b:8443/v1/connect' })[0]!.text).toBe('wss://b:8443/v1/connect');
    expect(() => candidates(parseRelayList('wss://a/v1/connect'), 'tcp')).toThrow(expect.objectContaining({ code: 'DW_BAD_ADDRESS' }));
  });

  it('picks the proxy from --proxy or HTTPS_PROXY, and NO_PROXY bypasses it', () => {
    const u = new URL('wss://relay.example.com/v1/connect');
    expect(proxyFor(u, undefined, {})).toBeUndefined();
    expect(proxyFor(u, undefined, { https_proxy: 'http://p:3128' })?.host).toBe('p:3128');
    expect(proxyFor(u, undefined, { HTTPS_PROXY: 'http://p:3128', NO_PROXY: '.example.com' })).toBeUndefined();
    expect(proxyFor(u, 'http://u:pw@q:8080', { NO_PROXY: '*' })?.username).toBe('u'); // explicit wins
    expect(bypassed(new URL('wss://relay.example.com:8443/'), 'relay.example.com:443')).toBe(false);
    expect(bypassed(new URL('wss://127.0.0.1/'), 'localhost,127.0.0.1')).toBe(true);
    expect(() => proxyFor(u, 'socks5://p:1080', {})).toThrow(expect.objectContaining({ code: 'DW_BAD_PROXY' }));
  });
});
