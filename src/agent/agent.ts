import fs from 'node:fs';
import { fromHex } from '../protocol/bytes.js';
import { Connection, type Output } from '../protocol/connection.js';
import type { CryptoBackend, KeyPair } from '../protocol/crypto.js';
import { nodeCrypto } from '../protocol/crypto-node.js';
import { ProtocolError } from '../protocol/errors.js';
import type { ConnectionTimers, SessionLimits } from '../protocol/limits.js';
import { CAP_CUT_THROUGH, CAP_REDIRECT, encodeMessage, MessageDecoder, MessageType, type Headers, type Message } from '../protocol/messages.js';
import { Session } from '../protocol/session.js';
import { parseTransportMode, type TransportMode } from '../transport/address.js';
import { Dialer, type Backoff } from '../transport/dialer.js';
import { loadOrCreateKeyPair, random } from '../transport/identity.js';
import type { Link } from '../transport/link.js';
import { describeRoute, RelayReach } from '../transport/reach.js';
import { initiatorTimers, type OpenedStream, type TransportName } from '../transport/stream.js';
import { agentProduct } from '../shared/version.js';
import type { Logger } from '../shared/log.js';
import { loadAgentConfig, paths, rulesVersion, type AgentConfig } from './config.js';
import { DISK_FULL_LOG_INTERVAL_MS, DISK_FULL_RETRY_MS, isDiskFull } from './disk.js';
import { baseEnv, runAction, type Outcome } from './handlers/index.js';
import { Journal } from './journal.js';
import { openSealed } from './open-sealed.js';
import { Outboxes } from './outbox/index.js';
import { Sender } from './send.js';
import { checkName, safeName } from './names.js';
import { matchRule } from './rules.js';
import { RedirectFollower } from './redirect.js';
import { Spool, type Transfer } from './spool.js';

/** How long the agent waits between attempts once the relay says it does not know this device. */
export const REMOVED_RETRY_MS = 5 * 60_000;
const REMOVED_MESSAGE =
  "the relay does not know this device (it was removed): enroll again with 'dropwire init TOKEN' and a new token from 'dropwire relay device add NAME'; retrying every few minutes";

export interface AgentOptions {
  home: string;
  log: Logger;
  crypto?: CryptoBackend;
  timers?: Partial<ConnectionTimers>;
  limits?: Partial<SessionLimits>;
  backoff?: Partial<Backoff>;
  /** Overrides the relay addresses in the config (comma-separated). */
  relay?: string;
  /** Override the config's transport, proxy and CA (README "Reaching the relay"). */
  transport?: TransportMode;
  proxy?: string;
  ca?: string;
  /** In auto mode, how long a TCP dial may take before WSS is tried (default FALLBACK_AFTER_MS). */
  fallbackAfterMs?: number;
  /** Refuse every REDIRECT (PROTOCOL 7.17): `--refuse-redirects`; also `"redirects": false` in the config. */
  refuseRedirects?: boolean;
  signal?: AbortSignal;
}

export interface AgentStatus {
  connected: boolean;
  /** The address in use (or last tried); `relays` are all of them. */
  relay: string;
  relays: string[];
  /** tcp, ws, wss, or "wss via proxy": how the current (last) connection reached the relay. */
  transport?: string;
  since?: number;
  sessions: number;
  resumes: number;
  reconnects: number;
  lastError?: string;
}

/**
 * The agent: one dial-out session to the relay; every incoming file goes to the spool (fsync, rename)
 * and the journal before RECEIVED, then through the first matching rule; the outcome goes back as RESULT.
 */
