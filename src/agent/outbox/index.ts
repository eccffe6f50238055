import { loadOutboxes, type OutboxSpec } from './config.js';
import { Outbox, type OutboxDeps } from './outbox.js';

/** The agent's outbox folders, from config.json; a reload starts new ones and stops removed or changed ones. */
export class Outboxes {
  private readonly home: string;
  private readonly deps: OutboxDeps;
  private readonly running = new Map<string, Outbox>();

  constructor(home: string, deps: OutboxDeps) {
    this.home = home;
    this.deps = deps;
  }

  /** Applies config.json's `outboxes`; a bad entry throws DW_BAD_CONFIG and nothing changes. */
  reload(): number {
    const specs = loadOutboxes(this.home);
    const want = new Map(specs.map((s) => [key(s), s]));
    for (const [k, box] of this.running) {
      if (want.has(k)) continue;
      this.running.delete(k);
      void box.close();
    }
    for (const [k, spec] of want) {
      if (this.running.has(k)) continue;
      const box = new Outbox(spec, this.deps);
      this.running.set(k, box);
      try {
        box.start();
      } catch (err) {
        this.running.delete(k);
        this.deps.log.error({ err, dir: spec.dir }, 'outbox could not start');
      }
    }
    return this.running.size;
  }

  async close(): Promise<void> {
    await Promise.all([...this.running.values()].map((b) => b.close()));
    this.running.clear();
  }
}

const key = (s: OutboxSpec) => JSON.stringify([s.dir, s.to, s.match ?? '', s.after, s.seal === true]);
