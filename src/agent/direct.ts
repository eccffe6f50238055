import { fromHex } from '../protocol/bytes.js';
import { Connection } from '../protocol/connection.js';
import { nodeCrypto } from '../protocol/crypto-node.js';
import type { ProtocolError } from '../protocol/errors.js';
import { encodeMessage, MessageDecoder, MessageType, type Headers } from '../protocol/messages.js';
import { Session } from '../protocol/session.js';
import { parseTransportMode } from '../transport/address.js';
import { Dialer } from '../transport/dialer.js';
import { loadOrCreateKeyPair, random } from '../transport/identity.js';
import type { Link } from '../transport/link.js';
import { RelayReach } from '../transport/reach.js';
import { DropwireError } from '../shared/errors.js';
import { loadAgentConfig, paths } from './config.js';
import { Journal } from './journal.js';
import { Sender } from './send.js';

/** How long `dropwire send` without an agent tries to reach the relay before giving up. */
export const DIRECT_CONNECT_MS = 30_000;

/**
 * `dropwire send` when no agent runs on this host: its own session with the device key, used only to send
 * (it sends no HELLO, so the relay delivers nothing to it: PROTOCOL 7.11, 7.14). Cuts are resumed like the
 * agent's; uploads are offered again on a new stream.
 */
export class DirectSession {
  readonly sender: Sender;
  readonly name: string;
  private readonly session = new Session({});
  private readonly dialer: Dialer;
  private readonly journal: Journal;
  private decoder = new MessageDecoder();
  private link: Link | undefined;
  private streaming = false;
  private drainWaiters: (() => void)[] = [];
  private readonly queries = new Map<number, (h: Headers[typeof MessageType.PRESENCE]) => void>();
  private nextQid = 1;
  private ready: Promise<void>;
  private readyResolve!: () => void;
  private lastError: ProtocolError | undefined;
  private pumpScheduled = false;

  constructor(home: string) {
    const p = paths(home);
    const config = loadAgentConfig(home);
    this.name = config.name;
    const keys = loadOrCreateKeyPair(p.key, nodeCrypto);
    this.journal = new Journal(p.journal);
    this.ready = new Promise((r) => (this.readyResolve = r));
    const reach = new RelayReach({ relays: config.relays, mode: parseTransportMode(config.transport), proxy: config.proxy, caFile: config.ca, memoryFile: p.route });
    this.dialer = new Dialer({
      host: '',
      port: 0,
      connect: (signal) => reach.open(signal),
      connection: () =>
        Connection.initiator({ crypto: nodeCrypto, random, staticKey: keys, remoteStatic: fromHex(config.relayKey), session: this.session, timestamp: this.journal.nextTimestamp(Date.now()), now: Date.now() }),
      events: {
        onOutput: (out, link) => {
          switch (out.type) {
            case 'established':
              this.link = link;
              if (!out.resumed) {
                this.decoder = new MessageDecoder();
                this.streaming = true;
                this.sender.newStream();
              }
              this.readyResolve();
              return;
            case 'data':
              this.decoder.push(out.bytes);
              for (let m = this.decoder.next(); m; m = this.decoder.next()) {
                if (m.type === MessageType.PRESENCE) {
                  this.queries.get(m.header.qid)?.(m.header);
                  this.queries.delete(m.header.qid);
                } else this.sender.onMessage(m);
              }
              return;
            case 'lost':
              this.streaming = false;
              for (const w of this.drainWaiters.splice(0)) w();
              return;
            case 'drain':
              for (const w of this.drainWaiters.splice(0)) w();
              return;
            default:
              return;
          }
        },
        onClose: (err, link) => {
          if (this.link === link) this.link = undefined;
          this.lastError = err;
          if (err.code === 'DW_SESSION_LOST' && this.session.closed) this.session.reset();
          if (err.code === 'DW_PEER_CLOSED' && err.cause === 'DW_BAD_MESSAGE') this.sender.relayRefusedMessages();
        },
      },
    });
    const self = { ready: () => this.streaming };
    this.sender = new Sender({
      write: (type, header, body) => {
        let ok = true;
        for (const part of encodeMessage(type, header, body)) ok = this.session.write(part);
        this.schedulePump();
        return ok;
      },
      drained: () => new Promise((r) => this.drainWaiters.push(r)),
      get ready() {
        return self.ready();
      },
    });
  }

  /** Dials the relay; DW_RELAY_UNREACHABLE when no session is up within `timeoutMs`. */
  async connect(timeoutMs = DIRECT_CONNECT_MS): Promise<void> {
    this.dialer.start();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const why = this.lastError ? `${this.lastError.code}${typeof this.lastError.cause === 'string' ? ` (${this.lastError.cause})` : ''}` : 'no answer';
        reject(new DropwireError('DW_RELAY_UNREACHABLE', `could not reach the relay within ${timeoutMs / 1000} s: ${why}`));
      }, timeoutMs);
    });
    try {
      await Promise.race([this.ready, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  presence(device: string, timeoutMs = 10_000): Promise<Headers[typeof MessageType.PRESENCE]> {
    const qid = this.nextQid++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new DropwireError('DW_TIMEOUT', 'the relay did not answer')), timeoutMs);
      this.queries.set(qid, (h) => {
        clearTimeout(t);
        resolve(h);
      });
      for (const part of encodeMessage(MessageType.PRESENCE_QUERY, { qid, device })) this.session.write(part);
      this.schedulePump();
    });
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.link?.pump();
    });
  }

  /** Waits (bounded) until the relay has acknowledged what was written, then closes. */
  async close(): Promise<void> {
    this.sender.close();
    this.link?.close();
    this.dialer.close();
    this.journal.close();
  }
}