export class Agent {
  private readonly o: AgentOptions;
  private config: AgentConfig;
  private readonly keys: KeyPair;
  private readonly journal: Journal;
  private readonly spool: Spool;
  private readonly session: Session;
  private readonly dialer: Dialer;
  private readonly reach: RelayReach;
  private readonly redirects: RedirectFollower;
  /** How each link was opened (address, transport, proxy), until its session is established. */
  private readonly routes = new WeakMap<Link, OpenedStream>();
  /** The last fallback logged at warn level (cleared once a session is up). */
  private lastFallback: string | undefined;
  private decoder = new MessageDecoder();
  private transfer: Transfer | undefined;
  /** A FILE the journal already has: its CHUNKs are skipped. */
  private skipping: string | undefined;
  private link: Link | undefined;
  private readonly queues = new Map<string, Promise<void>>();
  /** Round-robin lane per rule: a rule with `parallel: N` has N queues, each in arrival order. */
  private readonly lanes = new Map<number, number>();
  private readonly running = new Set<Promise<void>>();
  private readonly abort = new AbortController();
  private configWatcher: fs.StatWatcher | undefined;
  /** Set while the disk of the home is full (the spool or journal could not be written). */
  private diskFull: { since: number; stage: string; error: string } | undefined;
  /** When DW_DISK_FULL was last logged (across episodes: at most once a minute, whatever happens between). */
  private diskFullLoggedAt = -Infinity;
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  /** The relay refused this device as unknown (removed); logged once until a connection succeeds again. */
  private removed = false;
  private removedLogged = false;
  private closed = false;
  readonly status: AgentStatus;
  /** Files this host sends (PROTOCOL 7.14): `dropwire send` and the outbox folders. */
  readonly sender: Sender;
  private drainWaiters: (() => void)[] = [];
  private readonly outboxes: Outboxes;
  private streaming = false;

