import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { equal, toHex } from '../protocol/bytes.js';
import { Connection, type Output } from '../protocol/connection.js';
import type { CryptoBackend, KeyPair } from '../protocol/crypto.js';
import { ProtocolCode } from '../protocol/errors.js';
import { HelloKind, isFresh, type ClientHello } from '../protocol/hello.js';
import type { ConnectionTimers, SessionLimits } from '../protocol/limits.js';
import { exportSession, restoreSession, type SessionHandoverState } from '../protocol/handover.js';
import { agentVersionOf, CAP_CUT_THROUGH, CAP_REDIRECT, encodeMessage, encodeMessageParts, MessageDecoder, MessageType, type Headers, type Message } from '../protocol/messages.js';
import { Session } from '../protocol/session.js';
import type { Link } from '../transport/link.js';
import { random } from '../transport/identity.js';
import type { Logger } from '../shared/log.js';
import { diskBodyReader, type BodyReader } from './body-storage.js';
import { CutThrough } from './cut-through.js';
import type { EventFeed } from './events.js';
import { FINAL_STATUSES, type MessageRecord, type MessageStatus, type Store } from './store/types.js';

/** Bytes of a file per CHUNK message. */
export const CHUNK_SIZE = 256 * 1024;
/** How long a disconnected session is kept for a resume. */
export const SESSION_LINGER_MS = 5 * 60_000;
const PAGE = 64;
/** How long a CONFIRM may wait for other records to go out with, and how many ids one carries at most. */
const CONFIRM_DELAY_MS = 20;
const CONFIRM_MAX_IDS = 256;

export interface StatusEvent {
  id: string;
  to: string;
  from: string;
  status: MessageStatus;
  at: number;
  detail?: Record<string, unknown>;
}

/**
 * Where what an agent sends as a sender goes (PROTOCOL 7.14, 7.15): uploads and WATCH, handled beside the
 * hub (src/relay/uploads.ts). `reply` writes to that agent's current stream only.
 */
export interface AgentSender {
  /** True when the message was one of the sender's. May throw DW_BAD_MESSAGE (the session is retired). */
  onMessage(device: string, m: Message, reply: PeerReply): boolean;
}
export interface PeerReply {
  send<T extends MessageType>(type: T, header: Parameters<typeof encodeMessage<T>>[1], body?: Uint8Array): boolean;
  /** The stream this reply writes to is still the device's current one. */
  readonly live: boolean;
  /** Resolves once the replay buffer has room again (or the stream ended). */
  drained(): Promise<void>;
}

/** A device counts as offline only after its link has been gone this long (a resume in between is no event). */
export const OFFLINE_GRACE_MS = 1_500;

/**
 * Where a cluster of relay nodes plugs in (src/relay/cluster/); absent on a single relay. The hub asks it
 * before accepting a session and on presence changes, and hands it work for devices it has no session of.
 */
export interface HubCluster {
  /** Makes this node the device's session holder; the node that held it retires its session. */
  claim(device: string): Promise<void>;
  /** This node's session of the device is gone. */
  released(device: string): void;
  /** Stop sending a message to a device whose session is on another node. */
  cancel(device: string, id: string): void;
  /** Records a presence change for the cluster; true when it is an event (once per cluster). */
  presence(device: string, online: boolean): Promise<boolean>;
  onlineElsewhere(device: string): boolean;
  /**
   * PROTOCOL 7.16 step 5-6 at the target: checks a HANDOVER's request and brings the session's state from
   * the node that held it; rejects with a `{ code }` to refuse the handshake.
   */
  takeHandover?(device: string, requestId: string, sessionId: Uint8Array): Promise<SessionHandoverState>;
}

/** What the hub tells about redirects (src/relay/cluster/redirect.ts listens). */
export interface RedirectEvents {
  /** The agent answered REDIRECT_REFUSED (PROTOCOL 7.17). */
  refused: { device: string; rid: string; code: string };
  /** After a HANDOVER, the agent's count arrived: `resent` bytes were on the old wire and go out again. */
  position: { device: string; received: number; resent: number };
}

export interface HubOptions {
  store: Store;
  cluster?: HubCluster;
  /** Told whenever events were appended (status changes, presence). */
  feed?: EventFeed;
  offlineGraceMs?: number;
  keys: KeyPair;
  crypto: CryptoBackend;
  log: Logger;
  now?: () => number;
  timers?: Partial<ConnectionTimers>;
  limits?: Partial<SessionLimits>;
  /** Where large bodies are read from (default: files on this machine). */
  bodies?: BodyReader;
}

/** One enrolled device that has (or recently had) a session. */
interface Peer {
  device: string;
  session: Session;
  link: Link | undefined;
  decoder: MessageDecoder;
  /** Increments with every new stream; a delivery loop of an older stream stops. */
  gen: number;
  /** The agent's HELLO arrived on this stream: delivery may start. */
  ready: boolean;
  /**
   * Files the agent holds part of (its HELLO), by id: where to resume each. This and the other maps and
   * sets of a peer are made when first needed: most idle peers never need them (memory per connection).
   */
  partial: Map<string, number> | undefined;
  /** Messages to send again from an offset (RESTART), before the rest. */
  resend: Map<string, number> | undefined;
  /** Highest seq fully written into the current stream. */
  cursor: number;
  delivering: boolean;
  dirty: boolean;
  drainWaiters: (() => void)[];
  linger: NodeJS.Timeout | undefined;
  onlineSince: number | undefined;
  /** The delivery loop has sent everything the store had: new messages are handed over without a query. */
  caughtUp: boolean;
  handoff: Handoff[];
  pumpScheduled: boolean;
  /** Ids whose RESULT is stored, for the next CONFIRM (sent with other records, or after CONFIRM_DELAY_MS). */
  confirms?: string[];
  /**
   * Messages streamed to this device and not yet final, with their sender: what the agent reports about
   * them is checked and applied without reading the message back from the store.
   */
  sentTo: Map<string, string> | undefined;
  /** The agent listed `redirect` in HELLO `caps` (PROTOCOL 7.3): it may be sent REDIRECT. */
  redirectable?: boolean;
  /** The agent listed `cut-through` in HELLO `caps` (PROTOCOL 7.18): it may be sent a file as it arrives. */
  cutThrough?: boolean;
  /** Files this stream carried whole by cut-through (FILE_END sent): the delivery loop skips them once. */
  cutDone?: Set<string> | undefined;
  /** The upload being delivered as it arrives, if any. */
  cut?: CutThrough | undefined;
  /** Taken over by HANDOVER: how far the old node had put its stream on the wire (for the re-sent count). */
  handedWire?: number;
}

