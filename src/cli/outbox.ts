import path from 'node:path';
import { Command, Option } from 'commander';
import { DropwireError } from '../shared/errors.js';

const homeOpt = () => new Option('--home <dir>', 'agent folder (default: DROPWIRE_HOME or a per-user folder)');

/** `dropwire outbox add|list|remove`: folders whose files this host sends (config.json `outboxes`). */
export function registerOutboxCommands(program: Command): void {
  const outbox = program.command('outbox').description('folders whose files this host sends to a device or site, each exactly once');
  outbox
    .command('add <dir>')
    .description('send every file dropped into DIR to NAME; then move it to DIR/sent/ (or DIR/failed/) with NAME.result.json')
    .requiredOption('--to <name>', 'the device (or site) to send to')
    .option('--match <glob>', 'only files whose name matches')
    .addOption(new Option('--after <what>', 'once handled at the destination: keep it in sent/, or delete it').choices(['sent', 'delete']).default('sent'))
    .option('--seal', 'seal each file end to end to the recipient\'s key')
    .addOption(homeOpt())
    .action(async (dir: string, o: { to: string; match?: string; after: 'sent' | 'delete'; seal?: boolean; home?: string }) => {
      await change(o.home, (list) => {
        const abs = path.resolve(dir);
        if (list.some((x) => x.dir === abs)) throw new DropwireError('DW_OUTBOX_EXISTS', `${abs} is an outbox already; remove it first`);
        return [...list, { dir: abs, to: o.to, ...(o.match ? { match: o.match } : {}), after: o.after, ...(o.seal ? { seal: true } : {}) }];
      });
      console.log(`outbox ${path.resolve(dir)} -> ${o.to}`);
    });
  outbox
    .command('list')
    .addOption(homeOpt())
    .option('--json', 'JSON output')
    .action(async (o: { home?: string; json?: boolean }) => {
      const { loadOutboxes } = await import('../agent/outbox/config.js');
      const { resolveAgentHome } = await import('../service/locations.js');
      const list = loadOutboxes(resolveAgentHome(o.home));
      if (o.json) return console.log(JSON.stringify(list));
      if (list.length === 0) process.stderr.write('no outbox folders: add one with `dropwire outbox add DIR --to NAME`\n');
      for (const x of list) console.log(`${x.dir}\t-> ${x.to}${x.match ? `\tmatch ${x.match}` : ''}\tafter ${x.after}${x.seal ? '\tsealed' : ''}`);
    });
  outbox
    .command('remove <dir>')
    .description('stop watching DIR (its files stay where they are)')
    .addOption(homeOpt())
    .action(async (dir: string, o: { home?: string }) => {
      const abs = path.resolve(dir);
      await change(o.home, (list) => {
        if (!list.some((x) => x.dir === abs)) throw new DropwireError('DW_NO_OUTBOX', `${abs} is not an outbox`);
        return list.filter((x) => x.dir !== abs);
      });
      console.log(`outbox ${abs} removed`);
    });
}

/** Writes config.json's `outboxes` (checked first) and has a running agent apply it at once. */
async function change(home: string | undefined, edit: (list: import('../agent/outbox/config.js').OutboxSpec[]) => unknown[]): Promise<void> {
  const { resolveAgentHome } = await import('../service/locations.js');
  const { loadOutboxes, validateOutboxes } = await import('../agent/outbox/config.js');
  const { openConfigStore } = await import('../agent/config-store.js');
  const { askAgent, AgentNotRunning } = await import('../agent/control.js');
  const h = resolveAgentHome(home);
  const next = validateOutboxes(edit(loadOutboxes(h)));
  openConfigStore(h).set('outboxes', next as unknown as Record<string, unknown>[]);
  try {
    await askAgent(h, { op: 'reload' }, 10_000);
  } catch (err) {
    if (err instanceof AgentNotRunning) process.stderr.write(`no agent is running with the folder ${h}: the outbox is watched when it starts\n`);
    else throw err;
  }
}