  constructor(o: AgentOptions) {
    this.o = o;
    const p = paths(o.home);
    this.config = loadAgentConfig(o.home);
    this.keys = loadOrCreateKeyPair(p.key, o.crypto ?? nodeCrypto);
    this.journal = new Journal(p.journal);
    this.spool = new Spool(p.spool);
    this.session = new Session({ limits: o.limits ?? {} });
    const relays = o.relay ? o.relay.split(',') : this.config.relays;
    this.reach = new RelayReach({
      relays,
      mode: o.transport ?? parseTransportMode(this.config.transport),
      proxy: o.proxy ?? this.config.proxy,
      caFile: o.ca ?? this.config.ca,
      memoryFile: p.route,
      ...(o.fallbackAfterMs !== undefined ? { fallbackAfterMs: o.fallbackAfterMs } : {}),
      onFallback: (from, to, err) => {
        // Said once per change (a relay that is down for an hour must not fill the log every retry).
        const key = `${from.text} ${to.text} ${err.code}`;
        const level = key === this.lastFallback ? 'debug' : 'warn';
        this.lastFallback = key;
        this.o.log[level]({ from: from.text, to: to.text, code: err.code, reason: err.message }, from.kind === 'tcp' && to.kind !== 'tcp' ? `TCP to the relay failed; falling back to ${to.kind.toUpperCase()}` : 'relay address failed; trying the next');
      },
    });
    this.status = { connected: false, relay: this.reach.plan[0]!.text, relays: this.reach.list.map((a) => a.text), sessions: 0, resumes: 0, reconnects: 0 };
    // Every connection of this device, a first one, a resumed one or a hand-over (PROTOCOL 3): a fresh IK handshake.
    const initiator = (transport: TransportName, handover?: Uint8Array): Connection =>
      Connection.initiator({
        crypto: o.crypto ?? nodeCrypto,
        random,
        staticKey: this.keys,
        remoteStatic: fromHex(this.config.relayKey),
        session: this.session,
        timestamp: this.journal.nextTimestamp(Date.now()),
        now: Date.now(),
        timers: initiatorTimers(transport, o.timers),
        ...(handover !== undefined ? { handover } : {}),
      });
    this.dialer = new Dialer({
      host: '',
      port: 0,
      connect: (signal) => this.reach.open(signal),
      backoff: o.backoff ?? {},
      connection: (transport) => initiator(transport),
      events: {
        onOpen: (opened, link) => {
          this.routes.set(link, opened);
          this.status.relay = opened.address;
          this.status.transport = describeRoute(opened);
        },
        onOutput: (out, link) => this.onOutput(out, link),
        onClose: (err, link) => this.onClose(err, link),
        onRetry: (err, delay, attempt) => {
          this.status.reconnects++;
          // A dial that failed before any link (proxy refused, certificate untrusted…): say why, once per
          // reason (a link's own close has set lastError already).
          // A link's end (a ProtocolError) was told to onClose, which keeps the more precise last error.
          const dialCode = this.removed || err instanceof ProtocolError ? undefined : (err as { code?: string }).code;
          if (!this.status.connected && dialCode && dialCode !== this.status.lastError) this.o.log.warn({ code: dialCode, reason: err.message }, 'cannot reach the relay');
          if (dialCode) this.status.lastError = dialCode;
          if (this.removed && !this.removedLogged) {
            this.removedLogged = true;
            this.o.log.error({ code: 'DW_UNKNOWN_DEVICE', device: this.config.name, relay: this.status.relay, retryInS: Math.round(delay / 1000) }, REMOVED_MESSAGE);
          }
          this.o.log.debug({ code: (err as ProtocolError).code, delay, attempt }, 'reconnecting');
        },
      },
    });
    const isReady = () => this.streaming && this.status.connected;
    this.sender = new Sender({
      write: (type, header, body) => {
        let ok = true;
        for (const part of encodeMessage(type, header, body)) ok = this.session.write(part);
        this.schedulePump();
        return ok;
      },
      drained: () => new Promise((resolve) => this.drainWaiters.push(resolve)),
      get ready() {
        return isReady();
      },
    });
    this.outboxes = this.makeOutboxes();
    this.redirects = new RedirectFollower({
      log: o.log,
      dialer: this.dialer,
      follow: () => o.refuseRedirects !== true && this.config.redirects !== false,
      busy: () => this.sender.busy, // the node keeps uploads and watches per session: they stay where they are
      open: (address, signal) =>
        new RelayReach({ relays: [address], mode: this.reach.mode, proxy: o.proxy ?? this.config.proxy, caFile: o.ca ?? this.config.ca }).open(signal),
      connection: (requestId, transport) => initiator(transport, requestId),
      refuse: (rid, code) => this.send(MessageType.REDIRECT_REFUSED, { rid, code }),
      current: () => this.status.relay,
    });
    o.signal?.addEventListener('abort', () => void this.close(), { once: true });
  }

  /** Outbox folders send through this agent's session (src/agent/outbox/). */
  private makeOutboxes(): Outboxes {
    return new Outboxes(this.o.home, {
      sender: this.sender,
      journal: this.journal,
      log: this.o.log,
      identity: { name: this.config.name, home: this.o.home },
      presence: (device) => this.presence(device),
    });
  }

  /** The device's name and keys, for sealing to and opening from (PROTOCOL 12). */
  get identity(): { name: string; privateKey: Uint8Array; home: string } {
    return { name: this.config.name, privateKey: this.keys.privateKey, home: this.o.home };
  }

  private readonly queries = new Map<number, (answer: Headers[typeof MessageType.PRESENCE]) => void>();
  private nextQuery = 1;