/** A message handed straight to a caught-up delivery loop, with its inline body when the caller has it. */
interface Handoff {
  message: MessageRecord;
  body?: Uint8Array | undefined;
}

/** A peer remembers at most this many streamed, unfinished messages (beyond, reports read the store). */
const SENT_TO_MAX = 4_096;
/** How often a file may fail the host's SHA-256 check before it ends failed (PROTOCOL 7.9). */
const CHECKSUM_TRIES = 3;
/** Stopped (expired, cancelled) message ids remembered by the hub. */
const STOPPED_MAX = 100_000;

/**
 * The relay's live side: decides handshakes (enrollment, known keys, replay guard, resume), keeps one
 * session per device, streams queued messages in order, and applies what agents report.
 * Emits `status` (StatusEvent) and `presence` ({ device, online, at }).
 */
export class Hub extends EventEmitter {
  private readonly o: HubOptions;
  /** Uploads and WATCH from agents (set by the relay's composition). */
  sender: AgentSender | undefined;
  private readonly peers = new Map<string, Peer>();
  private readonly byLink = new Map<Link, Peer>();
  private readonly now: () => number;
  private closed = false;
  /** Sockets of sessions handed out (PROTOCOL 7.16) still delivering their last bytes. */
  private readonly flushing = new Set<Link['socket']>();
  /** A node being drained: new agents are refused (`DW_NODE_DRAINING`), `/healthz` says 503. */
  draining = false;
  /** False while a cluster node is still joining: agents are refused (`DW_NODE_NOT_READY`) until it is ready. */
  ready = true;
  /** Bytes of each file written into a stream so far, until it is received (to report re-sends). */
  private readonly progress = new Map<string, number>();
  /**
   * Messages expired or cancelled in this process: never streamed again, by any peer, even from a page of
   * `pending` read before the status change committed. Insertion-ordered and bounded (oldest out).
   */
  private readonly stopped = new Set<string>();

  constructor(o: HubOptions) {
    super();
    this.o = o;
    this.now = o.now ?? Date.now;
  }

  /** A responder connection for a new socket. */
  connection(): Connection {
    return Connection.responder({ crypto: this.o.crypto, random, staticKey: this.o.keys, now: this.now(), timers: this.o.timers ?? {} });
  }

  isOnline(device: string): boolean {
    return this.peers.get(device)?.link?.connection.isEstablished === true || this.o.cluster?.onlineElsewhere(device) === true;
  }

  /**
   * Online as the event log tells it: also while a link that just went is within the offline grace time
   * (no `device.offline` yet, and none if it is back in time). The console shows this, so that a page
   * drawn in between agrees with the events that follow.
   */
  reportedOnline(device: string): boolean {
    return this.isOnline(device) || this.offlineTimers.has(device);
  }

  /** How a device is connected to this hub right now (the console shows it); undefined when not here. */
  linkInfo(device: string): { transport: string; remote: string } | undefined {
    const link = this.peers.get(device)?.link;
    return link?.connection.isEstablished ? { transport: link.transport, remote: link.remote } : undefined;
  }

  /** This hub holds a session (live or lingering) of the device. */
  hasSession(device: string): boolean {
    return this.peers.has(device);
  }

  onlineCount(): number {
    let n = 0;
    for (const p of this.peers.values()) if (p.link?.connection.isEstablished) n++;
    return n;
  }

  /**
   * New work for `device`: a message was stored for it (handed straight to a caught-up delivery loop,
   * with its inline body when the caller has it in memory, so that delivery does not read it back).
   */
  notify(device: string, message?: MessageRecord, body?: Uint8Array): void {
    const p = this.peers.get(device);
    if (!p) return;
    const live = p.link?.connection.isEstablished === true;
    if (message && live && p.caughtUp && message.seq > p.cursor) p.handoff.push({ message, body: message.inline ? body : undefined });
    else {
      p.dirty = true;
      p.caughtUp = false;
    }
    this.deliver(p);
  }

  /** Devices with a live connection here, and whether each understands REDIRECT. */
  liveDevices(): { device: string; redirectable: boolean }[] {
    const out: { device: string; redirectable: boolean }[] = [];
    for (const p of this.peers.values()) if (p.link?.connection.isEstablished) out.push({ device: p.device, redirectable: p.redirectable === true });
    return out;
  }

  /**
   * Resolves once the connections of the sessions handed out have delivered their last bytes and closed (or
   * after `ms`): a node that stops before would cut them, and the next node would send those bytes again.
   */
  async flushed(ms: number): Promise<void> {
    for (const until = Date.now() + ms; this.flushing.size > 0 && Date.now() < until; ) await new Promise((r) => setTimeout(r, 20));
  }

  /** The id of the device's session here, if any. */
  sessionId(device: string): Uint8Array | undefined {
    return this.peers.get(device)?.session.id;
  }

  /** PROTOCOL 7.16 step 2: sends REDIRECT on the device's live session; false when it cannot be sent one. */
  redirect(device: string, header: Headers[typeof MessageType.REDIRECT]): boolean {
    const p = this.peers.get(device);
    if (!p || p.redirectable !== true || !p.ready || p.link?.connection.isEstablished !== true) return false;
    this.send(p, MessageType.REDIRECT, header);
    return true;
  }

