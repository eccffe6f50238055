import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { DropwireError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { Hub } from '../hub.js';
import { envelope, type Bus, type BusMessage, type NodeCommand } from './bus.js';
import { drainNode, moveAgents, targetsFor, type MoveSummary } from './drain.js';
import { channels } from './keys.js';
import type { MoveResult, Redirects } from './redirect.js';

/** What a node answers on a command's reply channel. */
export type Reply =
  | { t: 'status'; node: string; connected: number; redirectable: number; draining: boolean }
  | { t: 'result'; node: string; r: MoveResult }
  | { t: 'done'; node: string; summary: MoveSummary }
  | { t: 'error'; node: string; code: string; message: string };

/**
 * The command channel of one node: `relay drain|rebalance|move` publish a command on the node's bus channel
 * (from any machine that reaches Redis) and read the answers on their own reply channel.
 */
export class NodeControl {
  private busy = false;
  private drainedResolve: (() => void) | undefined;
  /** Resolves once `relay drain` has emptied this node (the process then stops). */
  readonly drained = new Promise<void>((r) => (this.drainedResolve = r));

  private readonly o: { redis: Redis; bus: Bus; node: string; hub: Hub; redirects: Redirects; log: Logger };

  constructor(o: { redis: Redis; bus: Bus; node: string; hub: Hub; redirects: Redirects; log: Logger }) {
    this.o = o;
    o.bus.on((m) => {
      if (m.t === 'command') void this.run(m);
    });
  }

  private reply(channel: string, r: Reply): Promise<unknown> {
    return this.o.redis.publish(channel, JSON.stringify(r)).catch(() => 0);
  }

  private async run(m: Extract<BusMessage, { t: 'command' }>): Promise<void> {
    const { hub, node, log } = this.o;
    const cmd = m.cmd;
    const channel = m.reply;
    const progress = (r: MoveResult) => void this.reply(channel, { t: 'result', node, r });
    try {
      if (cmd.op === 'status') {
        const live = hub.liveDevices();
        await this.reply(channel, { t: 'status', node, connected: live.length, redirectable: live.filter((d) => d.redirectable).length, draining: hub.draining });
        return;
      }
      if (this.busy) throw new DropwireError('DW_NODE_BUSY', `node '${node}' is already moving agents`);
      this.busy = true;
      try {
        if (cmd.op === 'drain') {
          log.info({ to: cmd.to, rate: cmd.rate, timeoutMs: cmd.timeoutMs }, 'drain asked');
          const summary = await drainNode({ ...this.o, ...(cmd.to ? { to: cmd.to } : {}), rate: cmd.rate, timeoutMs: cmd.timeoutMs, progress });
          await this.reply(channel, { t: 'done', node, summary });
          this.drainedResolve?.();
          return;
        }
        const targets = await targetsFor(this.o.redis, node, cmd.to);
        if (targets.length === 0) throw new DropwireError('DW_NOWHERE_TO_GO', `node '${cmd.to}' is not an alive, ready node of the cluster`);
        const summary = await moveAgents({ ...this.o, targets, rate: cmd.rate, timeoutMs: cmd.timeoutMs, ...(cmd.count !== undefined ? { count: cmd.count } : {}), ...(cmd.device !== undefined ? { device: cmd.device } : {}), progress });
        await this.reply(channel, { t: 'done', node, summary });
      } finally {
        this.busy = false;
      }
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'DW_INTERNAL';
      log.warn({ err, op: cmd.op }, 'command failed');
      await this.reply(channel, { t: 'error', node, code: code.startsWith('DW_') ? code : 'DW_INTERNAL', message: (err as Error).message });
    }
  }
}

/**
 * The command line's side: sends `cmd` to `node` and passes every answer to `onReply` until one ends it
 * (`done`, `error`, `status`), or until nothing came for `silenceMs` (DW_NODE_SILENT).
 */
export async function sendCommand(o: { redis: Redis; sub: Redis; node: string; cmd: NodeCommand; onReply?: (r: Reply) => void; silenceMs?: number }): Promise<Reply> {
  const id = randomBytes(8).toString('hex');
  const channel = channels.reply(id);
  await o.sub.subscribe(channel);
  try {
    return await new Promise<Reply>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          o.sub.off('message', on);
          reject(new DropwireError('DW_NODE_SILENT', `node '${o.node}' did not answer (is it running?)`));
        }, o.silenceMs ?? 15_000);
      };
      const on = (ch: string, text: string) => {
        if (ch !== channel) return;
        let r: Reply;
        try {
          r = JSON.parse(text) as Reply;
        } catch {
          return;
        }
        arm();
        o.onReply?.(r);
        if (r.t === 'result') return;
        clearTimeout(timer);
        o.sub.off('message', on);
        resolve(r);
      };
      o.sub.on('message', on);
      arm();
      o.redis.publish(channels.node(o.node), envelope('cli', { t: 'command', id, reply: channel, cmd: o.cmd })).catch((err: unknown) => {
        clearTimeout(timer);
        reject(err as Error);
      });
    });
  } finally {
    await o.sub.unsubscribe(channel).catch(() => {});
  }
}