  /** Asks the relay whether `device` is online (for `dropwire online` on this host). */
  presence(device: string, timeoutMs = 5_000): Promise<Headers[typeof MessageType.PRESENCE]> {
    if (!this.status.connected) return Promise.reject(Object.assign(new Error('not connected to the relay'), { code: 'DW_NOT_CONNECTED' }));
    const qid = this.nextQuery++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.queries.delete(qid);
        reject(Object.assign(new Error('the relay did not answer'), { code: 'DW_TIMEOUT' }));
      }, timeoutMs);
      this.queries.set(qid, (a) => {
        clearTimeout(timer);
        resolve(a);
      });
      this.send(MessageType.PRESENCE_QUERY, { qid, device });
    });
  }

  /** What `dropwire status` shows: connection, counters, queue, the last message and its outcome. */
  snapshot(): AgentStatus & { device: string; handlersRunning: number; lastMessage?: { id: string; filename: string; status?: string; code?: string; at: number } } {
    const last = this.journal.lastDone();
    return {
      ...this.status,
      device: this.config.name,
      handlersRunning: this.running.size,
      ...(last ? { lastMessage: { id: last.id, filename: last.filename, ...(last.status ? { status: last.status } : {}), ...(last.code ? { code: last.code } : {}), at: last.receivedAt } } : {}),
    };
  }

  start(): void {
    const { log } = this.o;
    try {
      for (const id of this.journal.recoverInterrupted(Date.now())) log.warn({ id }, 'handler was interrupted by a stop; reported failed, not run again');
    } catch (err) {
      if (!isDiskFull(err)) throw err;
      this.noteDiskFull(err, 'journal'); // they stay `running` and are reported at the next start with space
    }
    for (const e of this.journal.waiting()) this.handle(e.id, e.filename, e.from);
    this.watchConfig();
    try {
      this.outboxes.reload();
    } catch (err) {
      log.error({ err }, 'outbox folders not started: config.json has a bad outbox');
    }
    log.info({ relay: this.status.relay, device: this.config.name }, 'agent started');
    this.dialer.start();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    this.redirects.close();
    for (const t of this.retryTimers) clearTimeout(t);
    this.retryTimers.clear();
    this.configWatcher?.removeAllListeners();
    fs.unwatchFile(paths(this.o.home).config);
    await this.outboxes.close();
    this.dialer.close();
    this.sender.close();
    this.transfer?.abandon();
    await Promise.allSettled([...this.running]);
    this.journal.close();
    this.o.log.info('agent stopped');
  }

  // --- session events --------------------------------------------------------------------------

  private onOutput(out: Exclude<Output, { type: 'write' } | { type: 'close' }>, link: Link): void {
    const { log } = this.o;
    switch (out.type) {
      case 'established': {
        this.link = link;
        this.removed = false;
        this.removedLogged = false;
        this.status.connected = true;
        this.status.since = Date.now();
        const route = this.routes.get(link);
        this.routes.delete(link); // established: no longer a candidate for `failed` below
        this.lastFallback = undefined;
        if (route) this.reach.worked(route.address);
        const via = { relay: this.status.relay, transport: this.status.transport, ...(route?.proxy ? { proxy: route.proxy } : {}) };
        if (out.resumed) {
          this.status.resumes++;
          log.info(via, 'session resumed');
          return;
        }
        this.status.sessions++;
        log.info(via, 'session started');
        this.newStream();
        return;
      }
      case 'data':
        this.decoder.push(out.bytes);
        try {
          for (let m = this.decoder.next(); m; m = this.decoder.next()) this.onMessage(m);
        } catch (err) {
          if (isDiskFull(err)) {
            this.stopOnDiskFull(err, 'spool');
            return;
          }
          log.error({ err }, 'bad data from the relay; starting a new session');
          this.link?.close((err as { code?: string }).code ?? 'DW_BAD_MESSAGE');
          this.session.reset();
          this.dialer.redial();
        }
        return;
      case 'lost':
        this.streaming = false;
        for (const w of this.drainWaiters.splice(0)) w();
        log.warn({ code: out.code }, 'session lost; recovering at message level');
        return;
      case 'drain':
        for (const w of this.drainWaiters.splice(0)) w();
        return;
      case 'hello':
      case 'handover-ready':
      case 'position':
        return;
    }
  }

  private onClose(err: ProtocolError, link: Link): void {
    if (this.link !== undefined && this.link !== link) {
      this.routes.delete(link); // the connection a hand-over replaced (PROTOCOL 7.16): the session is on the new one
      return;
    }
    if (this.redirects.busy) {
      // PROTOCOL 7.16 step 6: the old node let go; the new connection takes the session now.
      this.o.log.info({ code: err.code, reason: err.cause }, 'old relay connection closed during a hand-over');
      if (this.link === link) this.link = undefined;
      this.status.connected = false;
      this.redirects.oldClosed();
      return;
    }
    const route = this.routes.get(link);
    // A stream that opened but never carried a session (a proxy or terminator in the way): next address.
    if (route) this.reach.failed(route.address);
    this.routes.delete(link);
    if (this.link === link) this.link = undefined;
    if (this.status.connected) this.o.log.warn({ code: err.code }, 'connection to relay lost');
    this.status.connected = false;
    this.status.lastError = this.diskFull ? diskFullText(this.diskFull) : err.code;
    if (err.code === 'DW_SESSION_LOST' && this.session.closed) this.session.reset();
    if (err.code === 'DW_PEER_CLOSED' && err.cause === 'DW_BAD_MESSAGE') this.sender.relayRefusedMessages();
    if (err.code !== 'DW_HANDSHAKE_REFUSED') return;
    if (err.cause === 'DW_UNKNOWN_DEVICE') {
      // The device was removed at the relay: only `init` with a new token helps. Say so once (in onRetry,
      // with the wait), keep it as the last error for `dropwire status`, and dial only every few minutes.
      this.removed = true;
      this.status.lastError = `DW_UNKNOWN_DEVICE: ${REMOVED_MESSAGE}`;
      this.dialer.slowDown(REMOVED_RETRY_MS);
      return;
    }
    this.status.lastError = typeof err.cause === 'string' ? err.cause : err.code;
    this.o.log.error({ reason: err.cause }, 'relay refused this device');
  }

  /** A new stream (PROTOCOL 7): re-report what the relay has not confirmed, then HELLO with partial files. */
  private newStream(): void {
    this.decoder = new MessageDecoder();
    this.transfer?.abandon();
    this.transfer = undefined;
    this.skipping = undefined;
    for (const e of this.journal.unconfirmed()) {
      this.send(MessageType.RECEIVED, { id: e.id });
      if (e.state === 'done' && e.status) this.send(MessageType.RESULT, resultHeader(e.id, e.status, e.code, e.result));
    }
    // PROTOCOL 7.18: a cut-through file whose FILE_END did not come on the stream that ended is dropped (the
    // relay may never have stored it); a stored one is delivered again.
    for (const id of this.cutParts) if (!this.journal.get(id)) this.spool.remove(id);
    this.cutParts.clear();
    this.send(MessageType.HELLO, { agent: agentProduct(), partial: this.spool.partials(), caps: [CAP_REDIRECT, CAP_CUT_THROUGH] });
    for (const w of this.drainWaiters.splice(0)) w();
    this.streaming = true;
    this.sender.newStream(); // PROTOCOL 7.14: unfinished uploads are offered again
  }

  private send<T extends MessageType>(type: T, header: Headers[T]): void {
    for (const part of encodeMessage(type, header)) this.session.write(part);
    this.schedulePump();
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    // One pump per turn of the event loop: reports written meanwhile share records.
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.link?.pump();
    });
  }

  private pumpScheduled = false;

  private onMessage(m: Message): void {
    const { log } = this.o;
    switch (m.type) {
      case MessageType.FILE: {
        const h = m.header;
        this.transfer?.abandon();
        this.transfer = undefined;
        this.skipping = undefined;
        Spool.checkId(h.id);
        const known = this.journal.get(h.id);
        if (known) {
          // A redelivery of something already here: acknowledge, never run it again.
          log.info({ id: h.id }, 'redelivered message acknowledged without running');
          this.skipping = h.id;
          this.send(MessageType.RECEIVED, { id: h.id });
          if (known.state === 'done' && known.status) this.send(MessageType.RESULT, resultHeader(h.id, known.status, known.code, known.result));
          return;
        }
        try {
          this.transfer = this.spool.begin(h);
        } catch (err) {
          if (isDiskFull(err)) throw err;
          log.warn({ err, id: h.id }, 'spool could not resume; asking for the whole file');
          this.spool.remove(h.id);
          this.skipping = h.id;
          this.send(MessageType.RESTART, { id: h.id, offset: 0, code: 'DW_SPOOL_MISMATCH' });
          return;
        }
        if (h.offset > 0) log.info({ id: h.id, offset: h.offset, size: h.size }, 'transfer resumed from the bytes on disk');
        this.incoming = { from: h.from, filename: h.filename, sealed: h.sealed === true };
        if (h.sha256 === undefined) this.cutParts.add(h.id);
        else this.cutParts.delete(h.id);
        // All bytes may already be on disk (a stop between the last write and the rename).
        if (this.transfer.ready) this.complete();
        return;
      }
      case MessageType.CHUNK: {
        if (this.skipping === m.header.id) return;
        const t = this.transfer;
        if (!t || t.id !== m.header.id) throw Object.assign(new Error('CHUNK without its FILE'), { code: 'DW_BAD_MESSAGE' });
        for (const part of m.parts) t.write(part);
        if (t.ready) this.complete();
        return;
      }
      case MessageType.FILE_END: {
        // PROTOCOL 7.18: the relay stored the cut-through file; its hash is the file's end.
        if (this.skipping === m.header.id) return;
        const t = this.transfer;
        if (!t || t.id !== m.header.id || t.sha256 !== undefined || !t.complete) {
          throw Object.assign(new Error('FILE_END without its whole cut-through file'), { code: 'DW_BAD_MESSAGE' });
        }
        this.cutParts.delete(t.id);
        t.sha256 = m.header.sha256;
        this.complete();
        return;
      }
      case MessageType.CONFIRM:
        try {
          this.journal.confirm(m.header.ids);
        } catch (err) {
          // Not confirmed here: the outcomes are reported again on the next stream; harmless.
          if (!isDiskFull(err)) throw err;
          this.noteDiskFull(err, 'journal');
        }
        return;
      case MessageType.PRESENCE: {
        const q = this.queries.get(m.header.qid);
        if (q) {
          this.queries.delete(m.header.qid);
          q(m.header);
        }
        return;
      }
      case MessageType.REDIRECT:
        this.redirects.onRedirect(m.header);
        return;
      case MessageType.CANCEL:
        this.cutParts.delete(m.header.id);
        if (this.transfer?.id === m.header.id) {
          this.transfer.abandon();
          this.transfer = undefined;
        }
        if (!this.journal.get(m.header.id)) this.spool.remove(m.header.id);
        return;
      default:
        if (this.sender.onMessage(m)) return;
        throw Object.assign(new Error(`message type ${m.type} is not for the agent`), { code: 'DW_BAD_MESSAGE' });
    }
  }

  private incoming: { from: string; filename: string; sealed: boolean } = { from: '', filename: '', sealed: false };
  /** Cut-through files (PROTOCOL 7.18) begun on this stream whose FILE_END has not come. */
  private readonly cutParts = new Set<string>();

  private complete(): void {
    const t = this.transfer!;
    this.transfer = undefined;
    const { log } = this.o;
    if (!t.finish()) {
      log.warn({ id: t.id }, 'SHA-256 mismatch; asking for the file again');
      this.skipping = t.id;
      this.send(MessageType.RESTART, { id: t.id, offset: 0, code: 'DW_CHECKSUM' });
      return;
    }
    const { from, filename, sealed } = this.incoming;
    // PROTOCOL 12.4: a sealed file is opened before it counts as received; a tampered one is rejected.
    const badSeal = sealed ? openSealed(this.spool.filePath(t.id, filename), { recipientPrivate: this.keys.privateKey, sender: from, filename }) : undefined;
    try {
      this.journal.received({ id: t.id, from, filename, size: t.size, sha256: t.sha256! }, Date.now());
    } catch (err) {
      // Not in the journal, so not acknowledged: the relay sends it again. Free its space meanwhile.
      this.spool.remove(t.id);
      throw err;
    }
    this.spaceAgain();
    log.info({ id: t.id, from, filename, size: t.size, resumedFrom: t.resumedFrom }, 'message received');
    this.send(MessageType.RECEIVED, { id: t.id });
    if (badSeal) {
      this.spool.remove(t.id);
      this.finish(t.id, { status: 'failed', code: 'DW_BAD_SEAL', detail: { reason: badSeal } }, 'rejected');
      return;
    }
    this.handle(t.id, filename, from);
  }

  // --- handlers --------------------------------------------------------------------------------

  /** Queues the handler: one at a time per rule (arrival order), or `parallel` at once. */
  private handle(id: string, filename: string, from: string): void {
    const bad = checkName(filename);
    const name = safeName(filename);
    const match = bad ? undefined : matchRule(this.config.rules, { name, from });
    if (!match) {
      const code = bad ? bad.code : 'DW_NO_RULE';
      const reason = bad ? bad.message : `no rule matches '${name}' from '${from}'`;
      this.finish(id, { status: 'failed', code, detail: { reason } }, 'rejected');
      return;
    }
    const run = async () => {
      if (this.closed) return;
      try {
        if (!this.journal.running(id)) return;
      } catch (err) {
        if (!isDiskFull(err)) throw err;
        this.noteDiskFull(err, 'journal');
        this.later(() => this.handle(id, filename, from)); // still `received` in the journal
        return;
      }
      const action = match.rule.action;
      let file: string;
      try {
        file = this.spool.locate(id, name);
      } catch (err) {
        this.finish(id, { status: 'failed', code: 'DW_SPOOL_FAILED', detail: { error: (err as Error).message } });
        return;
      }
      this.o.log.info({ id, rule: match.index + 1, action: action.type, file: name }, 'handler started');
      const outcome = await runAction(action, {
        facts: { name, from, id, file },
        signal: this.abort.signal,
        env: baseEnv(),
      });
      if (this.closed && outcome.code === 'DW_CANCELLED') return; // left `running`: reported interrupted on restart
      this.finish(id, outcome);
    };
    const lane = this.lanes.get(match.index) ?? 0;
    this.lanes.set(match.index, lane + 1);
    const key = `${match.index}:${lane % (match.rule.parallel ?? 1)}`;
    const prev = this.queues.get(key) ?? Promise.resolve();
    const next = prev.then(run).catch((err: unknown) => this.o.log.error({ err, id }, 'handler crashed'));
    this.queues.set(key, next);
    this.running.add(next);
    void next.finally(() => {
      this.running.delete(next);
      if (this.queues.get(key) === next) this.queues.delete(key);
    });
  }

  private finish(id: string, outcome: Outcome, as?: 'rejected'): void {
    const status = as ?? outcome.status;
    try {
      this.journal.finish(id, status, outcome.code, outcome.detail, Date.now());
    } catch (err) {
      if (!isDiskFull(err)) throw err;
      // The outcome is reported only once the journal has it: keep it and try again.
      this.noteDiskFull(err, 'journal');
      this.later(() => this.finish(id, outcome, as));
      return;
    }
    this.spaceAgain();
    const level = status === 'handled' ? 'info' : 'warn';
    this.o.log[level]({ id, status, code: outcome.code, ...pick(outcome.detail) }, `message ${status}`);
    this.send(MessageType.RESULT, resultHeader(id, status, outcome.code, outcome.detail));
    if (this.config.retention === 'remove') this.spool.remove(id);
  }

  // --- a full disk -----------------------------------------------------------------------------

  /**
   * The spool or journal could not be written because the disk is full: nothing of the message was
   * acknowledged. Drop the transfer and the session (the relay recovers at message level, PROTOCOL 5.8 and
   * 7.12, from the bytes the part file holds) and dial again a few seconds later, until there is space.
   */
  private stopOnDiskFull(err: unknown, stage: string): void {
    this.transfer?.abandon();
    this.transfer = undefined;
    this.skipping = undefined;
    this.noteDiskFull(err, stage);
    this.dialer.slowDown(DISK_FULL_RETRY_MS);
    this.link?.close('DW_SESSION_LOST');
    this.session.reset();
  }

  /** Remembers the full disk for `dropwire status`, and logs DW_DISK_FULL at most once a minute. */
  private noteDiskFull(err: unknown, stage: string): void {
    const now = Date.now();
    const error = (err as Error).message;
    const d = (this.diskFull ??= { since: now, stage, error });
    d.stage = stage;
    d.error = error;
    this.status.lastError = diskFullText(d);
    if (now - this.diskFullLoggedAt < DISK_FULL_LOG_INTERVAL_MS) return;
    this.diskFullLoggedAt = now;
    this.o.log.error(
      { code: 'DW_DISK_FULL', stage, home: this.o.home, error, retryInS: DISK_FULL_RETRY_MS / 1000 },
      'the disk of the agent folder is full: nothing is acknowledged until there is space; retrying',
    );
  }

  /** A journal write went through after the disk was full: say so once. */
  private spaceAgain(): void {
    if (!this.diskFull) return;
    const fullForS = Math.round((Date.now() - this.diskFull.since) / 1000);
    this.diskFull = undefined;
    this.o.log.info({ fullForS }, 'the agent folder has space again');
  }

  private later(fn: () => void): void {
    const t = setTimeout(() => {
      this.retryTimers.delete(t);
      if (!this.closed) fn();
    }, DISK_FULL_RETRY_MS);
    this.retryTimers.add(t);
  }

  // --- config ----------------------------------------------------------------------------------

  /**
   * Reads config.json now and puts its rules (and retention) in force; a bad file throws DW_BAD_CONFIG and
   * the previous rules stay. Answers what `dropwire rule …` waits for: the number and version of the rules.
   */
  reloadConfig(): { rules: number; version: string; outboxes: number } {
    const next = loadAgentConfig(this.o.home);
    const version = rulesVersion(next.rules);
    const changed = version !== rulesVersion(this.config.rules) || next.retention !== this.config.retention;
    this.config = { ...next, relay: this.config.relay, relays: this.config.relays, relayKey: this.config.relayKey };
    if (changed) this.o.log.info({ rules: next.rules.length, version }, 'config reloaded');
    const outboxes = this.outboxes.reload();
    return { rules: next.rules.length, version, outboxes };
  }

  /** Rule edits (by `dropwire rule …` or by hand) take effect without a restart; a bad edit is refused. */
  private watchConfig(): void {
    const file = paths(this.o.home).config;
    this.configWatcher = fs.watchFile(file, { interval: 300 }, () => {
      try {
        this.reloadConfig();
      } catch (err) {
        this.o.log.error({ err }, 'config change refused; the previous rules stay in force');
      }
    });
  }
}

function diskFullText(d: { stage: string; error: string }): string {
  return `DW_DISK_FULL: the agent folder's disk is full (${d.stage}: ${d.error}); retrying`;
}

function resultHeader(id: string, status: 'handled' | 'failed' | 'rejected', code: string | undefined, detail: Record<string, unknown> | undefined): Headers[typeof MessageType.RESULT] {
  return { id, status, ...(code ? { code } : {}), ...(detail ? { detail } : {}) };
}

function pick(detail: Record<string, unknown>): Record<string, unknown> {
  const { exitCode, timedOut, jobId, savedAs, reason } = detail;
  return Object.fromEntries(Object.entries({ exitCode, timedOut, jobId, savedAs, reason }).filter(([, v]) => v !== undefined));
}