  /**
   * PROTOCOL 7.16 step 6 at the source: stops writing to the device's session (at a message boundary), ends
   * its connection with CLOSE(DW_REDIRECTED), and gives the session's state for the next node; the session is
   * gone from here. Undefined when this hub holds no session of the device.
   */
  async handOut(device: string): Promise<SessionHandoverState | undefined> {
    const p = this.peers.get(device);
    if (!p || p.session.closed) return undefined;
    const ready = p.ready;
    p.gen++; // the delivery loop stops before its next write
    p.cut?.drop();
    p.ready = false;
    clearTimeout(p.linger);
    const link = p.link;
    p.link = undefined;
    if (link) {
      this.byLink.delete(link);
      // Nothing more is read: `received` is final; unsent bytes stay in the buffer. What is on the wire gets
      // time to arrive (the agent swaps only once it has), rather than being sent again by the next node.
      link.close('DW_REDIRECTED', 15_000);
      const socket = link.socket;
      if (!socket.destroyed) {
        this.flushing.add(socket);
        socket.once('close', () => this.flushing.delete(socket));
      }
    }
    for (const w of p.drainWaiters.splice(0)) w();
    for (let i = 0; i < 400 && p.delivering; i++) await new Promise((r) => setTimeout(r, 5));
    await (this.pendingWrites.get(p) ?? Promise.resolve()).catch(() => {});
    await new Promise((r) => setImmediate(r)); // CONFIRMs of the writes just settled go into the stream
    this.flushConfirms(p);
    if (this.peers.get(device) !== p || p.session.closed) return undefined;
    const partial: Record<string, number> = Object.fromEntries(p.partial ?? []);
    // The file in flight continues from what was written of it (PROTOCOL 7.16: no byte sent twice).
    for (const id of p.sentTo?.keys() ?? []) {
      const written = this.progress.get(id);
      if (written !== undefined && written > 0) partial[id] = written;
    }
    const state = exportSession(p.session, p.decoder.takePending(), {
      ready,
      cursor: p.cursor,
      partial,
      resend: Object.fromEntries(p.resend ?? []),
      sentTo: Object.fromEntries(p.sentTo ?? []),
      redirectable: p.redirectable === true,
      cutThrough: p.cutThrough === true,
    });
    p.session.close();
    this.forget(p);
    this.o.log.info({ device, session: toHex(state.id).slice(0, 8), unacknowledged: state.bytes.length, received: state.received }, 'session handed out');
    return state;
  }

  /** Drops a device's session and link at once (the device was removed). */
  drop(device: string): void {
    this.retireSession(device, 'DW_DEVICE_REMOVED');
    // Cut on purpose, not a network blip: offline at once (no grace), so that a host enrolling in its place
    // right after is reported online again.
    clearTimeout(this.offlineTimers.get(device));
    this.offlineTimers.delete(device);
    if (this.announced.get(device) === true) this.announce(device, false);
  }

