import os from 'node:os';
import { Command, Option } from 'commander';
import { registerMoveCommands } from './relay-moves.js';

/**
 * The cluster's command line (README "Several nodes"): `relay cluster init`, `relay nodes`, and the
 * `--store` options the relay's other commands take. Features are imported when a command runs.
 */

/** `--store URL` (or DROPWIRE_STORE): the cluster's Redis; the command then works on the cluster. */
export const storeOpt = () =>
  new Option('--store <url>', 'the cluster\'s Redis: redis://HOST:PORT[/DB], rediss://…, redis-sentinel://H1:P1,H2:P2/MASTER').env('DROPWIRE_STORE');

/** The options `relay start` gains for running one node of a cluster. */
export function addNodeOptions(start: Command): Command {
  return start
    .addOption(storeOpt())
    .option('--key <file>', 'a copy of the cluster\'s relay.key (default: DIR/relay.key)')
    .option('--node <name>', 'this node\'s name in the cluster (default: the host name)')
    .option('--unsafe-redis', 'run on a Redis that does not fsync every write (a warning is logged)')
    .option('--redis-replicas <n>', 'each 202 waits until N replicas hold the message (WAIT N)', (v) => parseInt(v, 10));
}

export interface NodeCliOptions {
  data: string;
  listen: string;
  http: string;
  public?: string;
  maxBody?: number;
  store: string;
  key?: string;
  node?: string;
  unsafeRedis?: boolean;
  redisReplicas?: number;
  bodyTimeout?: number;
  maxUploads?: number;
  maxUploadsPerToken?: number;
  maxConnsPerIp?: number;
  tlsCert?: string;
  tlsKey?: string;
  downloads?: string;
  metrics?: string;
}

/** `relay start --store …`: one node, until a signal. */
export async function runNode(o: NodeCliOptions): Promise<void> {
  const path = await import('node:path');
  const { Relay } = await import('../relay/relay.js');
  const { parseHostPort } = await import('../shared/enrollment.js');
  const { createLogger } = await import('../shared/log.js');
  const { untilSignal } = await import('./signals.js');
  const log = createLogger('relay');
  const relay = await Relay.startNode({
    dataDir: o.data,
    listen: parseHostPort(o.listen, '--listen'),
    http: parseHostPort(o.http, '--http'),
    ...(o.public ? { public: o.public } : {}),
    ...(o.maxBody ? { maxBody: o.maxBody } : {}),
    store: o.store,
    keyFile: o.key ?? path.join(o.data, 'relay.key'),
    node: o.node ?? os.hostname(),
    ...(o.unsafeRedis ? { unsafeRedis: true } : {}),
    ...(o.redisReplicas !== undefined ? { redisReplicas: o.redisReplicas } : {}),
    caps: { bodyTimeoutS: o.bodyTimeout, maxUploads: o.maxUploads, maxUploadsPerToken: o.maxUploadsPerToken, maxConnsPerIp: o.maxConnsPerIp },
    ...(o.tlsCert && o.tlsKey ? { tls: { certFile: o.tlsCert, keyFile: o.tlsKey } } : {}),
    ...(o.downloads ? { downloads: o.downloads } : {}),
    ...(o.metrics ? { metrics: parseHostPort(o.metrics, '--metrics') } : {}),
    log,
  });
  // SIGHUP re-reads the TLS certificate and key (a renewal); open connections stay up.
  const onHup = () => void relay.reloadTls();
  if (o.tlsCert) process.on('SIGHUP', onHup);
  // Until a signal, or until `relay drain` has emptied this node (it then leaves the cluster).
  const why = await Promise.race([untilSignal(), relay.drained.then(() => 'drained' as const)]);
  if (why === 'drained') log.info('node drained; stopping');
  process.off('SIGHUP', onHup);
  await relay.close();
}

export function registerClusterCommands(relay: Command): void {
  registerMoveCommands(relay);
  const cluster = relay.command('cluster').description('several relay nodes acting as one relay, their state in Redis');
  cluster
    .command('init')
    .description('make the cluster\'s key pair in DIR/relay.key and record its public key and agent addresses in Redis')
    .addOption(storeOpt().makeOptionMandatory())
    .requiredOption('--data <dir>', 'where relay.key is written (copy it to every node)')
    .requiredOption('--public <list>', 'the addresses agents dial, comma-separated HOST:PORT (all go into enrollment tokens)')
    .action(async (o: { store: string; data: string; public: string }) => {
      const { openRedis } = await import('../relay/cluster/connect.js');
      const { agentAddresses, initCluster } = await import('../relay/cluster/config.js');
      const agents = agentAddresses(o.public);
      const redis = await openRedis(o.store);
      try {
        const cfg = await initCluster(redis, { dataDir: o.data, agents });
        console.log(`cluster initialised: relay key ${cfg.publicKey}`);
        console.log(`key file: ${cfg.keyFile} (copy it to every node; it never goes into Redis)`);
        console.log(`agent addresses: ${cfg.agents.join(', ')}`);
      } finally {
        redis.disconnect();
      }
    });

  relay
    .command('nodes')
    .description('the nodes of the cluster: addresses, started, agents, messages/s, last heartbeat; dead after 10 s of silence')
    .addOption(storeOpt().makeOptionMandatory())
    .option('--json', 'JSON output')
    .action(async (o: { store: string; json?: boolean }) => {
      const { openRedis } = await import('../relay/cluster/connect.js');
      const { listNodes } = await import('../relay/cluster/registry.js');
      const redis = await openRedis(o.store);
      try {
        const now = Date.now();
        const nodes = await listNodes(redis, now);
        if (o.json) {
          console.log(JSON.stringify(nodes.map((n) => ({ ...n, state: n.alive ? 'alive' : 'dead', startedAt: new Date(n.startedAt).toISOString(), lastHeartbeat: new Date(n.lastHeartbeat).toISOString() }))));
          return;
        }
        for (const n of nodes) {
          const ago = ((now - n.lastHeartbeat) / 1000).toFixed(1);
          console.log(`${n.name}\t${n.alive ? 'alive' : 'DEAD'}${n.draining ? ' draining' : ''}\tagents ${n.agents}\thttp ${n.http}\tstarted ${new Date(n.startedAt).toISOString()}\tconnected ${n.connected}\t${n.messagesPerS} msg/s\theartbeat ${ago} s ago`);
        }
      } finally {
        redis.disconnect();
      }
    });
}
