import { Command, Option } from 'commander';

const homeOpt = () => new Option('--home <dir>', 'agent folder (default: DROPWIRE_HOME or a per-user folder)');
const collect = (v: string, prev: string[] = []) => [...prev, v];

/** `dropwire rule …`, `printers`: declared here, features imported lazily. */
export function registerRuleCommands(program: Command): void {
  const rule = program.command('rule').description("the host's rules: which action a file gets (first match wins)");
  rule
    .command('add <glob> <action> [command...]')
    .description('add a rule; action is save | exec | print | open (exec: `-- COMMAND ARGS…`, placeholders {file} {name} {from} {id})')
    .addOption(homeOpt())
    .option('--from <glob>', 'only files from senders matching this glob')
    .option('--at <n>', 'insert at position n (1 = first); default: before a final catch-all rule, else last', (v) => parseInt(v, 10))
    .option('--parallel <n>', 'files this rule may handle at once (default 1: one at a time, in arrival order)', (v) => parseInt(v, 10))
    .option('--dir <dir>', 'save: target folder')
    .option('--if-exists <policy>', 'save: rename | replace | fail', 'rename')
    .option('--timeout <seconds>', 'exec: kill the command (and its children) after this long', (v) => Number(v))
    .option('--cwd <dir>', 'exec: working folder')
    .option('--printer <name>', 'print: printer (default: the system default)')
    .option('--copies <n>', 'print: copies', (v) => parseInt(v, 10))
    .option('-o, --option <k=v>', 'print: lp option, repeatable', collect)
    .action(async (glob: string, action: string, command: string[], o: Record<string, unknown>) => {
      const { addRule } = await import('./rules.js');
      console.log(await addRule(glob, action, command, o));
    });
  rule
    .command('list')
    .addOption(homeOpt())
    .option('--json', 'JSON output')
    .action(async (o: { home?: string; json?: boolean }) => {
      const { listRules } = await import('./rules.js');
      console.log(listRules(o));
    });
  rule
    .command('remove <n>')
    .description('remove rule n (as numbered by `rule list`)')
    .addOption(homeOpt())
    .action(async (n: string, o: { home?: string }) => {
      const { removeRule } = await import('./rules.js');
      console.log(await removeRule(Number(n), o));
    });
  rule
    .command('move <n> <m>')
    .description('move rule n to position m')
    .addOption(homeOpt())
    .action(async (n: string, m: string, o: { home?: string }) => {
      const { moveRule } = await import('./rules.js');
      console.log(await moveRule(Number(n), Number(m), o));
    });
  rule
    .command('test <filename>')
    .description('say which rule a file would hit and the exact command line; runs nothing')
    .addOption(homeOpt())
    .option('--from <sender>', 'the sender', 'web')
    .action(async (filename: string, o: { home?: string; from: string }) => {
      const { testRule } = await import('./rules.js');
      console.log(testRule(filename, o));
    });
  program
    .command('printers')
    .description('list the printers this host can print to')
    .addOption(homeOpt()) // accepted like every agent-side command; the printers are the host's, not the home's
    .option('--json', 'JSON output')
    .action(async (o: { json?: boolean }) => {
      const { printPrinters } = await import('./rules.js');
      console.log(await printPrinters(o.json === true));
    });
}
