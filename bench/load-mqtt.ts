/**
 * The MQTT side's devices: many MQTT.js clients in one process, each with a fixed client id, clean session
 * off (a persistent session), keepalive like dropwire's ping interval, subscribed with QoS 1 to its own
 * topic `d/<device>` — the equivalent of a dropwire device queue. A message's first 8 bytes carry its index
 * (big-endian float64); receipt times are pushed in batches. Runs as a child of bench/run.js.
 */
import net from 'node:net';
import { pathToFileURL } from 'node:url';
import { MqttClient, type IClientOptions } from 'mqtt';
import { deviceName, hrNow, LOCAL_ADDRESSES, serveParent, sleep } from './common.js';

export const KEEPALIVE_S = 10;
export const topicOf = (device: string): string => `d/${device}`;

export interface LoadMqttOptions {
  host: string;
  port: number;
  from: number;
  count: number;
  /** Subscribe on connect when the broker has no session for the client (first time, or it lost it). */
  subscribe: boolean;
  onMessage?(index: number, size: number, at: number): void;
}

export class LoadMqtt {
  readonly clients: MqttClient[] = [];
  private readonly o: LoadMqttOptions;
  private since = new Set<number>();
  private readonly ever = new Set<number>();
  connects = 0;
  received = 0;
  receivedBytes = 0;
  lastReceivedAt = 0;
  allBackAt: number | undefined;
  markedAt = hrNow();

  constructor(o: LoadMqttOptions) {
    this.o = o;
  }

  private make(i: number, k: number): MqttClient {
    const name = deviceName(i);
    const localAddress = LOCAL_ADDRESSES[i % LOCAL_ADDRESSES.length]!;
    const options: IClientOptions = {
      clientId: name,
      clean: false,
      protocolVersion: 4,
      keepalive: KEEPALIVE_S,
      reconnectPeriod: 1000,
      connectTimeout: 30_000,
      resubscribe: false,
    };
    const client = new MqttClient(() => net.createConnection({ host: this.o.host, port: this.o.port, localAddress }), options);
    client.on('error', () => {});
    client.on('connect', (connack) => {
      this.connects++;
      if (this.o.subscribe && !connack.sessionPresent) client.subscribe(topicOf(name), { qos: 1 });
      if (!this.ever.has(k)) this.ever.add(k);
      if (!this.since.has(k)) {
        this.since.add(k);
        if (this.since.size === this.o.count) this.allBackAt = hrNow();
      }
    });
    client.on('message', (_topic, payload) => {
      const at = hrNow();
      this.received++;
      this.receivedBytes += payload.length;
      this.lastReceivedAt = at;
      const index = payload.length >= 8 ? payload.readDoubleBE(0) : -1;
      this.o.onMessage?.(index, payload.length, at);
    });
    return client;
  }

  get everConnected(): number {
    return this.ever.size;
  }

  get connected(): number {
    let n = 0;
    for (const c of this.clients) if (c.connected) n++;
    return n;
  }

  /** Connects every client, at most `inFlight` CONNECTs outstanding; resolves when all connected once or on timeout. */
  async start(inFlight = 256, timeoutMs = 120_000): Promise<{ established: number; ms: number }> {
    const t0 = hrNow();
    const until = t0 + timeoutMs;
    let next = 0;
    while (hrNow() < until) {
      while (next < this.o.count && next - this.ever.size < inFlight) {
        this.clients.push(this.make(this.o.from + next, next));
        next++;
      }
      if (this.ever.size >= this.o.count) break;
      await sleep(5);
    }
    // Let the SUBACKs arrive: a subscription must be in place before anything is published to it.
    await sleep(300);
    return { established: this.ever.size, ms: hrNow() - t0 };
  }

  mark(): void {
    this.since = new Set();
    this.allBackAt = undefined;
    this.markedAt = hrNow();
  }

  stats(): Record<string, number> {
    return {
      clients: this.clients.length,
      connected: this.connected,
      everEstablished: this.ever.size,
      establishedSinceMark: this.since.size,
      connects: this.connects,
      received: this.received,
      receivedBytes: this.receivedBytes,
      lastReceivedAt: this.lastReceivedAt,
      allBackAt: this.allBackAt ?? 0,
      markedAt: this.markedAt,
      rssKiB: Math.round(process.memoryUsage.rss() / 1024),
    };
  }

  /** Disconnects cleanly (DISCONNECT): the broker keeps each persistent session and queues for it. */
  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => new Promise<void>((resolve) => c.end(false, {}, () => resolve()))));
  }
}

async function main(): Promise<void> {
  let pool: LoadMqtt | undefined;
  let indexes: number[] = [];
  let times: number[] = [];
  let flushTimer: NodeJS.Timeout | undefined;
  const flush = () => {
    flushTimer = undefined;
    if (indexes.length === 0) return;
    emit({ event: 'recv', indexes, times });
    indexes = [];
    times = [];
  };
  const { emit } = serveParent({
    start: async (a: { host: string; port: number; from: number; count: number; subscribe?: boolean; inFlight?: number; timeoutMs?: number }) => {
      pool = new LoadMqtt({
        host: a.host,
        port: a.port,
        from: a.from,
        count: a.count,
        subscribe: a.subscribe ?? true,
        onMessage: (index, _size, at) => {
          indexes.push(index);
          times.push(at);
          flushTimer ??= setTimeout(flush, 10);
        },
      });
      return pool.start(a.inFlight ?? 256, a.timeoutMs ?? 120_000);
    },
    stats: () => pool?.stats() ?? {},
    mark: () => {
      pool?.mark();
      return true;
    },
    close: async () => {
      await Promise.race([pool?.close(), sleep(10_000)]);
      return true;
    },
  });
  process.on('SIGTERM', () => {
    for (const c of pool?.clients ?? []) c.end(true);
    setTimeout(() => process.exit(0), 200).unref();
  });
}

const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(entry).href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