  /** Retires a device's session here (removed, or its agent now has a session on another node). */
  retireSession(device: string, code: string): void {
    const p = this.peers.get(device);
    if (p) this.retire(p, code);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.confirmTimer);
    // The stored outcomes' CONFIRMs go out before the CLOSE (else the agents would report them again).
    for (const p of this.confirmWaiting) {
      this.flushConfirms(p);
      p.link?.pump();
    }
    this.confirmWaiting.clear();
    for (const t of this.offlineTimers.values()) clearTimeout(t);
    for (const p of [...this.peers.values()]) this.retire(p, ProtocolCode.CLOSED);
  }

  // --- link events -----------------------------------------------------------------------------

  onOutput(out: Exclude<Output, { type: 'write' } | { type: 'close' }>, link: Link): void {
    switch (out.type) {
      case 'hello':
        this.decide(link, out.remoteStatic, out.hello).catch((err: unknown) => {
          this.o.log.error({ err, remote: link.remote }, 'handshake decision failed');
          if (!link.connection.isClosed && !link.connection.isEstablished) {
            link.connection.refuse('DW_INTERNAL', this.now());
            link.pump();
          }
        });
        return;
      case 'established': {
        const p = this.byLink.get(link);
        if (!p) return;
        p.onlineSince = this.now();
        if (!out.resumed) this.newStream(p);
        this.emit('session', { device: p.device, resumed: out.resumed });
        this.o.log.info({ device: p.device, resumed: out.resumed, session: toHex(out.sessionId).slice(0, 8), remote: link.remote, transport: link.transport }, out.resumed ? 'session resumed' : 'session started');
        this.presence(p.device, true);
        if (out.resumed) {
          // Delivery paused while the device was away (`sent` means written to a live connection).
          p.dirty = true;
          p.caughtUp = false;
          this.deliver(p);
        }
        return;
      }
      case 'data': {
        const p = this.byLink.get(link);
        if (!p) return;
        p.decoder.push(out.bytes);
        try {
          for (let m = p.decoder.next(); m; m = p.decoder.next()) this.onMessage(p, m);
        } catch (err) {
          this.o.log.warn({ err, device: p.device }, 'bad message from agent; session dropped');
          this.retire(p, (err as { code?: string }).code ?? ProtocolCode.BAD_MESSAGE);
        }
        return;
      }
      case 'lost': {
        const p = this.byLink.get(link);
        if (p) this.o.log.info({ device: p.device, code: out.code }, 'session lost');
        return;
      }
      case 'drain': {
        const p = this.byLink.get(link);
        if (p) for (const w of p.drainWaiters.splice(0)) w();
        return;
      }
      case 'position': {
        const p = this.byLink.get(link);
        if (!p || p.handedWire === undefined) return;
        const resent = Math.max(0, p.handedWire - out.received);
        p.handedWire = undefined;
        this.emit('redirect.position', { device: p.device, received: out.received, resent } satisfies RedirectEvents['position']);
        return;
      }
    }
  }

  onClose(link: Link, code: string): void {
    const p = this.byLink.get(link);
    this.byLink.delete(link);
    if (!p || p.link !== link) return;
    p.link = undefined;
    const at = this.now();
    this.o.store.touchDevice(p.device, at).catch(() => {});
    this.o.log.info({ device: p.device, code }, 'agent disconnected');
    this.presence(p.device, false);
    if (p.session.closed) {
      this.forget(p);
      return;
    }
    clearTimeout(p.linger);
    p.linger = setTimeout(() => {
      if (!p.link) this.retire(p, ProtocolCode.SESSION_LOST);
    }, SESSION_LINGER_MS);
    p.linger.unref();
  }

  // --- presence -------------------------------------------------------------------------------

  private readonly announced = new Map<string, boolean>();
  private readonly offlineTimers = new Map<string, NodeJS.Timeout>();

  /** device.online at once; device.offline only if no link is back within the grace time. */
  private presence(device: string, online: boolean): void {
    clearTimeout(this.offlineTimers.get(device));
    this.offlineTimers.delete(device);
    if (online) {
      if (this.announced.get(device) !== true || this.o.cluster) this.announce(device, true);
      return;
    }
    const t = setTimeout(() => {
      this.offlineTimers.delete(device);
      if (!this.isOnline(device) && this.announced.get(device) === true) this.announce(device, false);
    }, this.o.offlineGraceMs ?? OFFLINE_GRACE_MS);
    t.unref();
    this.offlineTimers.set(device, t);
  }

  private announce(device: string, online: boolean): void {
    this.announced.set(device, online);
    const at = this.now();
    if (this.o.cluster) {
      // In a cluster, Redis decides whether this is an event (not when the agent only moved between nodes).
      this.o.cluster.presence(device, online).then(
        (event) => event && this.presenceEvent(device, online, at),
        (err: unknown) => this.o.log.error({ err, device }, 'could not record presence in the cluster'),
      );
      return;
    }
    this.presenceEvent(device, online, at);
  }

  private presenceEvent(device: string, online: boolean, at: number): void {
    this.o.log.info({ device, online }, online ? 'device online' : 'device offline');
    this.emit('presence', { device, online, at });
    this.o.store
      .appendEvents([{ type: online ? 'device.online' : 'device.offline', device, at, data: { device: { name: device, online, lastSeen: new Date(at).toISOString() } } }])
      .then(() => this.o.feed?.notify())
      .catch((err: unknown) => this.o.log.error({ err, device }, 'could not store a presence event'));
  }

  /** Stops sending a message that expired or was cancelled; the agent drops what it spooled (PROTOCOL 7.10). */
  cancel(device: string, id: string): void {
    if (this.stopped.size >= STOPPED_MAX) this.stopped.delete(this.stopped.values().next().value!);
    this.stopped.add(id);
    const p = this.peers.get(device);
    if (!p) return this.o.cluster?.cancel(device, id); // the device's session is on another node
    if (p.ready) this.send(p, MessageType.CANCEL, { id });
  }

  /**
   * Asks to stop a message for good (a sender's cancel), before its status changes. Granted only while no
   * stream of this process has carried its last byte: then the agent cannot have the whole file, and from
   * here on no byte more of it is written. Refused (`false`) when all of it went out, or when it is `sent`
   * by an earlier process (the host may hold it whole). Synchronous: no delivery step runs in between.
   */
  stop(m: Pick<MessageRecord, 'id' | 'to' | 'size' | 'status'>): boolean {
    if (this.stopped.has(m.id)) return true;
    const written = this.progress.get(m.id);
    if (written === undefined ? m.status !== 'queued' : written >= m.size) return false;
    this.cancel(m.to, m.id);
    return true;
  }

  // --- handshake ------------------------------------------------------------------------------

  private async decide(link: Link, remoteStatic: Uint8Array, hello: ClientHello): Promise<void> {
    const { store, log } = this.o;
    const key = toHex(remoteStatic);
    const refuse = (code: string, why: string) => {
      log.warn({ code, remote: link.remote, key: key.slice(0, 16) }, `handshake refused: ${why}`);
      this.emit('refused', code);
      if (!link.connection.isClosed) {
        link.connection.refuse(code, this.now());
        link.pump();
      }
    };
    if (hello.kind === HelloKind.ENROLL && hello.enroll) {
      const dev = await store.getDevice(hello.enroll.name);
      const secretHash = createHash('sha256').update(hello.enroll.secret).digest('hex');
      if (dev?.publicKey === key) {
        // A retried enrollment of the same key: fine.
      } else if (dev?.publicKey) {
        // PROTOCOL 3.10: the precise refusal tells the operator what to do (a new token).
        return refuse('DW_ENROLL_USED', 'the device is enrolled already: its token was used');
      } else if (!dev || !dev.enrollSecretHash || dev.enrollSecretHash !== secretHash) {
        return refuse('DW_ENROLL_UNKNOWN', 'no such device, or not its current enrollment secret');
      } else if ((dev.enrollExpiresAt ?? 0) < this.now()) {
        return refuse('DW_ENROLL_EXPIRED', 'enrollment secret expired');
      } else {
        try {
          await store.enrollDevice(dev.name, key, this.now());
        } catch (err) {
          return refuse('DW_ENROLL_REFUSED', (err as Error).message);
        }
        log.info({ device: dev.name }, 'device enrolled');
      }
    }
    const device = await store.getDeviceByKey(key);
    if (!device) return refuse('DW_UNKNOWN_DEVICE', 'unknown device key');
    if (!isFresh(hello, device.lastHandshakeTs)) return refuse('DW_HANDSHAKE_REPLAYED', 'handshake timestamp not fresh');
    if (this.draining) return refuse('DW_NODE_DRAINING', 'this node is being drained');
    if (!this.ready) return refuse('DW_NODE_NOT_READY', 'this node is still joining the cluster');
    if (hello.kind === HelloKind.HANDOVER) {
      // PROTOCOL 7.16: the device is claimed for the redirect, once its request is checked (takeHandover).
      await store.touchDevice(device.name, this.now(), hello.timestamp);
      if (link.connection.isClosed || this.closed) return;
      return this.takeHandover(link, device.name, hello, refuse);
    }
    // In a cluster, this node claims the device's session meanwhile (the node holding it retires it).
    await Promise.all([store.touchDevice(device.name, this.now(), hello.timestamp), this.o.cluster?.claim(device.name)]);
    if (link.connection.isClosed || this.closed) return;

    let p = this.peers.get(device.name);
    const resume =
      p !== undefined && hello.kind === HelloKind.RESUME && equal(p.session.id, hello.sessionId) && p.session.canResume(hello.received);
    if (!resume) {
      if (p) this.retire(p, ProtocolCode.SESSION_LOST);
      p = this.newPeer(device.name);
    }
    clearTimeout(p!.linger);
    if (p!.link) this.byLink.delete(p!.link);
    p!.link = link;
    this.byLink.set(link, p!);
    link.connection.accept(p!.session, this.now());
    link.pump();
  }

  /** PROTOCOL 7.16 step 7 at the target: the session continues here at the same counts. */
  private async takeHandover(link: Link, device: string, hello: ClientHello, refuse: (code: string, why: string) => void): Promise<void> {
    const cluster = this.o.cluster;
    if (!cluster?.takeHandover || !hello.requestId) return refuse('DW_REDIRECT_UNKNOWN', 'no such redirect request');
    let state: SessionHandoverState;
    try {
      state = await cluster.takeHandover(device, toHex(hello.requestId), hello.sessionId);
    } catch (err) {
      const code = (err as { code?: string }).code;
      return refuse(code?.startsWith('DW_') ? code : 'DW_INTERNAL', (err as Error).message);
    }
    if (link.connection.isClosed || this.closed) {
      cluster.released(device);
      return;
    }
    const old = this.peers.get(device);
    if (old) this.retire(old, ProtocolCode.SESSION_LOST);
    const p = this.newPeer(device);
    p.session = restoreSession(state, this.o.limits ?? {});
    const st = state.state as { ready?: boolean; cursor?: number; partial?: Record<string, number>; resend?: Record<string, number>; sentTo?: Record<string, string>; redirectable?: boolean; cutThrough?: boolean };
    p.ready = st.ready === true;
    p.cursor = st.cursor ?? 0;
    p.redirectable = st.redirectable === true;
    p.cutThrough = st.cutThrough === true;
    if (st.partial && Object.keys(st.partial).length > 0) p.partial = new Map(Object.entries(st.partial));
    if (st.resend && Object.keys(st.resend).length > 0) p.resend = new Map(Object.entries(st.resend));
    if (st.sentTo && Object.keys(st.sentTo).length > 0) p.sentTo = new Map(Object.entries(st.sentTo));
    if (state.pending.length > 0) p.decoder.push(state.pending);
    p.handedWire = state.wire;
    p.link = link;
    this.byLink.set(link, p);
    link.connection.accept(p.session, this.now());
    link.pump();
  }

  private newPeer(device: string): Peer {
    const p: Peer = {
      device,
      session: new Session({ id: random(16), limits: this.o.limits ?? {} }),
      link: undefined,
      decoder: new MessageDecoder(),
      gen: 0,
      ready: false,
      partial: undefined,
      resend: undefined,
      cursor: 0,
      delivering: false,
      dirty: false,
      drainWaiters: [],
      linger: undefined,
      onlineSince: undefined,
      caughtUp: false,
      handoff: [],
      pumpScheduled: false,
      sentTo: undefined,
    };
    this.peers.set(device, p);
    return p;
  }

  private newStream(p: Peer): void {
    p.gen++;
    p.ready = false;
    p.cursor = 0;
    p.caughtUp = false;
    p.handoff = [];
    p.partial = undefined;
    p.resend = undefined;
    p.cutDone = undefined;
    p.cut?.drop();
    p.decoder = new MessageDecoder();
    for (const w of p.drainWaiters.splice(0)) w();
  }

  private retire(p: Peer, code: string): void {
    p.gen++;
    p.cut?.drop();
    p.ready = false;
    clearTimeout(p.linger);
    const link = p.link;
    p.link = undefined;
    if (link) {
      this.byLink.delete(link);
      link.close(code); // sends CLOSE with the reason before the session goes
    }
    p.session.close();
    for (const w of p.drainWaiters.splice(0)) w();
    this.forget(p);
  }

  /** A durable write only when the version changed: every reconnect sends HELLO, few bring a new version. */
  private async recordAgentVersion(device: string, version: string): Promise<void> {
    const d = await this.o.store.getDevice(device);
    if (d && d.agentVersion !== version) await this.o.store.setAgentVersion(device, version);
  }

  private forget(p: Peer): void {
    if (this.peers.get(p.device) !== p) return;
    this.peers.delete(p.device);
    this.o.cluster?.released(p.device);
  }

  // --- messages from the agent -------------------------------------------------------------------

  private onMessage(p: Peer, m: Message): void {
    switch (m.type) {
      case MessageType.HELLO: {
        for (const { id, have } of m.header.partial) (p.partial ??= new Map()).set(id, have);
        p.redirectable = m.header.caps?.includes(CAP_REDIRECT) === true;
        p.cutThrough = m.header.caps?.includes(CAP_CUT_THROUGH) === true;
        const version = agentVersionOf(m.header.agent); // PROTOCOL 7.3; shown by GET /v1/devices/NAME
        if (version) this.recordAgentVersion(p.device, version).catch(() => {});
        // Outcomes the agent re-sent before HELLO are being stored; deliver after they are.
        this.afterWrites(p, () => {
          p.ready = true;
          p.dirty = true;
          this.deliver(p);
        });
        return;
      }
      case MessageType.RECEIVED:
        this.report(p, m.header.id, 'received', undefined, undefined);
        return;
      case MessageType.RESULT: {
        const { id, status, code, detail } = m.header;
        const result = { ...(detail ?? {}), ...(code ? { code } : {}) };
        this.report(p, id, status, result, () => this.confirm(p, id));
        return;
      }
      case MessageType.PRESENCE_QUERY: {
        const { qid, device } = m.header;
        void this.o.store.getDevice(device).then(
          // PROTOCOL 7.10a: `publicKey` lets the asking agent seal files to that device (12).
          (d) => this.send(p, MessageType.PRESENCE, { qid, device, known: d !== undefined, online: d ? this.isOnline(device) : false, lastSeen: d?.lastSeen ?? null, ...(d?.publicKey ? { publicKey: d.publicKey } : {}) }),
          () => this.send(p, MessageType.PRESENCE, { qid, device, known: false, online: false, lastSeen: null }),
        );
        return;
      }
      case MessageType.REDIRECT_REFUSED:
        this.emit('redirect.refused', { device: p.device, rid: m.header.rid, code: m.header.code } satisfies RedirectEvents['refused']);
        return;
      case MessageType.RESTART:
        this.o.log.warn({ device: p.device, id: m.header.id, code: m.header.code }, 'agent asked for a file again');
        if (m.header.code === 'DW_CHECKSUM' && this.checksumFailed(p, m.header.id)) return;
        (p.resend ??= new Map()).set(m.header.id, m.header.offset);
        p.dirty = true;
        this.deliver(p);
        return;
      default:
        if (this.sender?.onMessage(p.device, m, this.replyTo(p))) return;
        throw Object.assign(new Error(`message type ${m.type} is not for the relay`), { code: ProtocolCode.BAD_MESSAGE });
    }
  }

  /** Files whose bytes failed the host's SHA-256 check, by id: how often (bounded like sentTo). */
  private readonly checksumRestarts = new Map<string, number>();

  /**
   * PROTOCOL 7.9: a file that fails the host's check CHECKSUM_TRIES times (its bytes on the way or on the
   * relay's disk are not what was stored) ends `failed` with DW_CHECKSUM, handled nowhere; the agent is told
   * CANCEL. Before that, it is sent again from the start.
   */
  private checksumFailed(p: Peer, id: string): boolean {
    const n = (this.checksumRestarts.get(id) ?? 0) + 1;
    if (n < CHECKSUM_TRIES) {
      if (this.checksumRestarts.size >= SENT_TO_MAX) this.checksumRestarts.clear();
      this.checksumRestarts.set(id, n);
      return false;
    }
    this.checksumRestarts.delete(id);
    this.o.log.error({ device: p.device, id, tries: n }, 'the host found the file\'s bytes wrong every time; the message failed');
    const result = { code: 'DW_CHECKSUM', reason: `the bytes the host received did not match the file's SHA-256, ${n} times` };
    this.report(p, id, 'failed', result, () => this.send(p, MessageType.CANCEL, { id }));
    return true;
  }

  /** Writes to this peer's current stream only: a later stream (or a retired session) drops the answer. */
  private replyTo(p: Peer): PeerReply {
    const gen = p.gen;
    const live = () => p.gen === gen && !p.session.closed && this.peers.get(p.device) === p;
    return {
      send: (type, header, body) => (live() ? this.send(p, type, header, body) : false),
      get live() {
        return live();
      },
      drained: () => this.drained(p, gen),
    };
  }

  /** Per peer: every status write issued for it has settled (durable or refused) once this settles. */
  private pendingWrites = new Map<Peer, Promise<unknown>>();
  /** Per peer: the status writes issued so far have been handed to the store (in the order they came). */
  private issuedWrites = new Map<Peer, Promise<unknown>>();

  /** Runs `fn` after the status writes already issued for this peer have settled. */
  private afterWrites(p: Peer, fn: () => void): void {
    const last = this.pendingWrites.get(p) ?? Promise.resolve();
    last.then(fn, fn);
  }

  /**
   * Stores what the agent reported, in the order it came. `received` is a lazy write (the store holds it
   * briefly and writes it with the message's outcome when the handler is quick): the reports after it are
   * handed to the store at once, not after it is durable. `then` (a CONFIRM) runs once the change is durable.
   */
  private report(p: Peer, id: string, status: MessageStatus, result: Record<string, unknown> | undefined, then?: () => void): void {
    const { store, log } = this.o;
    const at = this.now();
    const lazy = status === 'received';
    const from = p.sentTo?.get(id);
    const prevIssued = this.issuedWrites.get(p);
    const detail = result ? pickDetail(result) : undefined;
    const write = (sender: string): Promise<void> =>
      store.setStatus([{ id, status, at, ...(detail ? { detail } : {}), ...(result ? { result } : {}) }], lazy ? { lazy } : undefined).then(([applied]) => {
        if (status !== 'sent') this.progress.delete(id);
        if (FINAL_STATUSES.has(status)) p.sentTo?.delete(id);
        if (applied) {
          this.o.feed?.notify();
          log.info({ id, device: p.device, status, ...(result?.code ? { code: result.code } : {}) }, `message ${status}`);
          this.emit('status', { id, to: p.device, from: sender, status, at, ...(detail ? { detail } : {}) } satisfies StatusEvent);
        }
        then?.();
      });
    let work: Promise<void>;
    let issued: Promise<unknown> | undefined;
    if (from !== undefined && prevIssued === undefined) {
      // The common case: nothing ahead of it to wait for; handed to the store now.
      work = write(from);
    } else {
      let handed!: () => void;
      issued = new Promise<void>((resolve) => (handed = resolve));
      work = (prevIssued ?? Promise.resolve())
        .then(async () => {
          let sender = from ?? p.sentTo?.get(id);
          if (sender === undefined) {
            // Streamed by an earlier relay process or session: ask the store whose it is.
            const msg = await store.getMessage(id);
            if (!msg || msg.to !== p.device) {
              log.warn({ device: p.device, id }, 'agent reported a message that is not its own');
              return;
            }
            sender = msg.from;
          }
          const done = write(sender);
          handed();
          await done;
        })
        .finally(() => handed());
      this.issuedWrites.set(p, issued);
      void issued.then(() => {
        if (this.issuedWrites.get(p) === issued) this.issuedWrites.delete(p);
      });
    }
    const settled = work.catch((err: unknown) => {
      log.error({ err, id }, 'could not store a status');
      this.storeFailed(p, err);
    });
    const prevSettled = this.pendingWrites.get(p);
    const all = prevSettled ? Promise.all([prevSettled, settled]) : settled;
    this.pendingWrites.set(p, all);
    void all.then(() => {
      if (this.pendingWrites.get(p) === all) this.pendingWrites.delete(p);
    });
  }

  /**
   * The store was unreachable (a Redis outage): the session ends, so that the agent's next one re-sends
   * what was not confirmed and HELLO starts delivery again, once the store answers (PROTOCOL 7.11).
   */
  private storeFailed(p: Peer, err: unknown): void {
    if ((err as { code?: string }).code === 'DW_STORE_DOWN' && this.peers.get(p.device) === p) this.retire(p, 'DW_STORE_DOWN');
  }

  // --- delivery --------------------------------------------------------------------------------

  /**
   * Writes a message to the peer's session. A session the hub has retired (a new session from the same
   * device, a removed device, the relay closing) takes nothing more: answers that come back from the
   * store after that (a CONFIRM, a PRESENCE) are dropped; the agent re-reports on its next session (7.11).
   */
  private send<T extends MessageType>(p: Peer, type: T, header: Parameters<typeof encodeMessage<T>>[1], body?: Uint8Array): boolean {
    if (p.session.closed) return false;
    let ok = true;
    for (const part of encodeMessage(type, header, body)) ok = p.session.write(part);
    this.schedulePump(p);
    return ok;
  }

  /** One pump per peer per turn of the event loop: what was written meanwhile goes out in full records. */
  private schedulePump(p: Peer): void {
    if (p.pumpScheduled) return;
    p.pumpScheduled = true;
    setImmediate(() => {
      p.pumpScheduled = false;
      this.flushConfirms(p);
      p.link?.pump();
    });
  }

  private readonly confirmWaiting = new Set<Peer>();
  private confirmTimer: NodeJS.Timeout | undefined;

  /**
   * A stored RESULT's CONFIRM (PROTOCOL 7.8). Nothing waits on it but the agent's journal, so it goes out
   * with the next records written to the peer (a FILE, an ACK) or after CONFIRM_DELAY_MS, many ids in one:
   * at a steady flow of messages that saves a record, a socket write and a message per message.
   */
  private confirm(p: Peer, id: string): void {
    if (p.session.closed) return;
    (p.confirms ??= []).push(id);
    if (p.confirms.length >= CONFIRM_MAX_IDS) {
      this.schedulePump(p);
      return;
    }
    this.confirmWaiting.add(p);
    this.confirmTimer ??= setTimeout(() => {
      this.confirmTimer = undefined;
      const due = [...this.confirmWaiting];
      this.confirmWaiting.clear();
      for (const q of due) {
        if (!q.confirms) continue;
        this.flushConfirms(q);
        if (!q.pumpScheduled) q.link?.pump();
      }
    }, CONFIRM_DELAY_MS);
  }

  /** Writes the waiting CONFIRM into the session (its pump is the caller's). */
  private flushConfirms(p: Peer): void {
    const ids = p.confirms;
    if (!ids) return;
    p.confirms = undefined;
    if (p.session.closed) return;
    for (const part of encodeMessage(MessageType.CONFIRM, { ids })) p.session.write(part);
  }

  /** Delivery runs only while the device has an established connection (`sent` = written to a live one). */
  private deliver(p: Peer): void {
    if (!p.ready || p.delivering || p.session.closed || p.link?.connection.isEstablished !== true) return;
    p.delivering = true;
    const gen = p.gen;
    this.deliveryLoop(p, gen)
      .catch((err: unknown) => {
        this.o.log.error({ err, device: p.device }, 'delivery failed');
        this.storeFailed(p, err);
      })
      .finally(() => {
        p.delivering = false;
        // New work, or a new stream whose HELLO came while this loop was finishing.
        if (p.ready && (p.dirty || p.handoff.length > 0 || (p.resend?.size ?? 0) > 0 || p.gen !== gen)) this.deliver(p);
      });
  }

  private async deliveryLoop(p: Peer, gen: number): Promise<void> {
    const { store } = this.o;
    const live = () => p.gen === gen && !p.session.closed && !this.closed;
    /** The link went away: stop before the next message; the store is asked again once it is back. */
    const away = () => {
      if (p.link?.connection.isEstablished === true) return false;
      p.dirty = true;
      p.caughtUp = false;
      p.handoff = [];
      return true;
    };
    while (live()) {
      if (away()) return;
      if (p.resend !== undefined && p.resend.size > 0) {
        const [id, offset] = p.resend.entries().next().value as [string, number];
        p.resend.delete(id);
        const m = await store.getMessage(id);
        if (m && m.to === p.device && (m.status === 'queued' || m.status === 'sent')) await this.stream(p, gen, m, offset);
        continue;
      }
      let batch: Handoff[];
      let short = false;
      if (p.handoff.length > 0) {
        batch = p.handoff.splice(0);
      } else {
        if (p.caughtUp && !p.dirty) return;
        p.dirty = false;
        batch = (await store.pending(p.device, p.cursor, PAGE)).map(({ body, ...message }) => ({ message, body }));
        short = batch.length < PAGE;
        if (batch.length === 0) {
          if (p.gen === gen && !p.dirty) p.caughtUp = true;
          if (!p.dirty) return;
          continue;
        }
      }
      for (const { message: m, body } of batch) {
        if (m.seq <= p.cursor) continue; // handed over and also found by a query
        if (!live() || away()) return;
        if (p.cutDone?.delete(m.id)) {
          p.cursor = m.seq; // carried whole, FILE_END included, while it was uploaded (PROTOCOL 7.18)
          continue;
        }
        if (this.stopped.has(m.id) || (m.expiresAt !== undefined && m.expiresAt <= this.now())) {
          p.cursor = m.seq;
          continue; // the deadline sweeper marks it expired
        }
        await this.stream(p, gen, m, p.partial?.get(m.id) ?? 0, body);
        p.partial?.delete(m.id);
        if (p.gen === gen) p.cursor = m.seq;
      }
      // A short page means the store had nothing more; unless new work arrived meanwhile, we are caught up.
      if (short && p.gen === gen && !p.dirty) p.caughtUp = true;
    }
  }

  /** Writes one FILE and its CHUNKs into the session, waiting for drain when the replay buffer is full. */
  private async stream(p: Peer, gen: number, m: MessageRecord, offset: number, inlineBody?: Uint8Array): Promise<void> {
    const { store, log } = this.o;
    if (p.gen !== gen || p.session.closed || this.stopped.has(m.id)) return;
    const from = Math.min(offset, m.size);
    p.sentTo ??= new Map();
    if (p.sentTo.size >= SENT_TO_MAX) p.sentTo.clear();
    p.sentTo.set(m.id, m.from);
    // `sent` is a lazy write: the store holds it and writes it with the message's outcome (or with a later
    // commit), before the host's `received`; it is told (the 'status' event) once it is durable.
    if (m.status === 'queued' || from > 0) this.markSent(m, from);
    this.send(p, MessageType.FILE, { id: m.id, from: m.from, filename: m.filename, size: m.size, sha256: m.sha256, offset: from, createdAt: m.createdAt, ...(m.sealed ? { sealed: true } : {}) });
    const before = this.progress.get(m.id);
    if (before !== undefined) {
      // A second attempt at this file: say how much of what had gone out is sent again.
      log.info({ id: m.id, device: p.device, offset: from, sentBefore: before, resent: Math.max(0, before - from), size: m.size }, 'file transfer resumed');
    } else {
      log.debug({ id: m.id, device: p.device, offset: from, size: m.size }, 'sending file');
    }
    this.progress.set(m.id, from);
    if (m.inline) {
      const body = inlineBody ?? (await store.readInlineBody(m.id));
      if (!body) throw new Error(`inline body of ${m.id} missing`);
      if (p.gen !== gen || p.session.closed || this.stopped.has(m.id)) return;
      if (from < body.length) {
        const ok = this.send(p, MessageType.CHUNK, { id: m.id }, body.subarray(from));
        this.progress.set(m.id, body.length);
        if (!ok) await this.drained(p, gen);
      }
      return;
    }
    if (p.gen !== gen || p.session.closed || this.stopped.has(m.id)) return;
    let pos = from;
    for await (const piece of (this.o.bodies ?? diskBodyReader).read(m.bodyPath!, from, m.size, CHUNK_SIZE)) {
      // Checked again after the read: a cancel granted meanwhile must see no byte more go out.
      if (p.gen !== gen || p.session.closed || this.stopped.has(m.id)) return;
      const ok = this.send(p, MessageType.CHUNK, { id: m.id }, piece);
      pos += piece.byteLength;
      this.progress.set(m.id, pos);
      if (!ok) await this.drained(p, gen);
      if (p.gen !== gen || p.session.closed || this.stopped.has(m.id)) return;
    }
  }

  /** Stores `sent` (not awaited: its group commit is scheduled ahead of the pump that sends the bytes). */
  private markSent(m: MessageRecord, from: number): void {
    const at = this.now();
    this.o.store
      .setStatus([{ id: m.id, status: 'sent', at, ...(from > 0 ? { detail: { offset: from } } : {}) }], { lazy: true })
      .then(([applied]) => {
        if (!applied) return;
        this.o.feed?.notify();
        this.emit('status', { id: m.id, to: m.to, from: m.from, status: 'sent', at } satisfies StatusEvent);
      })
      .catch((err: unknown) => this.o.log.error({ err, id: m.id }, 'could not store a status'));
  }

  // --- cut-through (PROTOCOL 7.18) ----------------------------------------------------------------

  /**
   * Starts delivering an upload to its device while it arrives, when that device is here, connected, caught
   * up, idle and takes cut-through; undefined otherwise (the message goes store-and-forward). The caller
   * passes the upload through `tap`, then calls `stored` once the message is durable or `abort`.
   */
  cutThrough(m: { id: string; to: string; from: string; filename: string; size: number; createdAt: number; sealed?: boolean }): CutThrough | undefined {
    const p = this.peers.get(m.to);
    if (!p || this.closed || p.cutThrough !== true || !p.ready || p.delivering || !p.caughtUp || p.dirty) return undefined;
    if (p.handoff.length > 0 || (p.resend?.size ?? 0) > 0 || p.session.closed || p.link?.connection.isEstablished !== true) return undefined;
    const ct = new CutThrough(m.id, m.size);
    p.cut = ct;
    p.delivering = true; // the stream is this file's until it ends: no other FILE in between
    const gen = p.gen;
    this.runCutThrough(p, gen, ct, m)
      .catch((err: unknown) => this.o.log.error({ err, device: p.device, id: m.id }, 'cut-through delivery failed'))
      .finally(() => {
        ct.detach();
        if (p.cut === ct) p.cut = undefined;
        p.delivering = false;
        if (p.ready && (p.dirty || p.handoff.length > 0 || (p.resend?.size ?? 0) > 0 || p.gen !== gen)) this.deliver(p);
      });
    return ct;
  }

  private async runCutThrough(p: Peer, gen: number, ct: CutThrough, m: { id: string; to: string; from: string; filename: string; size: number; createdAt: number; sealed?: boolean }): Promise<void> {
    // A cancel granted once the message is stored (7.10): no byte more (hub.cancel sent CANCEL).
    const live = () => p.gen === gen && !p.session.closed && !this.closed && !this.stopped.has(m.id);
    p.sentTo ??= new Map();
    if (p.sentTo.size >= SENT_TO_MAX) p.sentTo.clear();
    p.sentTo.set(m.id, m.from);
    this.send(p, MessageType.FILE, { id: m.id, from: m.from, filename: m.filename, size: m.size, offset: 0, createdAt: m.createdAt, ...(m.sealed ? { sealed: true } : {}) });
    this.o.log.debug({ id: m.id, device: p.device, size: m.size }, 'sending file as it arrives');
    let pos = 0;
    this.progress.set(m.id, 0);
    while (live()) {
      const parts = await ct.take(CHUNK_SIZE);
      if (parts === undefined || !live()) break;
      let ok = true;
      for (const part of encodeMessageParts(MessageType.CHUNK, { id: m.id }, parts)) ok = p.session.write(part);
      this.schedulePump(p);
      for (const part of parts) pos += part.length;
      this.progress.set(m.id, pos);
      if (!ok) await this.drained(p, gen);
    }
    ct.detach();
    const end = await ct.ended();
    if (end === undefined) return; // the stream ended: the agent drops its part; delivered from storage
    if ('aborted' in end) {
      this.progress.delete(m.id);
      p.sentTo.delete(m.id);
      // Nothing of it may be handled: the agent drops its part (a new stream drops it anyway).
      if (live()) this.send(p, MessageType.CANCEL, { id: m.id });
      return;
    }
    const stored = end.stored;
    if (!live()) return; // a new stream (the agent dropped its part) or a cancel: nothing more here
    if (pos < m.size) {
      // The device fell behind (or the link went): the rest goes store-and-forward from here (7.18).
      (p.partial ??= new Map()).set(m.id, pos);
      this.o.log.info({ id: m.id, device: p.device, offset: pos, size: m.size }, 'cut-through let go; the rest follows from the stored body');
      return;
    }
    // PROTOCOL 7.18: the hash, the end of the file for the agent, only once the message is durable.
    this.markSent(stored, 0);
    this.send(p, MessageType.FILE_END, { id: m.id, sha256: stored.sha256 });
    p.cutDone ??= new Set();
    // Bounded like sentTo: forgetting one costs at most a FILE the agent's journal answers (7.13).
    if (p.cutDone.size >= SENT_TO_MAX) p.cutDone.clear();
    p.cutDone.add(m.id);
  }

  private drained(p: Peer, gen: number): Promise<void> {
    if (p.gen !== gen || p.session.closed) return Promise.resolve();
    return new Promise((resolve) => p.drainWaiters.push(resolve));
  }
}

/** What of a handler's result goes into the message history. */
function pickDetail(result: Record<string, unknown>): Record<string, unknown> {
  const keep = ['code', 'exitCode', 'timedOut', 'jobId', 'savedAs', 'reason', 'durationMs'];
  return Object.fromEntries(Object.entries(result).filter(([k]) => keep.includes(k)));
}
